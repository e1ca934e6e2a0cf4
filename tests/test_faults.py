"""Nothing lost, ever: faults in the middle of a run end with production changed as rehearsed or equal to the
checkpoint (compared by fingerprint), one clear line, no traceback and a documented exit code.

- production's connection dropped mid-apply (``pg_terminate_backend`` from another session), on the
  single-transaction path and on the statement-by-statement path;
- the shadow's PostgreSQL (local cluster or container) killed mid-rehearsal;
- the snapshot store's disk filling during the checkpoint (the state dir on a 2 MB tmpfs);
- a checkpoint artifact corrupted before ``shadow rollback`` and before ``shadow recover``.

Every run gets its own ``TMPDIR`` (traversable by the unprivileged user a local cluster runs as), so "nothing
left behind" is checked exactly, whatever else runs on the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters.docker import LABEL_PID, LABEL_ROLE
from adapters.postgres.cluster import LABELS_FILE, TEMP_PREFIX
from tests.conftest import BOTH_BACKENDS, CliResult, ProdDb, start_cli, write_plan
from tests.test_lifecycle import _wait_for

ONLY_IN_PRODUCTION = "SELECT pg_sleep(CASE WHEN current_setting('port') = '{port}' THEN 120 ELSE 0 END);"


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A TMPDIR for one shadow process, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="shadow-faults-"))
    os.chmod(folder, 0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _start(tmp_path: Path, db: ProdDb, scratch: Path, *args: str, backend: str = "local", state: Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return start_cli(*args, state=state or tmp_path / "state", cwd=tmp_path, backend=backend,
                     env={"APP_DATABASE_URL": db.dsn, "TMPDIR": str(scratch), **(env or {})})


def _finish(proc: subprocess.Popen[str], timeout: float = 180) -> CliResult:
    out, err = proc.communicate(timeout=timeout)
    return CliResult(proc.returncode, out, err)


def _shadow(tmp_path: Path, db: ProdDb, scratch: Path, *args: str, state: Path | None = None,
            env: dict[str, str] | None = None) -> CliResult:
    return _finish(_start(tmp_path, db, scratch, *args, state=state, env=env))


def _one_clear_line(r: CliResult) -> str:
    """The error line of a failed command: exactly one, and no traceback anywhere."""
    assert "Traceback" not in r.text, r.text
    errors = [line for line in r.err.splitlines() if line.startswith("shadow: ")]
    assert len(errors) == 1, r.err
    return errors[0]


def _terminate_in_production(db: ProdDb, proc: subprocess.Popen[str], like: str, seconds: float = 90) -> None:
    """Wait for a backend of production's database running a query ``like`` this, and terminate it."""
    deadline = time.monotonic() + seconds
    with db.server.connect() as conn:
        while time.monotonic() < deadline:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s AND query LIKE %s "
                "AND state = 'active' AND pid <> pg_backend_pid()", [db.name, like]).fetchone()
            if killed and killed[0]:
                return
            if proc.poll() is not None:
                raise AssertionError(f"shadow exited before the fault: {proc.communicate()}")
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no production backend ran {like!r} within {seconds:g} s")


# -- 1. production's connection dropped mid-apply ------------------------------------------------------------
def _apply_losing_production(db: ProdDb, tmp_path: Path, scratch: Path, like: str) -> dict[str, Any]:
    """Apply, terminate the production backend running a query ``like`` this, and check the run ended rolled back
    with production at the checkpoint; return the run's model."""
    checkpoint = db.fingerprint()
    proc = _start(tmp_path, db, scratch, "apply", "--json")
    _terminate_in_production(db, proc, like)
    r = _finish(proc)

    assert db.fingerprint() == checkpoint
    assert r.code == 1, r.text
    assert "Traceback" not in r.text
    model: dict[str, Any] = json.loads(r.out)
    assert model["outcome"] == "rolled_back", model["reason"]
    return model


