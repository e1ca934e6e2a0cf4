"""Warm checkpoints (``policy.warm: DURATION``): a checkpoint restored once, kept between runs, cloned per run.

A cold run restores its checkpoint into a throwaway server and copies it into a pristine twin before the action
runs (:mod:`adapters.postgres.shadowcopy`). With ``policy.warm`` that server outlives the run: the written copy is
dropped, the twin — restored, verified equal to the checkpoint, never written — becomes the **golden** database
(``<db>__shadow_golden``, connections refused), and an entry in ``<state dir>/warm/postgres/<key>.json`` (mode 0600: it
holds the server's superuser password) says where it is. The next run against the same production (same address,
backend, major version and image) *leases* it: it reuses the checkpoint instead of taking a new one, and its
shadow and pristine twin are clones of the golden (``CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY``: a file
copy, no restore, no observation — the golden's observation is the checkpoint's). After the rehearsal,
``PostgresTarget.moved_since`` checks production against the checkpoint in what the action read or wrote (the
shadow's footprint: those tables' rows, every definition, their sequences); when production moved there, the
entry is discarded and the run rehearses again on a fresh checkpoint. The apply verifies as always.

Nothing one run does reaches the next: each run gets its own clones, dropped at its end (and, for a killed run,
at the next lease); the golden refuses connections, so an action cannot write it through the shadow's address;
every lease ends the server's other sessions and gives its superuser a new password (an action that ran as a
superuser learnt nothing that lasts); what a database cannot hold — roles, memberships, per-role settings,
databases, tablespaces, configuration files — is fingerprinted before a cold run's action and when the entry is
kept, and checked at every lease: a difference (an action that created a role, say) keeps or lends out nothing.

Lifetime and memory: an entry expires ``keep`` seconds after its last use or lease (never while leased); one run
at a time leases it (an
``flock`` on ``<key>.lock``; a second, concurrent run goes cold); at most ``SHADOW_WARM_MAX`` (default 2) are kept
per state dir, the least recently used evicted first; a local cluster runs with 64 MB of shared buffers, a
container with the plan's ``policy.limits``. The server carries the label ``shadow.warm`` naming its entry, so
``shadow gc`` (and ``shadow recover``) keep it while its entry is unexpired and remove it after — ``recover`` also
the one a killed run it settles had kept; ``shadow gc --warm`` removes every one no run is using now.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg

from adapters.postgres.warm_entry import GOLDEN_SUFFIX as GOLDEN_SUFFIX
from adapters.postgres.warm_entry import SPARE_SUFFIXES as SPARE_SUFFIXES
from adapters.postgres.warm_entry import Entry as Entry
from adapters.postgres.warm_entry import WarmServer as WarmServer
from adapters.postgres.warm_entry import _lock as _lock
from adapters.postgres.warm_entry import _read as _read
from adapters.postgres.warm_entry import _write as _write
from adapters.postgres.warm_entry import entries as entries
from adapters.postgres.warm_entry import entries_dir as entries_dir
from adapters.postgres.warm_entry import golden_name as golden_name
from adapters.postgres.warm_entry import key_of as key_of
from adapters.postgres.warm_entry import spare_names as spare_names
from adapters.postgres.warm_golden import ADMIN_DB as ADMIN_DB
from adapters.postgres.warm_golden import Q_SERVER_STATE as Q_SERVER_STATE
from adapters.postgres.warm_golden import _fresh_session as _fresh_session
from adapters.postgres.warm_golden import clone as clone
from adapters.postgres.warm_golden import drop_clones as drop_clones
from adapters.postgres.warm_golden import drop_database as drop_database
from adapters.postgres.warm_golden import make_golden as make_golden
from adapters.postgres.warm_golden import server_state as server_state
from adapters.postgres.warm_spares import PREPARER_STOPS as PREPARER_STOPS
from adapters.postgres.warm_spares import _preparing as _preparing
from adapters.postgres.warm_spares import _stop_preparer as _stop_preparer
from adapters.postgres.warm_spares import prepare_for_next as prepare_for_next
from adapters.postgres.warm_spares import prepare_spares as prepare_spares

DEFAULT_MAX = 2


class Lease:
    """One run's hold on an entry (an exclusive flock): nobody else clones from it meanwhile."""

    def __init__(self, folder: Path, entry: Entry, fd: int, admin: psycopg.Connection | None = None) -> None:
        self.folder, self.entry, self._fd = folder, entry, fd
        self.stale: str | None = None  # why the entry must not be lent out again
        # A session on ADMIN_DB: the lease's, for the run's clone to take, or the one that found the server still
        # answering at the end (each saves a handshake); release drops the clones through it, and closes it.
        self.admin = admin

    def release(self, lost: str | None = None) -> None:
        """Drop this run's clones; keep the entry (used now) unless it went stale or its server is lost."""
        if self._fd < 0:
            return
        why = self.stale or lost
        try:
            if why is None:
                try:
                    drop_clones(self.entry.server(), self.entry.database, self.admin)
                except psycopg.Error as exc:
                    why = f"its clones could not be dropped: {exc}"
            self._close_admin()  # before a discard stops the server
            if why is None:
                self.entry.used = time.time()
                _write(self.folder, self.entry)
            else:
                discard(self.folder, self.entry)
        finally:
            self._close_admin()
            os.close(self._fd)
            self._fd = -1

    def _close_admin(self) -> None:
        admin, self.admin = self.admin, None
        if admin is not None:
            admin.close()


