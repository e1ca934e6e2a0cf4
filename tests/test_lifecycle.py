"""Lifecycle: shadows are torn down on every path, an interrupted apply is rolled back, steps are journaled,
binaries are chosen by version."""

from __future__ import annotations

import glob
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from adapters.postgres.binaries import find_binaries
from adapters.postgres.cluster import TEMP_PREFIX, LocalCluster
from tests.conftest import BOTH_BACKENDS, ProdDb, gone_soon, start_cli, write_plan


def _shadow_dirs(run_id: str = "2") -> set[str]:
    """Shadow cluster dirs of one run (other runs on this machine — other tests, other sessions — are not ours)."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), TEMP_PREFIX + run_id + "*")))


def _run_id(tmp_path: Path) -> str:
    (run,) = [p.name for p in (tmp_path / "state" / "runs").iterdir()]
    return run


def _start(tmp_path: Path, db: ProdDb, *args: str, backend: str = "local") -> subprocess.Popen[str]:
    return start_cli(*args, state=tmp_path / "state", cwd=tmp_path, backend=backend, env={"APP_DATABASE_URL": db.dsn})


def _wait_for(path: Path, proc: subprocess.Popen[str], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"shadow exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the action to start")
        time.sleep(0.05)


SLEEPER = """
import os, pathlib, time
pathlib.Path(os.environ["MARKER"]).write_text(os.environ["PGPORT"])
time.sleep(47.25)
"""


def test_sigterm_during_rehearsal_removes_the_shadow_and_kills_the_action(prod_db, tmp_path):
    marker = tmp_path / "started"
    write_plan(tmp_path, f"""
targets: {{app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}}}
action:
  command: "{sys.executable} sleeper.py"
  env: {{MARKER: "{marker}"}}
""", {"sleeper.py": SLEEPER})
    proc = _start(tmp_path, prod_db, "plan")
    _wait_for(marker, proc)
    run_id = _run_id(tmp_path)
    assert _shadow_dirs(run_id), "the shadow cluster should exist while the action runs"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "interrupted" in err
    assert not _shadow_dirs(run_id), "the shadow cluster's directory must be removed"
    assert subprocess.run(["pgrep", "-f", "sleeper.py"], capture_output=True).returncode == 1
    journal = sqlite3.connect(tmp_path / "state" / "journal.sqlite")
    assert journal.execute("SELECT outcome FROM runs").fetchone()[0] == "interrupted"


WRITE_THEN_HANG_IN_PRODUCTION = """
import os, pathlib, time, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("INSERT INTO audit_log VALUES (now(), 'half done')")
    if os.environ["PGPORT"] == os.environ["PROD_PORT"]:
        pathlib.Path(os.environ["MARKER"]).write_text("production")
        time.sleep(47.5)
"""


def test_sigterm_during_production_apply_rolls_production_back(prod_db, tmp_path):
    marker = tmp_path / "in-production"
    write_plan(tmp_path, f"""
targets: {{app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}}}
action:
  command: "{sys.executable} job.py"
  env: {{MARKER: "{marker}", PROD_PORT: "{prod_db.server.port}"}}
expect:
  app: {{may: [insert rows public.audit_log]}}
""", {"job.py": WRITE_THEN_HANG_IN_PRODUCTION})
    before = prod_db.fingerprint()
    proc = _start(tmp_path, prod_db, "apply")
    _wait_for(marker, proc)
    assert prod_db.scalar("SELECT count(*) FROM audit_log") == 3  # the action did write to production
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert prod_db.fingerprint() == before
    journal = sqlite3.connect(tmp_path / "state" / "journal.sqlite")
    steps = journal.execute("SELECT step, state, undo FROM steps ORDER BY seq").fetchall()
    # Not in one transaction, but the apply kept an undo record before the action: its own change is undone.
    assert ("apply", "failed") == steps[0][:2] and "own change from the records kept before it" in steps[0][2]
    assert [s[:2] for s in steps[1:]] == [("undo", "done")]


def test_apply_journals_production_steps_with_their_undo(prod_db, shadow_cli, tmp_path):
    # (the command-action path journals "undo run …'s own change from the records kept before it": see the SIGTERM
    # test above)
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {may: [insert rows public.audit_log]}}
""", {"m.sql": "INSERT INTO audit_log VALUES (now(), 'x');"})
    r = shadow_cli("apply", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 0, r.text
    journal = sqlite3.connect(shadow_cli.state_dir / "journal.sqlite")
    rows = journal.execute("SELECT step, state, undo FROM steps").fetchall()
    assert rows == [("apply", "done", rows[0][2])] and "one transaction" in rows[0][2]


@pytest.mark.cold  # asserts that nothing outlives the run, or counts fault points of a cold run
@BOTH_BACKENDS
def test_shadow_is_removed_when_the_action_fails(prod_db, shadow_cli, tmp_path, backend):
    write_plan(tmp_path, "targets: {app: {kind: postgres, dsn: '${APP_DATABASE_URL}'}}\naction: {command: 'exit 3'}\n")
    r = shadow_cli("plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 1
    run_id = json.loads(r.out)["run_id"]
    assert not [d for d in _shadow_dirs() if run_id in d]
    if backend == "docker":
        import docker

        mine = {"label": f"shadow.run-id={run_id}"}
        assert gone_soon(lambda: docker.from_env().containers.list(all=True, filters=mine)) == []


@pytest.mark.skipif(len({b.major for b in find_binaries()}) < 2, reason="needs two PostgreSQL majors locally")
def test_client_binaries_older_than_production_are_refused_with_what_to_install(shadow_cli, tmp_path):
    newest, oldest = find_binaries()[0], find_binaries()[-1]
    with LocalCluster(label="test-newer-prod", binaries=newest) as prod:
        dsn = prod.create_database("app")
        write_plan(tmp_path, "targets: {app: {kind: postgres, dsn: '${APP_DATABASE_URL}'}}\naction: {sql: m.sql}\n",
                   {"m.sql": "SELECT 1;"})
        r = shadow_cli("plan", env={"APP_DATABASE_URL": dsn, "SHADOW_PG_BINDIR": str(oldest.bindir)})
    assert r.code == 3, r.text
    assert f"production runs PostgreSQL {newest.major}" in r.err
    assert f"install postgresql-client-{newest.major}" in r.err


@pytest.mark.skipif(len({b.major for b in find_binaries()}) < 2, reason="needs two PostgreSQL majors locally")
def test_shadow_on_newer_local_binaries_than_production_is_faithful(prod_db, shadow_cli, tmp_path):
    newest = find_binaries()[0]
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {must: [add column public.users.nickname]}}
""", {"m.sql": "ALTER TABLE users ADD COLUMN nickname text;"})
    r = shadow_cli("apply", env={"APP_DATABASE_URL": prod_db.dsn, "SHADOW_PG_BINDIR": str(newest.bindir)})
    assert r.code == 0, r.text
