"""Nothing lost when shadow is killed: SIGKILL at every journal transition of apply and of rollback, then
`shadow recover`; production must end equal to the checkpoint or to the rehearsed outcome, never anything else.

Each kill point gets a production database recreated from one template under the same name, so fingerprints
(which include the database's name and owner) compare across points.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from adapters.docker import LABEL_RUN
from adapters.postgres.cluster import TEMP_PREFIX, read_labels
from tests.conftest import ProdDb, write_plan

# Autocommit writes in three steps: a kill between them leaves production half changed, so only a restore
# (not a transaction rollback) can put it back.
MIGRATE = """
import os, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("ALTER TABLE users ADD COLUMN nickname text")
    conn.execute("UPDATE users SET nickname = lower(full_name)")
    conn.execute("INSERT INTO audit_log (happened_at, message) VALUES ('2026-11-26 00:00:00+00', 'nicknames')")
"""

PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {command: "%s migrate.py"}
expect:
  app:
    must: ["add column public.users.nickname"]
    may: ["insert rows public.audit_log", "update rows public.users"]
""" % sys.executable


class Production:
    """One database name, recreated from a template before every kill point."""

    def __init__(self, db: ProdDb) -> None:
        self.server, self.template, self.name = db.server, db.name, db.name + "_k"
        self.dsn = db.server.dsn(self.name)
        self.db = ProdDb(db.server, self.name, self.dsn)

    def reset(self) -> None:
        with self.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{self.name}" TEMPLATE "{self.template}"')

    def fingerprint(self) -> str:
        return self.db.fingerprint()

    def drop(self) -> None:
        with self.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


@pytest.fixture
def production(prod_db: ProdDb) -> Iterator[Production]:
    prod = Production(prod_db)
    prod.reset()
    yield prod
    prod.drop()


def shadow(tmp_path: Path, prod: Production, *args: str, env: dict[str, str] | None = None,
           state: str = "state") -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    full.update(APP_DATABASE_URL=prod.dsn, SHADOW_BACKEND="local", **(env or {}))
    return subprocess.run([sys.executable, "-m", "shadow.cli", "--state-dir", str(tmp_path / state), *args],
                          cwd=tmp_path, env=full, capture_output=True, text=True, timeout=300)


def transitions(tmp_path: Path, prod: Production, *args: str) -> list[str]:
    trace = tmp_path / "trace.txt"
    trace.unlink(missing_ok=True)
    done = shadow(tmp_path, prod, *args, env={"SHADOW_FAULT_TRACE": str(trace)})
    assert done.returncode == 0, done.stdout + done.stderr
    return [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]


def killed_then_recovered(tmp_path: Path, prod: Production, point: int, *args: str) -> str:
    killed = shadow(tmp_path, prod, *args, env={"SHADOW_FAULT_KILL_AT": str(point)})
    assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr)
    recovered = shadow(tmp_path, prod, "recover")
    assert recovered.returncode == 0, (point, recovered.stdout + recovered.stderr)
    assert "Traceback" not in recovered.stderr
    return recovered.stdout


def clusters_of(state: Path) -> list[Path]:
    """Shadow clusters labelled with a run of this state dir, still in the temp dir."""
    runs = {p.name for p in (state / "runs").glob("*")}
    return [root for root in Path(tempfile.gettempdir()).glob(TEMP_PREFIX + "*")
            if (read_labels(root) or {}).get(LABEL_RUN) in runs]


def test_sigkill_at_every_transition_of_apply_then_recover(production: Production, tmp_path: Path) -> None:
    write_plan(tmp_path, PLAN, {"migrate.py": MIGRATE})
    checkpoint = production.fingerprint()
    points = transitions(tmp_path, production, "apply")
    rehearsed = production.fingerprint()
    assert rehearsed != checkpoint
    assert any(p.startswith("begin apply") for p in points) and "phase applied" in points

    outcomes, left_running = {}, 0
    for point in range(1, len(points) + 1):
        production.reset()
        state = f"state{point}"
        killed = shadow(tmp_path, production, "apply", env={"SHADOW_FAULT_KILL_AT": str(point)}, state=state)
        assert killed.returncode == -signal.SIGKILL, (points[point - 1], killed.stderr)
        if point == len(points) // 2:  # new work on the target waits for `shadow recover`
            refused = shadow(tmp_path, production, "plan", state=state)
            assert refused.returncode == 3 and "shadow recover" in refused.stderr, refused.stderr
        left_running += bool(clusters_of(tmp_path / state))
        recovered = shadow(tmp_path, production, "recover", state=state)
        assert recovered.returncode == 0 and "Traceback" not in recovered.stderr, recovered.stderr
        assert clusters_of(tmp_path / state) == [], "recover leaves no shadow of the run it settled"
        now = production.fingerprint()
        assert now in (checkpoint, rehearsed), f"killed at {points[point - 1]!r}: production is neither"
        outcomes[points[point - 1]] = "checkpoint" if now == checkpoint else "rehearsed"
        assert shadow(tmp_path, production, "recover", state=state).stdout.startswith("nothing to recover")
    print(f"\ncovered {len(points)} kill points of apply: " +
          ", ".join(f"{p} → {o}" for p, o in outcomes.items()))
    assert set(outcomes.values()) == {"checkpoint", "rehearsed"}
    assert left_running, "no kill point left a shadow running: the leftover check proves nothing"