# -- the registry -------------------------------------------------------------------------------------------------
def lease(folder: Path, key: str) -> tuple[Lease | None, str]:
    """The entry ``key``, leased to this run — or (None, why not): none kept, expired, in use by another run, its
    server gone, or its server's global state changed since it was kept (then it is discarded)."""
    path = folder / f"{key}.json"
    if not path.exists():
        return None, "no warm copy kept"
    fd = _lock(folder, key, blocking=False)
    if fd < 0 and _stop_preparer(folder, key):
        fd = _lock(folder, key, blocking=True, timeout=PREPARER_STOPS)
    if fd < 0:
        return None, "the warm copy is in use by another run"
    _preparing(folder, key).unlink(missing_ok=True)  # a preparer killed outright leaves its note behind
    try:
        entry = _read(path)
        if entry is None:
            raise _Unusable("its entry is unreadable")
        if entry.expired():
            discard(folder, entry)
            raise _Unusable("the warm copy expired")
        server = entry.server()
        try:
            conn = server.connect(ADMIN_DB)  # one session for the lot, and the clone (each new one costs a handshake)
        except psycopg.Error as exc:
            discard(folder, entry)
            raise _Unusable(f"its server does not answer ({str(exc).strip().splitlines()[0]})") from exc
        try:
            drop_clones(server, entry.database, conn)  # a killed run's
            state = server_state(server, entry.database, conn)
            if state == entry.state:
                entry.password = _fresh_session(server, conn)
                entry.used = time.time()  # its time runs from this lease (and gc spares it while leased)
                _write(folder, entry)
        except psycopg.Error as exc:
            conn.close()
            discard(folder, entry)
            raise _Unusable(f"its server does not answer ({str(exc).strip().splitlines()[0]})") from exc
        except BaseException:
            conn.close()
            raise
        if state != entry.state:
            conn.close()
            discard(folder, entry)
            raise _Unusable("a previous action changed the warm server's roles, settings or databases; discarded")
    except _Unusable as exc:
        os.close(fd)
        return None, str(exc)
    except BaseException:
        os.close(fd)
        raise
    return Lease(folder, entry, fd, conn), ""


class _Unusable(Exception):
    pass


def keep(folder: Path, entry: Entry, max_entries: int = DEFAULT_MAX) -> bool:
    """Keep ``entry`` (its server already prepared by :func:`make_golden`) and evict the least recently used
    others beyond ``max_entries``. False when another run leases the entry this one would replace (the caller
    stops its server: a run never waits for another to keep its own)."""
    fd = _lock(folder, entry.key, blocking=False)
    if fd < 0:
        return False
    try:
        old = _read(folder / f"{entry.key}.json")
        if old is not None and (old.root, old.container) != (entry.root, entry.container):
            discard(folder, old)
        _write(folder, entry)
    finally:
        os.close(fd)
    others = sorted((e for e in entries(folder) if e.key != entry.key), key=lambda e: e.used, reverse=True)
    for other in others[max(0, max_entries - 1):]:
        fd = _lock(folder, other.key, blocking=False)
        if fd < 0:
            continue  # in use: evicted by a later keep
        try:
            discard(folder, other)
        finally:
            os.close(fd)
    return True


def reap_for_gc(settings: Any, everything: bool, dry_run: bool,
                runs: set[str] | None = None) -> list[tuple[str, str | None, str]]:
    """:meth:`adapters.Kind.reap_warm`: (the server's dir or container, the run that made it, what was done)."""
    folder = entries_dir(settings)
    if dry_run:
        return [(e.root or e.container or e.key, e.run, "would be removed") for e in entries(folder)
                if everything or e.expired() or e.run in (runs or ())]
    return [(e.root or e.container or e.key, e.run, said) for e, said in reap(folder, everything, runs)]


def reap(folder: Path, everything: bool = False, runs: set[str] | None = None) -> list[tuple[Entry, str]]:
    """Discard the expired entries and those ``runs`` made (``everything``: all) that no run holds; (entry, what
    was done) for each."""
    done = []
    for entry in entries(folder):
        if not everything and not entry.expired() and entry.run not in (runs or ()):
            continue
        fd = _lock(folder, entry.key, blocking=False)
        if fd < 0 and _stop_preparer(folder, entry.key):  # readying spares is no use: it goes
            fd = _lock(folder, entry.key, blocking=True, timeout=PREPARER_STOPS)
        if fd < 0:
            continue
        try:
            _preparing(folder, entry.key).unlink(missing_ok=True)
            done.append((entry, discard(folder, entry)))
        finally:
            os.close(fd)
    return done


def discard(folder: Path, entry: Entry) -> str:
    """Stop the entry's server, remove its files and the entry; say what was stopped."""
    said = stop_server(entry)
    try:
        (folder / f"{entry.key}.json").unlink()
    except FileNotFoundError:
        pass
    return said


def stop_server(entry: Entry) -> str:
    if entry.container:
        from adapters import docker as dockerlib

        try:
            client = dockerlib.client()
        except Exception as exc:  # noqa: BLE001 - no engine: gc removes the container by its label later
            return f"container {entry.container[:12]} not removed: {exc}"
        try:
            client.containers.get(entry.container).remove(force=True, v=True)
            return f"container {entry.container[:12]} removed"
        except Exception as exc:  # noqa: BLE001 - already gone
            return f"container {entry.container[:12]}: {str(exc).strip()[:100]}"
        finally:
            client.close()
    if entry.root:
        from adapters.postgres.cluster import stop_server as stop_cluster

        root = Path(entry.root)
        said = stop_cluster(root / "data") if root.exists() else "cluster gone"
        shutil.rmtree(root, ignore_errors=True)
        return said
    return "nothing to stop"
