"""Production never stands still (issue 15): plan and apply while an application keeps writing.

Every test here runs a real writer process (:mod:`tests.writer`) that commits inserts, updates and deletes —
consuming a sequence — while shadow works, and checks afterwards that every write it committed is still there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ProdDb, write_plan
from tests.writer import Writer

EVENTS = "CREATE TABLE events (id bigserial PRIMARY KEY, note text NOT NULL);"

PLAN = """
version: 1
targets:
  app: {{kind: postgres, dsn: "{dsn}"}}
action:
  sql: migrate.sql
expect:
  app:
    may: [{may}]
policy:
  rehearse_rollback: {undo}
"""


@pytest.fixture
def live_db(prod_db: ProdDb) -> ProdDb:
    prod_db.execute(EVENTS)
    prod_db.execute("INSERT INTO events (note) SELECT 'seed ' || g FROM generate_series(1, 50) g")
    return prod_db


def _plan(tmp_path: Path, db: ProdDb, sql: str, may: str, undo: bool = False) -> Path:
    return write_plan(tmp_path, PLAN.format(dsn=db.dsn, may=may, undo=str(undo).lower()), {"migrate.sql": sql})


def test_a_checkpoint_taken_while_the_application_writes_restores_to_a_faithful_shadow(live_db: ProdDb, shadow_cli,
                                                                                        tmp_path: Path):
    """Sequences are not transactional: what pg_dump recorded for one is what the checkpoint says (item 1)."""
    plan = _plan(tmp_path, live_db, "ALTER TABLE users ADD COLUMN nickname text;\n",
                 "add column public.users.nickname", undo=True)
    with Writer(live_db.dsn, "events", tmp_path / "writes.jsonl", every=0.005) as writer:
        results = [shadow_cli("plan", "-f", str(plan), "--json") for _ in range(3)]
        writer.stop()
    for result in results:
        assert result.code == 0, result.text
        verdicts = {v["rule"]: v for v in json.loads(result.out)["expectations"]}
        assert verdicts["fidelity"]["ok"], verdicts["fidelity"]
    assert writer.assert_kept(live_db.dsn) > 20
