"""``shadow gc``: what a killed run leaves behind is removed; what a live run uses is never touched."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.errors import NotFound

from adapters import tempdirs
from adapters.docker import LABEL_PID, LABEL_RUN, client, labels
from adapters.postgres.cluster import LABELS_FILE, LocalCluster, read_labels, stop_leftover
from shadow import gc
from shadow.settings import Settings
from snapshots import Store
from tests.conftest import CliResult, ProdDb, TEST_IMAGES, docker_or_skip, run_cli, start_cli, write_plan
from tests.gitrepos import git, make_repo
from tests.test_lifecycle import _shadow_dirs, _wait_for

NO_DOCKER = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


pytestmark = pytest.mark.usefixtures("own_tempdir")  # gc here sees only this test's temp dirs

# Writes its process group (so the test can end it: a SIGKILLed shadow cannot) and its HOME (a temp dir the
# killed run leaves behind, younger than gc's hour), then waits to be killed.
SLEEPER = """
import os, pathlib, time
pathlib.Path(os.environ["MARKER"]).write_text(f"{os.getpgid(0)} {os.environ['HOME']}")
time.sleep(120)
"""


def _gc(*args: str, env: dict[str, str] | None = None) -> CliResult:
    return run_cli("gc", *args, state=None, cwd=Path.cwd(), backend=None, env=env)


def _plan_with_sleeper(tmp_path: Path) -> Path:
    marker = tmp_path / "started"
    write_plan(tmp_path, f"""
targets: {{app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}}}
action:
  command: "{sys.executable} sleeper.py"
  env: {{MARKER: "{marker}"}}
