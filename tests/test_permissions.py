"""The state dir and the checkpoint store are private (dirs 0700, files 0600) whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from shadow.journal import Journal
from snapshots import Store
from tests.conftest import write_plan


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_private(state: Path) -> None:
    assert _mode(state) == 0o700
    journal = sorted(state.glob("journal.sqlite*"))
    assert {p.name for p in journal} >= {"journal.sqlite"}
    wrong = {str(p): oct(_mode(p)) for p in journal if _mode(p) != 0o600}
    store = state / "snapshots"
    for path in [store, *store.rglob("*")]:
        if path.is_dir() and _mode(path) != 0o700 or path.is_file() and _mode(path) != 0o600:
            wrong[str(path)] = oct(_mode(path))
    runs = state / "runs"
    # Reports and action logs sit in private run directories (the files keep their own modes).
    for path in [runs, *runs.glob("*")] if runs.exists() else []:
        if path.is_dir() and _mode(path) != 0o700:
            wrong[str(path)] = oct(_mode(path))
    assert not wrong, wrong


def test_store_and_journal_are_private_under_a_permissive_umask(tmp_path, umask):
    state = tmp_path / "state"
    store = Store(state / "snapshots")
    with store.new_artifact() as slot:
        slot.path.write_bytes(b"a checkpoint of production")
    assert slot.artifact is not None
    store.write_manifest("run-1", "app", {"artifact": slot.artifact.sha256})
    journal = Journal(state / "journal.sqlite")
    journal.start_run("run-1", "plan", "/p/shadow.yaml", "c")
    sidecars = sorted(p.name for p in state.glob("journal.sqlite-*"))
    journal.close()
    assert sidecars == ["journal.sqlite-shm", "journal.sqlite-wal"]
    assert _mode(store.open_verified(slot.artifact)) == 0o600
    _assert_private(state)


def test_an_existing_world_readable_state_dir_is_tightened(tmp_path, umask):
    state = tmp_path / "state"
    (state / "snapshots" / "manifests").mkdir(parents=True, mode=0o777)
    (state / "journal.sqlite").touch(mode=0o666)
    for path in (state, state / "snapshots", state / "snapshots" / "manifests", state / "journal.sqlite"):
        os.chmod(path, 0o777 if path.is_dir() else 0o666)
    Journal(state / "journal.sqlite").close()
    Store(state / "snapshots").write_manifest("run-1", "app", {})
    _assert_private(state)


def test_a_real_run_leaves_only_private_state(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {may: [insert rows public.audit_log]}}
""", {"m.sql": "INSERT INTO audit_log VALUES (now(), 'x');"})
    old = os.umask(0)
    try:
        r = shadow_cli("plan", "-q", env={"APP_DATABASE_URL": prod_db.dsn})
    finally:
        os.umask(old)
    assert r.code == 0, r.text
    state = shadow_cli.state_dir
    assert list((state / "snapshots" / "objects").rglob("*")), "the run should have stored a checkpoint"
    assert list((state / "snapshots" / "manifests").rglob("*.json"))
    _assert_private(state)
