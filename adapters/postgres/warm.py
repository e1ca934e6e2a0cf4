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

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from adapters import Interrupt
from adapters.postgres.server import SUPERUSER, Server
from snapshots import atomic_write_bytes

GOLDEN_SUFFIX = "__shadow_golden"
# A ready clone of the golden: the next shadow. Its twin is seldom needed (adapters.postgres.held reads the shadow
# as the action found it), and cloned when it is.
SPARE_SUFFIXES = ("__shadow_spare1",)
ADMIN_DB = "template1"  # where a warm server is managed from: the database named like production's comes and goes
DEFAULT_MAX = 2
PREPARER_STOPS = 15.0  # seconds a run waits for a stopped preparer to let go (it cancels its copy)

# What a database cannot hold and a clone does not reset: the server's global state, fingerprinted.
Q_SERVER_STATE = """
SELECT md5(coalesce(string_agg(line, E'\\n' ORDER BY line), '')) FROM (
  SELECT 'role ' || r::text AS line FROM pg_roles r
  UNION ALL SELECT 'member ' || m::text FROM pg_auth_members m
  UNION ALL SELECT 'setting ' || coalesce(d.datname, '*') || ' ' || s.setrole || ' ' || s.setconfig::text
    FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase
    WHERE d.datname IS NULL OR d.datname <> ALL(%(own)s)
  UNION ALL SELECT 'database ' || concat_ws(' ', datname, datallowconn, datconnlimit, datistemplate, datacl)
    FROM pg_database WHERE datname <> ALL(%(own)s)
  UNION ALL SELECT 'tablespace ' || spcname FROM pg_tablespace
  UNION ALL SELECT 'file ' || concat_ws(' ', sourcefile, name, setting, applied) FROM pg_file_settings
) lines
"""


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


class Lease:
    """One run's hold on an entry (an exclusive flock): nobody else clones from it meanwhile."""

    def __init__(self, folder: Path, entry: Entry, fd: int) -> None:
        self.folder, self.entry, self._fd = folder, entry, fd
        self.stale: str | None = None  # why the entry must not be lent out again

    def release(self, lost: str | None = None) -> None:
        """Drop this run's clones; keep the entry (used now) unless it went stale or its server is lost."""
        if self._fd < 0:
            return
        why = self.stale or lost
        try:
            if why is None:
                try:
                    drop_clones(self.entry.server(), self.entry.database)
                except psycopg.Error as exc:
                    why = f"its clones could not be dropped: {exc}"
            if why is None:
                self.entry.used = time.time()
                _write(self.folder, self.entry)
            else:
                discard(self.folder, self.entry)
        finally:
            os.close(self._fd)
            self._fd = -1


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
            drop_clones(server, entry.database)  # a killed run's
            state = server_state(server, entry.database)
            if state == entry.state:
                entry.password = _fresh_session(server)
                entry.used = time.time()  # its time runs from this lease (and gc spares it while leased)
                _write(folder, entry)
        except psycopg.Error as exc:
            discard(folder, entry)
            raise _Unusable(f"its server does not answer ({str(exc).strip().splitlines()[0]})") from exc
        if state != entry.state:
            discard(folder, entry)
            raise _Unusable("a previous action changed the warm server's roles, settings or databases; discarded")
    except _Unusable as exc:
        os.close(fd)
        return None, str(exc)
    except BaseException:
        os.close(fd)
        raise
    return Lease(folder, entry, fd), ""


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


def entries(folder: Path) -> list[Entry]:
    if not folder.is_dir():
        return []
    return [e for e in (_read(p) for p in sorted(folder.glob("*.json"))) if e is not None]


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


# -- the server side ----------------------------------------------------------------------------------------------
def server_state(server: Server, database: str) -> str:
    """The server's global state, but for the databases a run makes and drops (the shadow named ``database``,
    its twin, the golden one) — the same before a cold run's action and once its copy is kept; and whether the
    golden database still refuses connections."""
    from adapters.postgres.shadowcopy import pristine_name

    own = [database, pristine_name(database), golden_name(database)]
    with server.connect(ADMIN_DB) as conn:
        row = conn.execute(Q_SERVER_STATE, {"own": own + spare_names(database)}).fetchone()
        closed = conn.execute("SELECT NOT datallowconn FROM pg_database WHERE datname = %s", [own[2]]).fetchone()
    return f"{row[0] if row else ''} golden {'closed' if closed and closed[0] else 'open' if closed else 'absent'}"


def _fresh_session(server: WarmServer) -> str:
    """End every other session on the server and give its superuser a new password: whatever an earlier action
    learnt or kept open (it may have run as a superuser, with the shadow's own address) is useless now."""
    password = secrets.token_urlsafe(18)
    with server.connect(ADMIN_DB) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                     "AND pid <> pg_backend_pid()")
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(SUPERUSER), sql.Literal(password)))
    server.password = password
    return password


def drop_database(conn: psycopg.Connection, name: str) -> None:
    """Drop ``name`` if it exists, ending its sessions first (any server version)."""
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                 "pg_backend_pid()", [name])
    for _ in range(50):
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            return
        except psycopg.errors.ObjectInUse:
            time.sleep(0.1)  # a terminated session takes a moment to leave
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def drop_clones(server: Server, database: str) -> None:
    """Drop a run's clones (the shadow, its twin); the server keeps an empty ``postgres`` database."""
    from adapters.postgres.shadowcopy import pristine_name

    with server.connect(ADMIN_DB) as conn:
        for name in (database, pristine_name(database)):
            drop_database(conn, name)
        if database == "postgres":
            conn.execute("CREATE DATABASE postgres TEMPLATE template0")


def make_golden(server: Server, database: str, pristine: str) -> None:
    """Turn a cold run's server into a warm one: drop the written copy, rename the never-written twin to the golden
    database and close it to connections."""
    golden = golden_name(database)
    with server.connect(ADMIN_DB) as conn:
        drop_database(conn, database)
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [pristine])
        drop_database(conn, golden)
        for _ in range(50):
            try:
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(pristine),
                                                                            sql.Identifier(golden)))
                break
            except psycopg.errors.ObjectInUse:
                time.sleep(0.1)
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(golden)))
        if database == "postgres":
            conn.execute("CREATE DATABASE postgres TEMPLATE template0")


def clone(conn: psycopg.Connection, golden: str, name: str, owner: str | None, spares: list[str] | None = None) -> None:
    """``name`` as a file copy of the golden database (a checkpoint before, then no WAL per block) — or, when
    :func:`prepare_spares` left one of ``spares`` ready, that copy renamed (two clones made at once each claim a
    different one)."""
    drop_database(conn, name)
    for spare in spares or ():
        try:
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(spare), sql.Identifier(name)))
        except (psycopg.errors.InvalidCatalogName, psycopg.errors.ObjectInUse):
            continue  # not there, or claimed by the other clone this moment
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
        if owner:
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(name), sql.Identifier(owner)))
        return
    strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
    owned = sql.SQL(" OWNER {}").format(sql.Identifier(owner)) if owner else sql.SQL("")
    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}" + strategy).format(sql.Identifier(name),
                                                                             sql.Identifier(golden)) + owned)


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