def test_connection_dropped_inside_the_apply_transaction_leaves_production_at_the_checkpoint(
        prod_db: ProdDb, tmp_path: Path, scratch: Path) -> None:
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {may: [insert rows public.audit_log, update rows public.users]}}
""", {"m.sql": "INSERT INTO audit_log VALUES ('2026-11-26', 'before the pause');\n"
               + ONLY_IN_PRODUCTION.format(port=prod_db.server.port) + "\n"
               "UPDATE users SET full_name = upper(full_name) WHERE id <= 10;\n"})
    model = _apply_losing_production(prod_db, tmp_path, scratch, "%pg_sleep%")
    assert "lost the connection" in model["reason"] and "production was never changed" in model["reason"]


def test_connection_dropped_between_autocommit_statements_restores_the_checkpoint(
        prod_db: ProdDb, tmp_path: Path, scratch: Path) -> None:
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect:
  app:
    must: [add index public.audit_log_message_idx]
    may: [insert rows public.audit_log]
""", {"m.sql": "INSERT INTO audit_log VALUES ('2026-11-26', 'committed before the drop');\n"
               + ONLY_IN_PRODUCTION.format(port=prod_db.server.port) + "\n"
               "CREATE INDEX CONCURRENTLY audit_log_message_idx ON audit_log (message);\n"})
    model = _apply_losing_production(prod_db, tmp_path, scratch, "%pg_sleep%")
    assert "lost the connection" in model["reason"]
    # Not in one transaction, but undone from the record kept before the action: only what it changed.
    assert "public.audit_log: put back from the checkpoint" in model["reason"]
    assert "other sessions' writes since were kept" in model["reason"]
    assert model["targets"][0]["restore"]["needed"] is True and model["targets"][0]["restore"]["verified"] is True


HOLD_PRODUCTION = """
import os, sys, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("INSERT INTO audit_log VALUES ('2026-11-26', 'written by the job')")
    if os.environ["PGPORT"] == os.environ["PROD_PORT"]:
        try:
            conn.execute("SELECT 'shadow-faults-hold', pg_sleep(120)")
        except psycopg.OperationalError as exc:
            sys.exit(f"job: lost production: {exc}")
"""


def test_command_action_losing_production_is_rolled_back(prod_db: ProdDb, tmp_path: Path, scratch: Path) -> None:
    write_plan(tmp_path, f"""
targets: {{app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}}}
action:
  command: "{sys.executable} job.py"
  env: {{PROD_PORT: "{prod_db.server.port}"}}
expect: {{app: {{may: [insert rows public.audit_log]}}}}
""", {"job.py": HOLD_PRODUCTION})
    model = _apply_losing_production(prod_db, tmp_path, scratch, "%shadow-faults-hold%")
    assert "job: lost production" in model["reason"]
    assert "public.audit_log: put back from the checkpoint" in model["reason"]  # that table alone


# -- 2. the shadow's server dying mid-rehearsal ------------------------------------------------------------
HOLD_SHADOW = """
import os, pathlib, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    pathlib.Path(os.environ["MARKER"]).write_text(os.environ["PGPORT"])
    conn.execute("SELECT pg_sleep(120)")
"""


