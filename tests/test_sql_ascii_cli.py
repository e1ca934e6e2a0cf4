"""A legacy SQL_ASCII production through the real CLI: plan, apply (one transaction), rollback, and recover of a
killed one-transaction apply (the server's answer to txid_status arrives as bytes there)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.postgres.cluster import LocalCluster
from tests.conftest import ProdDb, write_plan

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


def shadow(tmp_path: Path, db: ProdDb, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env.update({"APP_DATABASE_URL": db.dsn, "SHADOW_BACKEND": "local", **extra})
    return subprocess.run([sys.executable, "-m", "shadow.cli", "--state-dir", str(tmp_path / "state"), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def people(db: ProdDb) -> list[tuple[str, int]]:
    with db.connect() as conn:
        rows = conn.execute("SELECT encode(convert_to(name, 'SQL_ASCII'), 'hex'), people FROM towns ORDER BY 1")
        return [(str(r[0].decode() if isinstance(r[0], bytes) else r[0]), int(r[1])) for r in rows]


def test_plan_apply_and_rollback_on_a_sql_ascii_production(ascii_db: ProdDb, tmp_path: Path) -> None:
    write_plan(tmp_path, PLAN, {"grow.sql": GROW})
    before = people(ascii_db)
    planned = shadow(tmp_path, ascii_db, "plan")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    applied = shadow(tmp_path, ascii_db, "apply", "--json")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert people(ascii_db) == [("4bf86765", 37001), ("4f736c6f", 700000), ("c572687573", 285001)]
    rolled = shadow(tmp_path, ascii_db, "rollback", json.loads(applied.stdout)["run_id"])
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    assert people(ascii_db) == before


def test_recover_settles_a_killed_one_transaction_apply_on_sql_ascii(ascii_db: ProdDb, tmp_path: Path) -> None:
    write_plan(tmp_path, PLAN, {"grow.sql": GROW})
    trace = tmp_path / "trace.txt"
    assert shadow(tmp_path, ascii_db, "plan", SHADOW_FAULT_TRACE=str(trace)).returncode == 0
    trace.unlink()
    done = shadow(tmp_path, ascii_db, "apply", SHADOW_FAULT_TRACE=str(trace))
    assert done.returncode == 0, done.stderr
    points = [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]
    ended = points.index("end apply app") + 1
    rolled = shadow(tmp_path, ascii_db, "rollback", json.loads(shadow(tmp_path, ascii_db, "runs", "--json").stdout)
                    [0]["id"])
    assert rolled.returncode == 0, rolled.stderr
    killed = shadow(tmp_path, ascii_db, "apply", SHADOW_FAULT_KILL_AT=str(ended))
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    recovered = shadow(tmp_path, ascii_db, "recover", "--json")
    assert recovered.returncode == 0, recovered.stderr
    (row,) = json.loads(recovered.stdout)
    assert row["outcome"] == "applied" and "committed" in row["summary"], row
