"""What a killed run leaves in the temp dir — an action's HOME, a git shadow's clone, a restore's scripts, a server
started inside one of them — is labelled with its run, listed by `shadow gc --dry-run`, removed by `shadow gc` and
by `shadow recover` for the runs it settles; never while its run is alive."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.docker import LABEL_PID
from adapters.postgres.cluster import LocalCluster, read_labels, stop_leftover
from shadow.guard import Liveness
from tests.conftest import CliResult, ProdDb, run_cli, start_cli, write_plan
from tests.gitrepos import make_repo
from tests.test_alembic import project  # noqa: F401 - the example migration project, at revision 0002

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}

# Writes its process group (a SIGKILLed shadow cannot end it, so the test does) and its HOME, then waits.
SLEEPER = """
import os, pathlib, time
pathlib.Path(os.environ["MARKER"]).write_text(f"{os.getpgid(0)} {os.environ['HOME']}")
time.sleep(120)
"""

MIGRATE = """
import os, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("ALTER TABLE users ADD COLUMN nickname text")
"""

pytestmark = pytest.mark.usefixtures("own_tempdir")  # gc and recover here see only this test's temp dirs


def _env(state: Path, **extra: str) -> dict[str, str]:
    # The state dir by environment, as `shadow gc` and `recover` read it when they judge a run's leftovers.
    return {"SHADOW_STATE_DIR": str(state), **NO_DOCKER, **extra}


def _cli(state: Path, cwd: Path, *args: str, **extra: str) -> CliResult:
    return run_cli(*args, state=None, cwd=cwd, env=_env(state, **extra))


def _rows(result: CliResult) -> dict[str, dict[str, Any]]:
    assert result.code == 0, result.text
    return {row["id"]: row for row in json.loads(result.out)}


def _shadow_dirs() -> set[Path]:
    return {p for p in Path(tempfile.gettempdir()).glob("shadow-*") if p.is_dir()}


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"shadow exited {proc.returncode} first: {proc.communicate()}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _run_id(state: Path) -> str:
    (run,) = [p.name for p in (state / "runs").iterdir()]
    return run


@pytest.fixture
def leftovers() -> Iterator[set[Path]]:
    """The shadow temp dirs a test made or its killed run left (the test adds them; other tests' are not its to
    judge): removed, servers in them stopped, whatever happens."""
    made: set[Path] = set()
    yield made
    for path in made:
        for pidfile in path.glob("**/data/postmaster.pid"):
            stop_leftover(pidfile.parent.parent)
        shutil.rmtree(path, ignore_errors=True)


def _named(what: str, run_id: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"shadow-{what}-{run_id}-"))


def test_gc_removes_the_home_and_scratch_dirs_of_a_run_that_is_not_running_and_stops_a_server_inside(
        tmp_path: Path, leftovers: set[Path]) -> None:
    state = tmp_path / "state"
    dead, live, unknown = "20261202-055501-ab12cd", "20261202-055502-cd34ef", "20261202-055503-ef56ab"
    for run in (dead, live):
        (state / "runs" / run).mkdir(parents=True)
    holder = Liveness(state / "runs" / live)  # what a running shadow holds for its whole life
    home, scratch, live_home, unknown_home = (_named("home", dead), _named("scratch", dead), _named("home", live),
                                              _named("home", unknown))
    leftovers.update((home, scratch, live_home, unknown_home))
    # A server the killed run's action started in its HOME (an action may run anything).
    home.chmod(0o755)
    original_tempdir = tempfile.tempdir
    tempfile.tempdir = str(home)
    try:
        server = LocalCluster(label="x")  # short: the socket path must fit 107 bytes
        server.start()
    finally:
        tempfile.tempdir = original_tempdir
    try:
        assert server.root is not None and server.is_running()
        pidfile = server.datadir / "postmaster.pid"
        postmaster = int(pidfile.read_text().split("\n", 1)[0])

        dry = _rows(_cli(state, tmp_path, "gc", "--dry-run", "--json"))
        assert dry[str(home)] == {"kind": "tempdir", "id": str(home), "run_id": dead, "status": "would remove",
                                  "error": None, "detail": f"run {dead} is not running"}
        assert dry[str(scratch)]["status"] == "would remove" and dry[str(scratch)]["run_id"] == dead
        assert str(live_home) not in dry, "a running run's HOME is never touched"
        assert str(unknown_home) not in dry, "a run this state dir does not know: only by age"
        assert home.is_dir() and server.is_running()

        done = _cli(state, tmp_path, "gc")
        assert done.code == 0, done.text
        assert f"removed tempdir   {home}  run {dead}" in done.out
        assert f"postgres pid {postmaster} stopped" in done.out
        assert not home.exists() and not scratch.exists()
        assert not Path(f"/proc/{postmaster}").exists() or str(server.datadir) not in \
            Path(f"/proc/{postmaster}/cmdline").read_bytes().decode(errors="replace")
        assert live_home.is_dir() and unknown_home.is_dir()

        holder.release()
        after = _cli(state, tmp_path, "gc")
        assert f"removed tempdir   {live_home}  run {live}" in after.out, after.text
    finally:
        holder.release()
        server.stop()


def _git_plan_with_sleeper(tmp_path: Path) -> Path:
    repo = make_repo(tmp_path / "repo", {"config.yaml": "replicas: 1\n"})
    marker = tmp_path / "started"
    write_plan(tmp_path, f"""