def test_sigkill_at_every_transition_of_rollback_then_recover(production: Production, tmp_path: Path) -> None:
    write_plan(tmp_path, PLAN, {"migrate.py": MIGRATE})
    checkpoint = production.fingerprint()
    applied = shadow(tmp_path, production, "apply", "--json")
    assert applied.returncode == 0, applied.stderr
    import json

    run_id = json.loads(applied.stdout)["run_id"]
    rehearsed = production.fingerprint()
    points = transitions(tmp_path, production, "rollback", run_id)
    assert production.fingerprint() == checkpoint

    outcomes = {}
    for point in range(1, len(points) + 1):
        # Production as the apply left it, under the same name: dump-free, by re-running the migration.
        production.reset()
        with psycopg.connect(production.dsn, autocommit=True) as conn:
            conn.execute("ALTER TABLE users ADD COLUMN nickname text")
            conn.execute("UPDATE users SET nickname = lower(full_name)")
        assert production.fingerprint() != checkpoint
        killed = shadow(tmp_path, production, "rollback", run_id, "--force",
                        env={"SHADOW_FAULT_KILL_AT": str(point)})
        assert killed.returncode == -signal.SIGKILL, (points[point - 1], killed.stderr)
        recovered = shadow(tmp_path, production, "recover")
        assert recovered.returncode == 0 and "Traceback" not in recovered.stderr, recovered.stderr
        now = production.fingerprint()
        changed = now != checkpoint
        if changed:  # killed before the restore began: production is as the apply left it, untouched by us
            with psycopg.connect(production.dsn) as conn:
                assert conn.execute("SELECT count(*) FROM users WHERE nickname IS NOT NULL").fetchone()[0] > 0
        outcomes[points[point - 1]] = "applied state" if changed else "checkpoint"
    print(f"\ncovered {len(points)} kill points of rollback: " +
          ", ".join(f"{p} → {o}" for p, o in outcomes.items()))
    assert "checkpoint" in outcomes.values()
    assert rehearsed != checkpoint


def test_unrecovered_run_blocks_new_work_until_recover(production: Production, tmp_path: Path) -> None:
    write_plan(tmp_path, PLAN, {"migrate.py": MIGRATE})
    checkpoint = production.fingerprint()
    points = transitions(tmp_path, production, "apply")
    production.reset()
    mid_apply = next(i for i, p in enumerate(points, 1) if p.startswith("begin apply")) + 1
    killed = shadow(tmp_path, production, "apply", env={"SHADOW_FAULT_KILL_AT": str(mid_apply)})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr

    for verb in (("plan",), ("apply",)):
        refused = shadow(tmp_path, production, *verb)
        assert refused.returncode == 3, refused.stderr
        assert "was killed while applying" in refused.stderr and "shadow recover" in refused.stderr

    recovered = shadow(tmp_path, production, "recover", "--json")
    import json

    rows = json.loads(recovered.stdout)
    assert [r["outcome"] for r in rows] == ["rolled_back"] and rows[0]["was"] == "applying"
    assert production.fingerprint() == checkpoint
    runs = json.loads(shadow(tmp_path, production, "runs", "--json").stdout)
    assert {r["outcome"] for r in runs} >= {"rolled_back", "recovered"}
    assert shadow(tmp_path, production, "plan").returncode == 0



ONE_TRANSACTION = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: migrate.sql}
expect: {app: {must: ["add column public.users.nickname"], may: ["update rows public.users"]}}
"""
MIGRATE_SQL = """SET lock_timeout = '5s';
SET statement_timeout = '60s';
ALTER TABLE users ADD COLUMN nickname text;
UPDATE users SET nickname = lower(full_name) WHERE id > 0;
"""


def test_recover_asks_the_server_whether_a_one_transaction_apply_committed(production: Production,
                                                                           tmp_path: Path) -> None:
    write_plan(tmp_path, ONE_TRANSACTION, {"migrate.sql": MIGRATE_SQL})
    points = transitions(tmp_path, production, "apply")
    began = [i for i, p in enumerate(points, 1) if p == "phase applying"]
    assert len(began) == 2, points  # the phase, then the transaction's id once it began
    ended = points.index("end apply app") + 1

    production.reset()
    killed = shadow(tmp_path, production, "apply", env={"SHADOW_FAULT_KILL_AT": str(began[1])}, state="open")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    with psycopg.connect(production.dsn, autocommit=True) as conn:  # the application keeps writing
        conn.execute("INSERT INTO audit_log VALUES ('2031-05-05', 'written after the kill')")
    recovered = shadow(tmp_path, production, "recover", "--json", state="open")
    assert recovered.returncode == 0, recovered.stderr
    import json

    (row,) = json.loads(recovered.stdout)
    assert row["outcome"] == "rolled_back" and "nothing was restored" in row["summary"], row
    with psycopg.connect(production.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE message = 'written after the kill'").fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM information_schema.columns "
                            "WHERE column_name = 'nickname'").fetchone()[0] == 0

    production.reset()
    killed = shadow(tmp_path, production, "apply", env={"SHADOW_FAULT_KILL_AT": str(ended)}, state="committed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    recovered = shadow(tmp_path, production, "recover", "--json", state="committed")
    (row,) = json.loads(recovered.stdout)
    assert row["outcome"] == "applied" and "committed" in row["summary"], row
    with psycopg.connect(production.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE nickname IS NOT NULL").fetchone()[0] > 0