def _kill_local_shadow(scratch: Path, pid: int) -> None:
    """SIGKILL the postmaster of the local shadow cluster that shadow process ``pid`` started."""
    for root in scratch.glob(TEMP_PREFIX + "*"):
        labels = json.loads((root / LABELS_FILE).read_text())
        if labels[LABEL_PID] == str(pid):
            postmaster = int((root / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(postmaster, signal.SIGKILL)
            return
    raise AssertionError(f"no local shadow cluster of pid {pid} in {scratch}")


def _shadow_containers(pid: int) -> list[Any]:
    import docker

    return docker.from_env().containers.list(all=True, filters={"label": [f"{LABEL_PID}={pid}",
                                                                          f"{LABEL_ROLE}=postgres-shadow"]})


@BOTH_BACKENDS
def test_shadow_server_killed_mid_rehearsal_fails_clearly_and_leaves_nothing(
        prod_db: ProdDb, tmp_path: Path, scratch: Path, backend: str) -> None:
    marker = tmp_path / "rehearsing"
    write_plan(tmp_path, f"""
targets: {{app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}}}
action:
  command: "{sys.executable} hold.py"
  env: {{MARKER: "{marker}"}}
""", {"hold.py": HOLD_SHADOW})
    before = prod_db.fingerprint()
    proc = _start(tmp_path, prod_db, scratch, "plan", backend=backend)
    _wait_for(marker, proc)
    if backend == "local":
        _kill_local_shadow(scratch, proc.pid)
    else:
        containers = _shadow_containers(proc.pid)
        assert len(containers) == 1
        containers[0].kill()
    r = _finish(proc)

    assert r.code == 3, r.text
    line = _one_clear_line(r)
    assert "shadow" in line and "died during the rehearsal" in line and "production was not touched" in line, line
    assert prod_db.fingerprint() == before
    assert list(scratch.iterdir()) == []
    if backend == "docker":
        assert _shadow_containers(proc.pid) == []


# -- 3. the snapshot store's disk filling during the checkpoint -------------------------------------------
@contextmanager
def _small_disk(mountpoint: Path, megabytes: int = 2) -> Iterator[None]:
    """A filesystem of ``megabytes`` at ``mountpoint``: tmpfs, else an ext4 loop file; skip (fail in CI) if
    neither can be mounted here."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0700", "tmpfs", str(mountpoint)],
                           capture_output=True, text=True)
    image = mountpoint.parent / "small-disk.img"
    if tried.returncode != 0:
        image.write_bytes(b"")
        os.truncate(image, max(megabytes, 4) << 20)
        mkfs = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
        looped = subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], capture_output=True, text=True)
        if mkfs.returncode != 0 or looped.returncode != 0:
            why = (f"cannot mount a small filesystem here (tmpfs: {tried.stderr.strip()}; loop: "
                   f"{(mkfs.stderr or looped.stderr).strip()})")
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI=true but {why}")
            pytest.skip(why)
    try:
        yield
    finally:
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)
        image.unlink(missing_ok=True)


def test_store_disk_full_during_checkpoint_fails_clearly_and_leaves_no_partial_artifact(
        prod_db: ProdDb, tmp_path: Path, scratch: Path) -> None:
    prod_db.execute("CREATE TABLE big (id bigint PRIMARY KEY, payload text NOT NULL);"
                    "INSERT INTO big SELECT g, md5(g::text) || md5((g::bigint * 7919)::text) || md5((g::bigint * 104729)::text) "
                    "FROM generate_series(1, 150000) g")
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {may: [insert rows public.audit_log]}}
""", {"m.sql": "INSERT INTO audit_log VALUES ('2026-11-26', 'x');\n"})
    before = prod_db.fingerprint()
    state = tmp_path / "state"
    with _small_disk(state):
        r = _shadow(tmp_path, prod_db, scratch, "apply", state=state)
        store = state / "snapshots"
        leftovers = [p for p in (store / "tmp").rglob("*")] + [p for p in store.rglob("*.tmp")]
        referenced = [a["sha256"] for m in (store / "manifests").rglob("*.json")
                      for a in json.loads(m.read_text()).get("artifacts", {}).values() if "sha256" in a]
        missing = [sha for sha in referenced if not (store / "objects" / "sha256" / sha[:2] / sha).is_file()]

    assert r.code == 3, r.text
    line = _one_clear_line(r)
    assert "No space left on device" in line and "snapshot store" in line, line
    assert leftovers == [] and missing == []
    assert prod_db.fingerprint() == before
    assert list(scratch.iterdir()) == []


# -- 4. a checkpoint artifact corrupted before a restore -------------------------------------------------
def _flip_bytes(store: Path, run_id: str) -> tuple[Path, bytes]:
    """Corrupt the dump artifact of ``run_id``'s checkpoint in place; return its path and original bytes."""
    manifest = json.loads((store / "manifests" / run_id / "app.json").read_text())
    sha = manifest["artifacts"]["dump"]["sha256"]
    path = store / "objects" / "sha256" / sha[:2] / sha
    original = path.read_bytes()
    middle = len(original) // 2
    path.write_bytes(original[:middle] + bytes(b ^ 0xFF for b in original[middle:middle + 16])
                     + original[middle + 16:])
    return path, original


def test_rollback_from_a_corrupted_artifact_is_refused_and_production_keeps_the_applied_state(
        prod_db: ProdDb, tmp_path: Path, scratch: Path) -> None:
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {must: [add column public.users.nickname]}}
""", {"m.sql": "ALTER TABLE users ADD COLUMN nickname text;\n"})
    checkpoint = prod_db.fingerprint()
    applied = _shadow(tmp_path, prod_db, scratch, "apply", "--json")
    assert applied.code == 0, applied.text
    run_id = json.loads(applied.out)["run_id"]
    after_apply = prod_db.fingerprint()
    artifact, original = _flip_bytes(tmp_path / "state" / "snapshots", run_id)

    refused = _shadow(tmp_path, prod_db, scratch, "rollback", run_id, "--full")  # an undo needs no dump
    assert refused.code == 3, refused.text
    line = _one_clear_line(refused)
    assert "corrupt" in line and "sha256" in line and "does not match" in line, line
    assert "the checkpoint is intact" not in line
    assert prod_db.fingerprint() == after_apply

    artifact.write_bytes(original)
    restored = _shadow(tmp_path, prod_db, scratch, "rollback", run_id, "--full")
    assert restored.code == 0, restored.text
    assert prod_db.fingerprint() == checkpoint


MIGRATE = """
import os, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("ALTER TABLE users ADD COLUMN nickname text")
    conn.execute("UPDATE users SET nickname = lower(full_name)")