targets: {{config: {{kind: git, path: "{repo.wc}"}}}}
action:
  command: "{sys.executable} {tmp_path / 'sleeper.py'}"
  env: {{MARKER: "{marker}"}}
""", {"sleeper.py": SLEEPER})
    return marker


def _end_sleeper(marker: Path) -> None:
    if marker.exists():
        pgid = int(marker.read_text().split(" ", 1)[0])
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("cleaner", ["gc", "recover"])
def test_a_killed_runs_git_shadow_and_action_home_are_found_and_removed(tmp_path: Path, leftovers: set[Path],
                                                                        cleaner: str) -> None:
    state = tmp_path / "state"
    marker = _git_plan_with_sleeper(tmp_path)
    before = _shadow_dirs()
    proc = start_cli("apply", state=None, cwd=tmp_path, env=_env(state))
    try:
        _wait_for(marker, proc)
        run_id = _run_id(state)
        home = Path(marker.read_text().split(" ", 1)[1])
        (clone,) = [p for p in _shadow_dirs() - before if p.name.startswith(f"shadow-git-{run_id}-")]
        leftovers.update((clone, home))
        assert (read_labels(clone) or {}).get(LABEL_PID) == str(proc.pid)
        proc.kill()  # while the action runs in the git shadow's clone
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        _end_sleeper(marker)
    assert clone.is_dir() and home.is_dir(), "SIGKILL leaves them behind: that is what gc and recover are for"

    dry = _rows(_cli(state, tmp_path, "gc", "--dry-run", "--json"))
    assert dry[str(clone)] == {"kind": "tempdir", "id": str(clone), "run_id": run_id, "status": "would remove",
                               "error": None, "detail": f"owner pid {proc.pid} gone"}
    assert dry[str(home)]["status"] == "would remove" and dry[str(home)]["run_id"] == run_id
    assert clone.is_dir() and home.is_dir()

    done = _cli(state, tmp_path, cleaner)
    assert done.code == 0, done.text
    if cleaner == "recover":
        assert f"run {run_id} (apply, killed while rehearsing): interrupted" in done.out
        assert "removed 2 leftover shadow(s) of the settled run(s)" in done.text
    else:
        assert f"removed tempdir   {clone}  run {run_id}" in done.out
    assert not clone.exists() and not home.exists()


def _waiting_on_lock(db: ProdDb) -> bool:
    with psycopg.connect(db.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND wait_event_type = 'Lock'").fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("cleaner", ["gc", "recover"])
def test_a_rollback_killed_during_its_restore_leaves_a_restore_dir_that_is_found_and_removed(
        prod_db: ProdDb, tmp_path: Path, leftovers: set[Path], cleaner: str) -> None:
    state = tmp_path / "state"
    write_plan(tmp_path, f"""
