"""What keeps two runs apart and lets a killed run be found: run records, liveness, target locks, fault points.

- **Run record** (``runs/<id>/run.json``): command, pid, the identity of every target and the run's *phase*
  (``rehearsing`` → ``applying`` → ``applied`` → ``finished``; a rollback goes ``restoring`` → ``finished``).
  It is rewritten atomically (and fsynced) before each phase begins, so after a crash it says how far the run
  got; the journal says which step.
- **Liveness**: a running shadow holds an exclusive ``flock`` on ``runs/<id>/alive`` for its whole life. The
  kernel drops it when the process dies however it dies, so "the lock can be taken" means "nobody runs this".
- **Target locks**: ``locks/<identity hash>.lock`` (flock) on this machine, plus the kind's own lock on the
  production resource (a PostgreSQL advisory lock) so that runs on two machines sharing a database exclude each
  other too. Locks are taken in a fixed order, so two runs cannot deadlock.
- **Fault points**: tests set ``SHADOW_FAULT_KILL_AT=<n>`` to have the process SIGKILL itself at its n-th
  journal transition, and ``SHADOW_FAULT_TRACE=<file>`` to list the transitions a run goes through.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadow.errors import InfrastructureError
from shadow.locks import file_lock, held
from snapshots import atomic_write_bytes

class Unrecovered(InfrastructureError):
    """A killed run left a target unfinished; ``shadow recover`` must settle it first."""


def identity_key(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:20]


@dataclass
class RunRecord:
    run_id: str
    command: str
    plan_path: str
    targets: dict[str, str]  # name → identity (where it is, without secrets)
    phase: str = "rehearsing"
    pid: int = 0
    host: str = ""
    of_run: str | None = None
    # An apply in one transaction: {"target": name, "xid": id once it began} — the server knows if it committed.
    transaction: dict[str, Any] | None = None
    # Every action process it started (shadow.warden.identity), recorded before the action was let go.
    actions: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        data = json.loads(path.read_text())
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    def save(self, folder: Path) -> None:
        atomic_write_bytes(folder / "run.json", self.to_bytes())


class Liveness:
    """Held by a run for its whole life: an exclusive flock on ``runs/<id>/alive``."""

    def __init__(self, folder: Path) -> None:
        self.fd = os.open(folder / "alive", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def is_alive(folder: Path) -> bool:
    """Whether a process still holds the run's liveness lock."""
    return held(folder / "alive")


@contextmanager
def lock_targets(locks_dir: Path, targets: Mapping[str, Any], holder: str, timeout: float,
                 wait: Callable[[str], None]) -> Iterator[None]:
    """Lock every target on this machine (flock) and at the resource itself (the kind's ``lock``, if any)."""
    held: set[str] = set()  # resource locks already taken by this run (two targets, one database)
    with ExitStack() as stack:
        for name, t in sorted(targets.items(), key=lambda item: identity_key(item[1].describe())):
            tell = _prefixed(wait, name)
            stack.enter_context(file_lock(locks_dir / f"{identity_key(t.describe())}.lock", holder, timeout, tell))
            resource = t.lock_identity()
            if resource not in held:
                stack.enter_context(t.lock(holder, timeout, tell))
                held.add(resource)
        yield


def _prefixed(wait: Callable[[str], None], name: str) -> Callable[[str], None]:
    return lambda text: wait(f"{name}: {text}")


def holder_text(run_id: str, command: str) -> str:
    return f"run {run_id} (`shadow {command}`, pid {os.getpid()} on {socket.gethostname()})"


class FaultPoints:
    """Journal transitions a test can kill the process at (``SHADOW_FAULT_KILL_AT``) or list (``…_TRACE``)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.kill_at = int(environ.get("SHADOW_FAULT_KILL_AT") or 0)
        self.trace = environ.get("SHADOW_FAULT_TRACE") or None
        self.count = 0

    def reached(self, label: str) -> None:
        self.count += 1
        if self.trace:
            with open(self.trace, "a", encoding="utf-8") as fh:
                fh.write(f"{self.count}\t{label}\n")
        if self.count == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