"""


@pytest.fixture
def copy_of_production(prod_db: ProdDb) -> Iterator[tuple[ProdDb, Callable[[], None]]]:
    """A database recreated from ``prod_db`` under one name, so fingerprints compare across recreations."""
    name = prod_db.name + "_c"
    db = ProdDb(prod_db.server, name, prod_db.server.dsn(name))

    def reset() -> None:
        with prod_db.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{prod_db.name}"')

    reset()
    yield db, reset
    with prod_db.server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.cold  # asserts that nothing outlives the run, or counts fault points of a cold run
@pytest.mark.usefixtures("own_tempdir")  # its gc sees only this test's temp dirs
def test_recover_from_a_corrupted_artifact_refuses_and_leaves_the_run_to_recover_later(
        copy_of_production: tuple[ProdDb, Callable[[], None]], tmp_path: Path, scratch: Path) -> None:
    db, reset = copy_of_production
    write_plan(tmp_path, f"""
targets: {{app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}}}
action: {{command: "{sys.executable} migrate.py"}}
expect: {{app: {{must: [add column public.users.nickname], may: [update rows public.users]}}}}
""", {"migrate.py": MIGRATE})
    checkpoint = db.fingerprint()
    trace = tmp_path / "trace.txt"
    traced = _shadow(tmp_path, db, scratch, "apply", state=tmp_path / "traced",
                     env={"SHADOW_FAULT_TRACE": str(trace)})
    assert traced.code == 0, traced.text
    points = [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]
    after_the_action = points.index("end apply") + 1  # 1-based: the transition right after the action ran

    reset()
    killed = _shadow(tmp_path, db, scratch, "apply", env={"SHADOW_FAULT_KILL_AT": str(after_the_action)})
    assert killed.code == -signal.SIGKILL, killed.text
    half_applied = db.fingerprint()
    assert half_applied != checkpoint
    (run_json,) = (tmp_path / "state" / "runs").glob("*/run.json")
    run_id = run_json.parent.name
    artifact, original = _flip_bytes(tmp_path / "state" / "snapshots", run_id)

    refused = _shadow(tmp_path, db, scratch, "recover")
    assert refused.code == 3, refused.text
    line = _one_clear_line(refused)
    assert "corrupt" in line and "sha256" in line and "does not match" in line, line
    assert "shadow recover" in line, line
    assert db.fingerprint() == half_applied
    assert json.loads(run_json.read_text())["phase"] == "applying"
    blocked = _shadow(tmp_path, db, scratch, "plan")
    assert blocked.code == 3 and "shadow recover" in blocked.err, blocked.text

    artifact.write_bytes(original)
    recovered = _shadow(tmp_path, db, scratch, "recover", "--json")
    assert recovered.code == 0, recovered.text
    assert [row["outcome"] for row in json.loads(recovered.out)] == ["rolled_back"]
    assert db.fingerprint() == checkpoint
    assert _shadow(tmp_path, db, scratch, "gc").code == 0  # the SIGKILLed apply's shadow cluster
    assert list(scratch.iterdir()) == []
