"""A warm checkpoint's entry (:mod:`adapters.postgres.warm`): the file that says where a kept server is, and its lock.

An entry lives in ``<state dir>/warm/postgres/<key>.json``, one per production address, backend, major version and
image (:func:`key_of`), written to a temp name and moved into place, mode 0600 (it holds the server's superuser
password). One process at a time holds it, by an exclusive ``flock`` on ``<key>.lock`` (:func:`_lock`). The names of
the databases a warm server keeps beside a run's clones — the golden one, the spares — follow from production's
database name.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from psycopg.conninfo import make_conninfo

from adapters.postgres.server import SUPERUSER, Server
from snapshots import atomic_write_bytes

GOLDEN_SUFFIX = "__shadow_golden"
# A ready clone of the golden: the next shadow. Its twin is seldom needed (adapters.postgres.held reads the shadow
# as the action found it), and cloned when it is.
SPARE_SUFFIXES = ("__shadow_spare1",)


def entries_dir(settings: Any) -> Path:
    """Where a state dir keeps PostgreSQL's warm entries."""
    return Path(settings.warm_dir) / "postgres"


def golden_name(database: str) -> str:
    return database[: 63 - len(GOLDEN_SUFFIX)] + GOLDEN_SUFFIX


def spare_names(database: str) -> list[str]:
    return [database[: 63 - len(s)] + s for s in SPARE_SUFFIXES]


def key_of(identity: str, backend: str, major: int, image: str | None) -> str:
    """The entry a production's warm copy is kept under: one per address, backend, major version and image."""
    return hashlib.sha256(json.dumps([identity, backend, major, image]).encode()).hexdigest()[:20]


@dataclass
class Entry:
    """One warm server, as kept in ``<state dir>/warm/<key>.json``."""

    key: str
    run: str  # the run that restored it (the server's ``shadow.run-id`` label)
    backend: str
    major: int
    host: str
    port: int
    password: str
    database: str  # production's database name: each run's clone is named so
    checkpoint: dict[str, Any]  # Checkpoint.to_dict() of the checkpoint the golden holds
    state: str  # the server's global state when it was kept (Q_SERVER_STATE)
    keep: float  # seconds after the last use
    used: float
    created: float
    root: str | None = None  # a local cluster's temp dir
    container: str | None = None  # a container's id
    warnings: list[str] = field(default_factory=list)  # what building the copy warned about, said again per run

    @property
    def golden(self) -> str:
        return golden_name(self.database)

    def expired(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) >= self.used + self.keep

    def server(self) -> WarmServer:
        return WarmServer(self.host, self.port, self.password, self.container)


class WarmServer(Server):
    """A kept server, reached again by address; starting and stopping it is the entry's business, not a run's."""

    def __init__(self, host: str, port: int, password: str, container_id: str | None) -> None:
        self.host, self.port, self.password, self.container_id = host, port, password, container_id

    def start(self) -> WarmServer:
        return self

    def stop(self) -> None:
        pass

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        return make_conninfo(host=self.host, port=self.port, dbname=dbname, user=user,
                             password=password if password is not None else self.password, connect_timeout=10)


def entries(folder: Path) -> list[Entry]:
    if not folder.is_dir():
        return []
    return [e for e in (_read(p) for p in sorted(folder.glob("*.json"))) if e is not None]


def _read(path: Path) -> Entry | None:
    try:
        return Entry(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write(folder: Path, entry: Entry) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{entry.key}.json"
    atomic_write_bytes(path, json.dumps(asdict(entry)).encode())
    os.chmod(path, 0o600)


def _lock(folder: Path, key: str, blocking: bool, timeout: float | None = None) -> int:
    """An exclusive flock on ``<key>.lock``: its fd, or -1 when another process holds it (not ``blocking``, or
    still after ``timeout`` seconds)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking and deadline is None else fcntl.LOCK_NB))
            return fd
        except BlockingIOError:
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                os.close(fd)
                return -1
            time.sleep(0.01)
