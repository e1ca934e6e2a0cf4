"""A warm checkpoint's spares (:mod:`adapters.postgres.warm`): clones of the golden database made between runs, and
the preparer that makes them.

A long-lived process (the gateway, or a detached ``shadow prepare-warm``) clones each idle entry's golden database
into its spare databases, so the next lease renames one instead of copying on its critical path. A preparer in a
process of its own notes its pid in ``<key>.preparing`` while it holds the entry's lock: a run that wants the copy
stops it (SIGTERM; the preparer cancels its copy) instead of going cold.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from adapters import Interrupt
from adapters.postgres.warm_entry import _lock, _read, entries, entries_dir, spare_names
from adapters.postgres.warm_golden import ADMIN_DB
from snapshots import atomic_write_bytes

PREPARER_STOPS = 15.0  # seconds a run waits for a stopped preparer to let go (it cancels its copy)


def prepare_for_next(settings: Any, interrupt: Interrupt) -> int:
    """:meth:`adapters.Kind.prepare_warm`: :func:`prepare_spares` for ``settings``' state dir."""
    return prepare_spares(entries_dir(settings), interrupt)


def prepare_spares(folder: Path, interrupt: Interrupt | None = None) -> int:
    """Between runs, in a long-lived process (the gateway): clone each idle entry's golden database into its spare
    databases, closed to connections like the golden (one statement: a spare is whole or absent), so the next
    lease renames them instead of copying on its critical path. An entry in use, expired or unreachable is left
    alone; ``interrupt`` cancels the copy under way. How many were made."""
    interrupt = interrupt or Interrupt()
    made = 0
    for entry in entries(folder):
        if interrupt.is_set():
            break
        fd = _lock(folder, entry.key, blocking=False)
        if fd < 0:
            continue
        note = _preparing(folder, entry.key)
        try:
            if interrupt.by_signal:
                atomic_write_bytes(note, str(os.getpid()).encode())
            current = _read(folder / f"{entry.key}.json")
            if current is None or current.expired():
                continue
            with current.server().connect(ADMIN_DB) as conn:
                names = spare_names(current.database)
                there = {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)",
                                                    [names]).fetchall()}
                for spare in names:
                    if spare in there:
                        continue
                    strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
                    with interrupt.cancelling(conn.cancel) as go:
                        if not go:
                            break
                        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} ALLOW_CONNECTIONS false" + strategy)
                                     .format(sql.Identifier(spare), sql.Identifier(current.golden)))
                    made += 1
        except psycopg.Error:
            continue  # the next lease finds out what is wrong with it, and clones as before
        finally:
            if interrupt.by_signal:
                note.unlink(missing_ok=True)
            os.close(fd)
    return made


def _preparing(folder: Path, key: str) -> Path:
    """The note a preparer in a process of its own (``shadow prepare-warm``) leaves while it holds ``key``'s lock:
    its pid, so that a run wanting the copy can stop it instead of going cold."""
    return folder / f"{key}.preparing"


def _stop_preparer(folder: Path, key: str) -> bool:
    """SIGTERM the preparer holding ``key``'s lock, if a preparer holds it: the note names a live process whose
    command line is ``shadow … prepare-warm`` (a pid noted long ago may be another process's by now)."""
    try:
        pid = int(_preparing(folder, key).read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, ValueError):
        return False
    if b"prepare-warm" not in argv:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True
