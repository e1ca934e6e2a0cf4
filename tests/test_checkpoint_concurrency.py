"""The PostgreSQL checkpoint runs ``pg_dump`` and the observation at once (issue 16): a failure of either side
stops the other, gives the same clear message as when they ran one after the other, and leaves nothing behind —
no pg_dump process, no watcher thread, no partial artifact in the store.

``pg_dump`` is replaced by a script (through ``SHADOW_PG_BINDIR``) that fails at once or runs for a minute; every
other tool is the real one.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psycopg
import pytest

from shadow.errors import InfrastructureError
from shadow.settings import Settings
from snapshots import Store
from tests.conftest import ProdDb

FAILS = 'echo "pg_dump: error: connection to server was lost" >&2; exit 1'
RUNS_A_MINUTE = "exec sleep 60"


def _bindir(tmp_path: Path, real: Path, behaviour: str) -> Path:
    """A bindir whose tools are the real ones but pg_dump, which writes its pid to ``pid`` and does ``behaviour``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in ("initdb", "pg_ctl", "postgres", "pg_restore", "psql"):
        (folder / tool).symlink_to(real / tool)
    script = folder / "pg_dump"
    script.write_text(f'#!/bin/sh\n[ "$1" = --version ] && exec {real / "pg_dump"} --version\n'
                      f'echo $$ > {tmp_path / "pid"}\n{behaviour}\n')
    script.chmod(0o755)
    return folder


def _target(db: ProdDb, tmp_path: Path, behaviour: str, dsn: str | None = None):  # type: ignore[no-untyped-def]
    bindir = _bindir(tmp_path, db.server.binaries.bindir, behaviour)
    settings = Settings.from_env(environ={"SHADOW_PG_BINDIR": str(bindir)}, state_dir=tmp_path / "state")
    target = db.target(settings)
    if dsn:
        target = type(target)("app", {"dsn": dsn}, settings)
    return target


def _assert_nothing_left(store: Store, tmp_path: Path) -> None:
    assert not list((store.root / "tmp").iterdir()), "a partial artifact was left in the store"
    assert not store.object_paths()
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # pg_dump was ended and reaped
    assert not [t for t in threading.enumerate() if t.name == "shadow-checkpoint-watcher"]


def test_a_pg_dump_that_fails_cancels_the_observation_and_says_what_pg_dump_said(prod_db: ProdDb, tmp_path: Path):
    # The observation is still reading when pg_dump fails, whatever the machine's speed: another session holds a
    # lock on a table it must read (hashing even a million rows once finished first on a loaded machine).
    prod_db.execute("CREATE TABLE big AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 1000) g")
    store = Store(tmp_path / "store")
    with psycopg.connect(prod_db.dsn) as blocker:
        blocker.execute("LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(InfrastructureError) as failed:
            _target(prod_db, tmp_path, FAILS).checkpoint(store, "run-1")
    assert str(failed.value).endswith("pg_dump failed: pg_dump: error: connection to server was lost")
    causes, exc = [], failed.value.__context__
    while exc is not None:
        causes.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    assert any("canceling statement due to user request" in c for c in causes), causes  # the observation stopped
    _assert_nothing_left(store, tmp_path)


def test_an_observation_that_fails_ends_the_running_pg_dump_with_the_same_message_as_before(prod_db: ProdDb,
                                                                                             tmp_path: Path):
    role = f"ckpt_{prod_db.name}"
    prod_db.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'ckpt-pass'; GRANT SELECT ON users, orders TO {role}")
    dsn = f"postgresql://{role}:ckpt-pass@127.0.0.1:{prod_db.server.port}/{prod_db.name}"
    store = Store(tmp_path / "store")
    started = time.monotonic()
    try:
        with pytest.raises(InfrastructureError) as failed:
            _target(prod_db, tmp_path, RUNS_A_MINUTE, dsn).checkpoint(store, "run-1")
    finally:
        prod_db.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
    assert "the connecting role cannot read everything shadow observes: permission denied for table" in str(failed.value)
    assert time.monotonic() - started < 30  # pg_dump was not waited for
    _assert_nothing_left(store, tmp_path)