""", {"sleeper.py": SLEEPER})
    return marker


def _start_plan(tmp_path: Path, db: ProdDb, backend: str) -> subprocess.Popen[str]:
    return start_cli("plan", state=tmp_path / "state", cwd=tmp_path, backend=backend,
                     env={"APP_DATABASE_URL": db.dsn})


@pytest.fixture
def running_plan(prod_db: ProdDb, tmp_path: Path) -> Iterator[Any]:
    """Start `shadow plan` on a backend and wait until its action runs; end the action (and the plan) after."""
    started: list[tuple[subprocess.Popen[str], Path]] = []

    def start(backend: str) -> subprocess.Popen[str]:
        marker = _plan_with_sleeper(tmp_path)
        proc = _start_plan(tmp_path, prod_db, backend)
        started.append((proc, marker))
        _wait_for(marker, proc)
        return proc

    yield start
    for proc, marker in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        if marker.exists():
            pgid, home = marker.read_text().split(" ", 1)
            try:
                os.killpg(int(pgid), signal.SIGKILL)
            except ProcessLookupError:
                pass
            shutil.rmtree(home, ignore_errors=True)


def _postmaster_pid(root: Path) -> int:
    return int((root / "data" / "postmaster.pid").read_text().split("\n", 1)[0])


def _is_postmaster_of(pid: int, root: Path) -> bool:
    try:
        return str(root / "data") in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _containers(run_id: str) -> list[Any]:
    c = client()
    try:
        return list(c.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}))
    finally:
        c.close()


def _container_of(proc: subprocess.Popen[str]) -> Any:
    c = client()
    try:
        found = c.containers.list(all=True, filters={"label": f"{LABEL_PID}={proc.pid}"})
    finally:
        c.close()
    assert len(found) == 1, f"expected the run's one shadow container, found {found}"
    return found[0]


def test_gc_stops_and_removes_the_local_cluster_of_a_killed_run(running_plan):
    before = _shadow_dirs()
    proc = running_plan("local")
    new_dirs = {Path(d): read_labels(Path(d)) or {} for d in _shadow_dirs() - before}
    (root,) = [d for d, found in new_dirs.items() if found.get(LABEL_PID) == str(proc.pid)]
    run_id = new_dirs[root][LABEL_RUN]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        postmaster = _postmaster_pid(root)
        assert _is_postmaster_of(postmaster, root), "SIGKILL leaves the cluster behind: that is what gc is for"

        r = _gc(env=NO_DOCKER)
        assert r.code == 0, r.text
        assert f"removed cluster   {root}  run {run_id}" in r.out
        assert f"postgres pid {postmaster} stopped" in r.out
        assert "docker: skipped (no Docker engine answers" in r.out
        assert not root.exists()
        assert not _is_postmaster_of(postmaster, root)

        # Nothing of this run is left (gc sees the whole machine: another test's killed run may be reaped here).
        again = _gc(env=NO_DOCKER)
        assert again.code == 0 and run_id not in again.out and str(root) not in again.out, again.text
    finally:
        if root.exists():
            stop_leftover(root)
            shutil.rmtree(root, ignore_errors=True)


def test_gc_removes_the_container_of_a_killed_docker_run(running_plan):
    docker_or_skip()
    proc = running_plan("docker")
    container = _container_of(proc)
    run_id = container.labels[LABEL_RUN]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    try:
        assert _containers(run_id), "SIGKILL leaves the container behind: that is what gc is for"

        r = _gc("--json")
        assert r.code == 0, r.text
        rows = [row for row in json.loads(r.out) if row["run_id"] == run_id]
        assert rows == [{"kind": "container", "id": container.short_id, "run_id": run_id, "status": "removed",
                         "error": None, "detail": f"owner pid {proc.pid} gone"}]
        assert _containers(run_id) == []

        again = _gc()  # nothing of this run is left (another test's killed run may be reaped here)
        assert again.code == 0 and run_id not in again.out, again.text
    finally:
        for leftover in _containers(run_id):
            leftover.remove(force=True, v=True)


def test_sigterm_removes_the_docker_shadow_without_gc(running_plan):
    docker_or_skip()
    proc = running_plan("docker")
    run_id = _container_of(proc).labels[LABEL_RUN]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    try:
        assert proc.returncode == 130, out + err
        assert "interrupted" in err
        assert _containers(run_id) == []
    finally:
        for leftover in _containers(run_id):
            leftover.remove(force=True, v=True)


def _fake_cluster_dir(owner_pid: int) -> Path:
    """A cluster temp dir as a killed run leaves it once its server is gone: labels, no postgres running."""
    root = Path(tempfile.mkdtemp(prefix=f"shadow-pg-gctest-{uuid.uuid4().hex[:6]}-"))
    (root / "data").mkdir()
    (root / LABELS_FILE).write_text(json.dumps({**labels(root.name, "local-cluster"), LABEL_PID: str(owner_pid)}))
    return root


def test_gc_leaves_a_live_runs_cluster_alone_and_removes_a_dead_ones():
    dead = _fake_cluster_dir(_dead_pid())
    unlabelled = Path(tempfile.mkdtemp(prefix="shadow-pg-gctest-nolabels-"))
    try:
        with LocalCluster(label=f"gctest-live-{uuid.uuid4().hex[:6]}") as live:
            assert live.root is not None
            r = _gc(env=NO_DOCKER)
            assert r.code == 0, r.text
            assert f"removed cluster   {dead}  run {dead.name}" in r.out
            assert str(live.root) not in r.out and live.root.is_dir() and live.is_running()
            with live.connect() as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        assert not dead.exists()
        assert unlabelled.is_dir(), "a dir without labels may be a run starting up: never removed"
    finally:
        shutil.rmtree(dead, ignore_errors=True)
        shutil.rmtree(unlabelled, ignore_errors=True)


def test_gc_leaves_a_live_runs_container_and_network_alone_and_removes_a_dead_ones():
    docker_or_skip()
    c = client()
    live = labels(f"gctest-live-{uuid.uuid4().hex[:6]}", "test")
    dead = {**labels(f"gctest-dead-{uuid.uuid4().hex[:6]}", "test"), LABEL_PID: str(_dead_pid())}
    containers = [c.containers.run(TEST_IMAGES[17], ["sleep", "300"], labels=found, detach=True)
                  for found in (live, dead)]
    networks = [c.networks.create(found[LABEL_RUN], labels=found) for found in (live, dead)]
    try:
        r = _gc()
        assert r.code == 0, r.text
        assert f"removed container {containers[1].short_id}  run {dead[LABEL_RUN]}" in r.out
        assert f"removed network   {dead[LABEL_RUN]}  run {dead[LABEL_RUN]}" in r.out
        assert live[LABEL_RUN] not in r.text
        assert [k.id for k in _containers(live[LABEL_RUN])] == [containers[0].id]
        assert _containers(dead[LABEL_RUN]) == []
        for found, expected in ((live, [live[LABEL_RUN]]), (dead, [])):
            assert [n.name for n in c.networks.list(filters={"label": f"{LABEL_RUN}={found[LABEL_RUN]}"})] == expected
    finally:
        for container in containers:
            with contextlib.suppress(NotFound):  # gc removed it
                container.remove(force=True)
        for network in networks:
            with contextlib.suppress(NotFound):
                network.remove()
        c.close()


def test_gc_dry_run_lists_stale_temp_dirs_and_gc_removes_only_those_idle_for_an_hour():
    two_hours_ago = time.time() - 7200
    stale = Path(tempfile.mkdtemp(prefix="shadow-restore-gctest-"))
    (stale / "dump").write_text("x")
    stale_clone = Path(tempfile.mkdtemp(prefix="shadow-git-gctest-"))
    busy = Path(tempfile.mkdtemp(prefix="shadow-home-gctest-"))
    (busy / "recent").write_text("written just now")
    for path in (stale / "dump", stale, stale_clone, busy):
        os.utime(path, (two_hours_ago, two_hours_ago))
    fresh = Path(tempfile.mkdtemp(prefix="shadow-home-gctest-"))
    try:
        dry = _gc("--dry-run", "--json", env=NO_DOCKER)
        assert dry.code == 0, dry.text
        rows = {row["id"]: row for row in json.loads(dry.out)}
        assert rows[str(stale)]["status"] == "would remove" and rows[str(stale)]["kind"] == "tempdir"
        assert rows[str(stale_clone)]["status"] == "would remove"
        assert str(busy) not in rows and str(fresh) not in rows
        assert "docker: skipped (no Docker engine answers" in dry.err
        assert stale.is_dir()

        r = _gc(env=NO_DOCKER)
        assert r.code == 0, r.text
        assert f"removed tempdir   {stale}  run -" in r.out
        assert not stale.exists() and not stale_clone.exists() and busy.is_dir() and fresh.is_dir()
    finally:
        for path in (stale, stale_clone, busy, fresh):
            shutil.rmtree(path, ignore_errors=True)


def test_gc_has_every_kind_clear_a_dead_runs_git_clone_so_a_server_started_in_it_is_stopped_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", NO_DOCKER["DOCKER_HOST"])
    repo = make_repo(tmp_path / "repo", {"README.md": "# infra\n"})
    run_id = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
    root = Path(tempfile.mkdtemp(prefix=tempdirs.prefix("git", run_id)))
    root.chmod(0o755)  # the server runs as its data dir's owner, not necessarily as us
    (root / LABELS_FILE).write_text(json.dumps({**labels(run_id, "git-shadow"), LABEL_PID: str(_dead_pid())}))
    git(root, "clone", "-q", str(repo.wc), str(root / "clone"))
    original_tempdir, tempfile.tempdir = tempfile.tempdir, str(root / "clone")
    try:
        server = LocalCluster(label="x")  # what the killed run's action started in the clone
        server.start()
    finally:
        tempfile.tempdir = original_tempdir
    try:
        assert server.root is not None and server.is_running()
        postmaster = int((server.datadir / "postmaster.pid").read_text().split("\n", 1)[0])

        result = gc.gc(runs={run_id}, settings=Settings.from_env(state_dir=tmp_path / "state"))

        (removed,) = result.removed
        assert (removed.kind, removed.id, removed.run_id) == ("tempdir", str(root), run_id)
        assert f"postgres pid {postmaster} stopped" in removed.detail
        assert result.failed == []
        assert not root.exists() and not _is_postmaster_of(postmaster, server.root)
    finally:
        if root.exists():
            server.stop()
            shutil.rmtree(root, ignore_errors=True)


# Stores an artifact the way a checkpoint does, prints where its partial file is, and is killed half way.
HALF_WRITER = """
import sys, time
from pathlib import Path
from snapshots import Store
with Store(Path(sys.argv[1])).new_artifact() as slot:
    slot.path.write_bytes(b"half of production's rows")
    print(slot.path, flush=True)
    time.sleep(120)
