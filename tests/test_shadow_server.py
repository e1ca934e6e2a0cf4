"""A shadow's own server (adapters.postgres.server.SHADOW_SETTINGS): set up for one restore and one rehearsal
(autovacuum off, wal_level minimal), and saying so when that setup is why an action failed in the rehearsal.

Real CLI, real production database, a real shadow server on each backend.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapters.postgres.server import MINIMAL_WAL_MISSES
from tests.conftest import BOTH_BACKENDS, ROOT, ProdDb, write_plan

PLAN = """
version: 1
targets:
  app: {{kind: postgres, dsn: "{dsn}"}}
action:
  sql: migrate.sql
expect:
  app:
    may: ["* rows public.*"]
"""


@BOTH_BACKENDS
def test_an_action_that_needs_more_wal_than_the_shadow_writes_fails_there_and_says_why(
        empty_db: ProdDb, shadow_cli, tmp_path: Path):  # type: ignore[no-untyped-def]
    empty_db.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    # Production's server (wal_level replica, the default) can create this slot; the shadow's cannot.
    plan = write_plan(tmp_path, PLAN.format(dsn=empty_db.dsn), {
        "migrate.sql": "UPDATE t SET id = 2;\nSELECT pg_create_physical_replication_slot('shadow_test_slot');\n"})
    result = shadow_cli("plan", "-f", str(plan), "--json")
    assert result.code != 0, result.text
    assert MINIMAL_WAL_MISSES in result.text, result.text
    assert "migrate.sql:2" in result.text, result.text  # the statement's place, as for any rejected statement
    with empty_db.connect() as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
        assert conn.execute("SELECT id FROM t").fetchall() == [(1,)]


@BOTH_BACKENDS
def test_the_shadows_server_writes_minimal_wal_and_runs_no_autovacuum(
        empty_db: ProdDb, shadow_cli, tmp_path: Path):  # type: ignore[no-untyped-def]
    empty_db.execute("CREATE TABLE seen (name text PRIMARY KEY, value text)")
    # The action records the settings it ran under, in the shadow only (a rehearsal is never applied here).
    plan = write_plan(tmp_path, PLAN.format(dsn=empty_db.dsn), {
        "migrate.sql": "INSERT INTO seen SELECT name, setting FROM pg_settings "
                       "WHERE name IN ('wal_level', 'autovacuum', 'max_wal_senders', 'fsync');\n"})
    result = shadow_cli("plan", "-f", str(plan), "--json")
    assert result.code == 0, result.text
    report = json.loads(result.out)
    [target] = report["targets"]
    assert any(c.get("kind") == "rows" or "rows" in json.dumps(c) for c in target["changes"]), target["changes"]
    with empty_db.connect() as conn:  # production: its own settings, and nothing written
        assert conn.execute("SELECT count(*) FROM seen").fetchone() == (0,)
        assert conn.execute("SHOW wal_level").fetchone() == ("replica",)


@BOTH_BACKENDS
def test_a_server_started_during_a_checkpoint_that_fails_is_stopped_and_removed(
        empty_db: ProdDb, shadow_cli, tmp_path: Path, own_tempdir: Path, backend: str):  # type: ignore[no-untyped-def]
    """The shadow's server comes up while the checkpoint is taken (PostgresTarget.shadow_server_ahead); when the
    checkpoint fails, no shadow takes it, and it must not outlive the run."""
    role = f"reader_{empty_db.name}"
    empty_db.execute(f"CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE secret (id int);"
                     f"CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT SELECT ON t TO {role};")
    dsn = empty_db.dsn.replace("user=shadow", f"user={role}").split(" password=")[0] + " password=pw"
    plan = write_plan(tmp_path, PLAN.format(dsn=dsn), {"migrate.sql": "UPDATE t SET id = 2;\n"})
    result = shadow_cli("plan", "-f", str(plan), "--json")
    assert result.code != 0, result.text
    assert "permission denied" in result.text, result.text  # pg_dump cannot read `secret`
    assert not list(own_tempdir.glob("shadow-pg-*")), list(own_tempdir.iterdir())
    if backend == "docker":
        # This run's containers only: other tests (another xdist worker) start and remove their own meanwhile.
        [run_dir] = (shadow_cli.state_dir / "runs").iterdir()  # the run, as the journal named it
        assert _shadow_containers(run_dir.name) == set()


def _shadow_containers(run_id: str) -> set[str]:
    from adapters.docker import LABEL_ROLE, LABEL_RUN, client

    wanted = {"label": [f"{LABEL_ROLE}=postgres-shadow", f"{LABEL_RUN}={run_id}"]}
    return {c.id for c in client().containers.list(all=True, filters=wanted)}


@pytest.mark.parametrize("die_with_parent", [True, False])
def test_a_server_tool_run_in_a_thread_dies_with_the_killed_process_when_asked(die_with_parent: bool):
    """initdb of a server started while the checkpoint is taken runs in a thread; a SIGKILLed run must not leave it
    writing into the directory ``recover`` removes (the other case shows the test can see a survivor)."""
    seconds = f"3{secrets.randbelow(10**6):06d}"  # a command line no other process has
    script = (
        "import threading, time\n"
        "from adapters.postgres.cluster import LocalCluster\n"
        "cluster = LocalCluster(label='t')\n"
        f"threading.Thread(target=cluster._run, args=(['sleep', '{seconds}'],),\n"
        f"                 kwargs={{'die_with_parent': {die_with_parent}}}, daemon=True).start()\n"
        "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        assert _wait_for(lambda: _pids_of(f"sleep {seconds}"), 20), "the tool never started"
    finally:
        parent.kill()
        parent.wait()
    survivors = [] if _wait_for(lambda: not _pids_of(f"sleep {seconds}"), 5) else _pids_of(f"sleep {seconds}")
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert bool(survivors) is not die_with_parent, survivors


def _pids_of(command_line: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"^{command_line}$"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _wait_for(condition, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
