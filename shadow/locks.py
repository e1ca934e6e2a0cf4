"""File locks: an exclusive ``flock`` that says who holds it and waits a bounded time.

A leaf module (any layer may use it): run-level locking (``shadow.guard``) and the kinds' own locks on production
resources (a git target's ``shadow.lock``) are built on it.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from shadow.errors import InfrastructureError

POLL_SECONDS = 0.25
DEFAULT_LOCK_TIMEOUT = 60.0  # seconds a run waits for another run's lock on a target (--lock-timeout)


class LockTimeout(InfrastructureError):
    """Another run holds a target's lock and did not let go within ``--lock-timeout``."""


@contextmanager
def file_lock(path: Path, holder: str, timeout: float, wait: Callable[[str], None]) -> Iterator[None]:
    """An exclusive flock on ``path``; waits up to ``timeout`` seconds (telling ``wait`` who holds it)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline, told = time.monotonic() + timeout, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                owner = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another shadow run"
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{owner} holds the lock on this target (waited {timeout:g} s; raise "
                                      "--lock-timeout to wait longer)") from None
                if not told:
                    wait(f"waiting up to {timeout:g} s for {owner} to release the target")
                    told = True
                time.sleep(POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def held(path: Path) -> bool:
    """Whether another process holds an flock on ``path`` (False when the file does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock this probe took
    return False