"""


def test_gc_removes_the_partial_artifact_of_a_killed_writer_and_keeps_a_live_ones(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = Settings.from_env(state_dir=state).store_dir
    writer = subprocess.Popen([sys.executable, "-c", HALF_WRITER, str(store)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None
        dead = Path(writer.stdout.readline().strip())
        writer.kill()  # mid-write: its `finally` never runs
        writer.communicate(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.communicate()
    older = store / "tmp" / "artifact-older1x"  # an older shadow's name, which does not say whose it is
    older.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(older, (two_hours_ago, two_hours_ago))
    env = {**NO_DOCKER, "SHADOW_STATE_DIR": str(state)}
    with Store(store).new_artifact() as live:
        live.path.write_bytes(b"being written")
        assert dead.is_file() and dead.parent == live.path.parent

        dry = _gc("--dry-run", "--json", env=env)
        assert dry.code == 0, dry.text
        rows = {row["id"]: row for row in json.loads(dry.out)}
        assert rows[str(dead)] == {"kind": "partial", "id": str(dead), "run_id": None, "status": "would remove",
                                   "error": None, "detail": f"owner pid {writer.pid} gone"}
        assert rows[str(older)]["status"] == "would remove"
        assert str(live.path) not in rows and dead.is_file()

        r = _gc(env=env)
        assert r.code == 0, r.text
        assert f"removed partial   {dead}  run -" in r.out
        assert not dead.exists() and not older.exists()
        assert live.path.read_bytes() == b"being written", "a live process's write is never touched"
    assert live.artifact is not None and Store(store).object_path(live.artifact.sha256).is_file()
