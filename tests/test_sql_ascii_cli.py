"""A legacy SQL_ASCII production through the real CLI: plan, apply (one transaction), rollback, and recover of a
killed one-transaction apply (the server's answer to txid_status arrives as bytes there)."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.postgres.cluster import LocalCluster
from tests.conftest import CliResult, ProdDb, run_cli, write_plan

SETUP = r"""
CREATE TABLE towns (name text PRIMARY KEY, people int);
INSERT INTO towns VALUES (E'K\xf8ge', 37000), (E'\xc5rhus', 285000), ('Oslo', 700000);
"""
PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: grow.sql}
expect: {app: {may: ["update rows public.towns"], rows: {public.towns: {updated: 2}}}}
"""
GROW = r"""SET lock_timeout = '5s';
SET statement_timeout = '60s';
UPDATE towns SET people = people + 1 WHERE name <> 'Oslo';
"""


@pytest.fixture
def ascii_db(pg_server: LocalCluster) -> Iterator[ProdDb]:
    name = "prod_ascii_cli_" + uuid.uuid4().hex[:8]
    with pg_server.connect() as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'")
    db = ProdDb(pg_server, name, pg_server.dsn(name))
    db.execute(SETUP)
    yield db
    with pg_server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def shadow(tmp_path: Path, db: ProdDb, *args: str, **extra: str) -> CliResult:
    return run_cli(*args, state=tmp_path / "state", cwd=tmp_path, env={"APP_DATABASE_URL": db.dsn, **extra})


def people(db: ProdDb) -> list[tuple[str, int]]:
    with db.connect() as conn:
        rows = conn.execute("SELECT encode(convert_to(name, 'SQL_ASCII'), 'hex'), people FROM towns ORDER BY 1")
        return [(str(r[0].decode() if isinstance(r[0], bytes) else r[0]), int(r[1])) for r in rows]


def test_plan_apply_and_rollback_on_a_sql_ascii_production(ascii_db: ProdDb, tmp_path: Path) -> None:
    write_plan(tmp_path, PLAN, {"grow.sql": GROW})
    before = people(ascii_db)
    planned = shadow(tmp_path, ascii_db, "plan")
    assert planned.code == 0, planned.out + planned.err
    applied = shadow(tmp_path, ascii_db, "apply", "--json")
    assert applied.code == 0, applied.out + applied.err
    assert people(ascii_db) == [("4bf86765", 37001), ("4f736c6f", 700000), ("c572687573", 285001)]
    rolled = shadow(tmp_path, ascii_db, "rollback", json.loads(applied.out)["run_id"])
    assert rolled.code == 0, rolled.out + rolled.err
    assert people(ascii_db) == before


def test_recover_settles_a_killed_one_transaction_apply_on_sql_ascii(ascii_db: ProdDb, tmp_path: Path) -> None:
    write_plan(tmp_path, PLAN, {"grow.sql": GROW})
    trace = tmp_path / "trace.txt"
    assert shadow(tmp_path, ascii_db, "plan", SHADOW_FAULT_TRACE=str(trace)).code == 0
    trace.unlink()
    done = shadow(tmp_path, ascii_db, "apply", SHADOW_FAULT_TRACE=str(trace))
    assert done.code == 0, done.err
    points = [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]
    ended = points.index("end apply app") + 1
    rolled = shadow(tmp_path, ascii_db, "rollback", json.loads(shadow(tmp_path, ascii_db, "runs", "--json").out)
                    [0]["id"])
    assert rolled.code == 0, rolled.err
    killed = shadow(tmp_path, ascii_db, "apply", SHADOW_FAULT_KILL_AT=str(ended))
    assert killed.code == -signal.SIGKILL, killed.err
    recovered = shadow(tmp_path, ascii_db, "recover", "--json")
    assert recovered.code == 0, recovered.err
    (row,) = json.loads(recovered.out)
    assert row["outcome"] == "applied" and "committed" in row["summary"], row