targets: {{app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}}}
action: {{command: "{sys.executable} migrate.py"}}
expect: {{app: {{must: ["add column public.users.nickname"]}}}}
""", {"migrate.py": MIGRATE})
    applied = _cli(state, tmp_path, "apply", "--json", APP_DATABASE_URL=prod_db.dsn)
    assert applied.code == 0, applied.text
    applied_run = json.loads(applied.out)["run_id"]

    before = _shadow_dirs()
    blocker = psycopg.connect(prod_db.dsn)
    try:
        # The restore's first DROP waits for this lock: the test kills shadow (and its psql) while it waits.
        blocker.execute("LOCK TABLE users IN ACCESS SHARE MODE")
        proc = start_cli("rollback", applied_run, state=None, cwd=tmp_path,
                         env=_env(state, APP_DATABASE_URL=prod_db.dsn), start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not _waiting_on_lock(prod_db):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the restore never reached production"
                time.sleep(0.1)
            restores = [p for p in _shadow_dirs() - before if p.name.startswith("shadow-restore-")
                        and (read_labels(p) or {}).get(LABEL_PID) == str(proc.pid)]
            leftovers.update(restores)
            os.killpg(proc.pid, signal.SIGKILL)  # shadow and the psql it runs, as a power cut would
            proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    finally:
        blocker.close()
    rollback_run = next(p.name for p in (state / "runs").iterdir() if p.name != applied_run)
    assert len(restores) == 1, "the restore's temp dir is labelled with the process that made it"
    (restore,) = restores
    assert restore.is_dir(), "SIGKILL leaves it behind"

    dry = _rows(_cli(state, tmp_path, "gc", "--dry-run", "--json"))
    assert dry[str(restore)] == {"kind": "tempdir", "id": str(restore), "run_id": rollback_run,
                                 "status": "would remove", "error": None, "detail": f"owner pid {proc.pid} gone"}

    done = _cli(state, tmp_path, cleaner, APP_DATABASE_URL=prod_db.dsn)
    assert done.code == 0, done.text
    if cleaner == "recover":
        assert f"run {rollback_run} (rollback, killed while restoring): restored" in done.out
        assert "removed 1 leftover shadow(s) of the settled run(s)" in done.text
        assert prod_db.scalar("SELECT count(*) FROM information_schema.columns "
                              "WHERE table_name = 'users' AND column_name = 'nickname'") == 0
    else:
        assert f"removed tempdir   {restore}  run {rollback_run}" in done.out
    assert not restore.exists()


@pytest.mark.parametrize("cleaner", ["gc", "recover"])
def test_a_killed_migration_rehearsal_leaves_its_dump_of_production_where_gc_and_recover_find_it(
        project: tuple[Path, ProdDb], tmp_path: Path, leftovers: set[Path], cleaner: str) -> None:
    folder, db = project
    state = tmp_path / "state"
    before = _shadow_dirs()
    proc = start_cli("alembic", "-c", str(folder / "alembic.ini"), state=None, cwd=tmp_path,
                     env=_env(state, DATABASE_URL=db.dsn))
    try:
        deadline = time.monotonic() + 120
        while not list(state.glob("runs/*/run.json")):  # production copied: the first revision's rehearsal began
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the first revision's rehearsal never started"
            time.sleep(0.1)
        made = _shadow_dirs() - before
        leftovers.update(made)
        dumps = [p for p in made if p.name.startswith("shadow-dump-")]
        proc.kill()  # the working copy's server and the revision's shadow keep running: gc stops them
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    run_id = _run_id(state)
    assert len(dumps) == 1, f"production's dump is in a temp dir named for gc: {sorted(p.name for p in made)}"
    (dump,) = dumps
    assert (dump / "production.dump").stat().st_size > 0, "SIGKILL leaves a copy of production's data behind"
    assert (read_labels(dump) or {}).get(LABEL_PID) == str(proc.pid)

    dry = _rows(_cli(state, tmp_path, "gc", "--dry-run", "--json"))
    assert dry[str(dump)] == {"kind": "tempdir", "id": str(dump), "run_id": run_id, "status": "would remove",
                              "error": None, "detail": f"owner pid {proc.pid} gone"}
    assert dump.is_dir()

    done = _cli(state, tmp_path, cleaner, DATABASE_URL=db.dsn)
    assert done.code == 0, done.text
    if cleaner == "gc":
        assert f"removed tempdir   {dump}  run {run_id}" in done.out
    assert not dump.exists()
    assert not [p for p in made if p.exists()], "the working copy's server and the shadow went with it"
