"""The PostgreSQL target: checkpoint with ``pg_dump``, shadow in a throwaway server, observe, restore."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg

from adapters import Checkpoint, Endpoint, fingerprint_of
from adapters.postgres import dsn as dsnlib
from adapters.docker import engine_answers
from adapters.postgres.binaries import ClientTools, ContainerTools, binaries_for, configured_bindir
from adapters.postgres.container import DEFAULT_IMAGE, ContainerServer, Limits
from adapters.postgres.cluster import LocalCluster
from adapters.postgres.server import MINIMAL_WAL_MISSES, Server
from adapters.postgres.diff import diff
from adapters.postgres.execute import end_sessions, execute, execute_verified
from adapters import tempdirs
from adapters.postgres import own_effect, stepwise, undo, undo_tables, warm
from adapters.postgres.hashcache import HashCache
from adapters.postgres.compare import count_changed_rows, how_they_differ, last_line, settle_settings, uncounted
from adapters.postgres.shadowcopy import PgShadow, endpoint_env
from adapters.postgres.observe import Hashed, like_checkpoint, observe, read_text_as_str
from adapters.postgres import dbsettings
from adapters.postgres.restore import Dump, dumped_sequences, pg_dump_started, restore_over, table_data_files
from shadow.changes import Change, RowDelta
from shadow.errors import (BinaryNotFound, InfrastructureError, RestoreFailed, ShadowError, SnapshotCorrupt, SqlError,
                           TargetUnreachable)
from shadow.sqlsplit import Statement, forces_autocommit
from snapshots import Artifact, Store, open_store

# Advisory lock key: a class id of shadow's own ("SH") and the database's name hashed.
# The server's words when a feature needs more WAL than wal_level = minimal writes (a replication slot, a base backup).
WAL_LEVEL_ERROR = re.compile(r"wal_level|WAL level", re.IGNORECASE)
LOCK_SQL = "SELECT pg_try_advisory_lock(21320, hashtext(current_database()))"
LOCK_HOLDER_SQL = """
SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.classid = 21320 AND l.objid = hashtext(current_database())::oid
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND l.granted
"""

Q_ROLES = """
SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls
FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY rolname
"""
Q_MEMBERS = """
SELECT r.rolname, m.rolname FROM pg_auth_members am JOIN pg_roles r ON r.oid = am.roleid
JOIN pg_roles m ON m.oid = am.member WHERE r.rolname !~ '^pg_' OR m.rolname !~ '^pg_'
"""
Q_DATABASE = """
SELECT current_database(), pg_encoding_to_char(encoding), datcollate, datctype, pg_get_userbyid(datdba), current_user
FROM pg_database WHERE datname = current_database()
"""


class PostgresTarget:
    kind = "postgres"

    def __init__(self, name: str, spec: Mapping[str, Any], settings: Any) -> None:
        self.name = name
        self.progress: Callable[[str], None] | None = None  # nothing here takes long enough to report on
        self.spec = dict(spec)
        self.dsn = str(spec["dsn"])
        self.settings = settings
        self._params = dsnlib.parse(self.dsn)
        self._rehearsal: PgShadow | None = None  # the shadow of the apply under way: its pristine copy counts rows
        self._keep: float | None = None  # policy.warm: keep this run's shadow server warm that long after use
        self._warm_key = ""
        self._lease: warm.Lease | None = None  # leased by warm_checkpoint, for shadow() to clone from
        self._leased: warm.Lease | None = None  # the lease the open shadow clones from
        self._ahead: _Ahead | None = None  # a server started while the checkpoint is taken (shadow_server_ahead)
        self._ahead_wanted: tuple[str, str, Any] | None = None  # (run id, backend, limits) of that server

    # -- connection ---------------------------------------------------------------------------------------
    def describe(self) -> str:
        return dsnlib.redact(self.dsn)

    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        try:
            conn = psycopg.connect(self.dsn, autocommit=autocommit,
                                   connect_timeout=int(self._params.get("connect_timeout", 10)))
            read_text_as_str(conn)  # SQL_ASCII: txid_status, lock holders … as str, never b'…'
            return conn
        except psycopg.OperationalError as exc:
            reason = dsnlib.connect_error(exc, self._params.get("password"))
            raise TargetUnreachable(f"cannot connect to {self.describe()}: {reason}", target=self.name) from exc

    def secrets(self) -> tuple[str, ...]:
        password = self._params.get("password")
        return (str(password),) if password else ()

    def lock_identity(self) -> str:
        """The database the advisory lock is taken in (whatever user or options the DSN names)."""
        p = self._params
        return f"postgres://{p.get('host') or 'localhost'}:{p.get('port') or 5432}/{p.get('dbname') or ''}"

    @contextmanager
    def lock(self, holder: str, timeout: float, wait: Callable[[str], None]) -> Iterator[None]:
        """A session advisory lock on production's database, held on a connection of its own: two shadow runs
        on two machines that share the database exclude each other. The server drops it if this process dies."""
        conn = self.connect()
        try:
            conn.execute("SELECT set_config('application_name', %s, false)", [f"shadow lock: {holder}"[:63]])
            if conn.info.server_version >= 140000:  # an idle session must not be ended while it holds the lock
                conn.execute("SET idle_session_timeout = 0")
            deadline, told = time.monotonic() + timeout, False
            while not conn.execute(LOCK_SQL).fetchone()[0]:  # type: ignore[index]
                row = conn.execute(LOCK_HOLDER_SQL).fetchone()
                owner = row[0] if row and row[0] else "another session"
                if time.monotonic() >= deadline:
                    from shadow.locks import LockTimeout

                    raise LockTimeout(f"{owner} holds shadow's advisory lock on {self.describe()} (waited "
                                      f"{timeout:g} s; raise --lock-timeout to wait longer)", target=self.name)
                if not told:
                    wait(f"waiting up to {timeout:g} s for {owner} (advisory lock on the database)")
                    told = True
                time.sleep(0.25)
            yield
        finally:
            conn.close()

    def endpoint(self) -> Endpoint:
        env, exclusive = endpoint_env(self.name, self.dsn)
        return Endpoint(env=env, exclusive_env=exclusive, dsn=self.dsn, secrets=self.secrets())

    def binaries(self, server_major: int) -> ClientTools:
        """Client tools at least as new as production: local ones, else the same tools in a container of the
        matching image when a Docker engine answers (PostgreSQL 17 in production, 15 on the laptop)."""
        try:
            return binaries_for(server_major, configured_bindir(self.settings))
        except BinaryNotFound as exc:
            if configured_bindir(self.settings) or not engine_answers()[0]:
                raise
            return ContainerTools(self.image_for(server_major), server_major)

    # -- observe / fingerprint ----------------------------------------------------------------------------
    def observe(self) -> dict[str, Any]:
        with self.connect() as conn:
            return self._observe(conn)

    def _observe(self, conn: psycopg.Connection, snapshot: str | None = None,
                 hashed: Hashed | None = None) -> dict[str, Any]:
        """Production's observation on ``conn``; without ``snapshot`` or ``hashed``, a table whose hash the last
        checkpoint kept and whose rows provably did not change since is not hashed again
        (:mod:`adapters.postgres.hashcache`) — drift checks and verifications cost a scan, not a hash, of what
        did not move."""
        try:
            if snapshot is None and hashed is None:
                cache = self._hash_cache()
                cache.identify(conn)
                observation = observe(conn, hashed=cache.hashed(conn))
                cache.fill(observation)
                return observation
            return observe(conn, snapshot=snapshot, hashed=hashed)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise InfrastructureError(
                f"the connecting role cannot read everything shadow observes: {exc.diag.message_primary} "
                "(it needs SELECT on every table and sequence, and must not be filtered by row-level security)",
                target=self.name,
            ) from exc
        except psycopg.Error as exc:
            raise InfrastructureError(f"observing production failed: {exc.diag.message_primary or exc}",
                                      target=self.name) from exc

    def _hash_cache(self) -> HashCache:
        """The content hashes kept for this production by its last checkpoint (read afresh: another run may have
        checkpointed since)."""
        return HashCache(self.settings.state_dir / "hashes", self.describe())

    def fingerprint(self, observation: dict[str, Any] | None = None) -> str:
        return fingerprint_of(observation if observation is not None else self.observe())

    @like_checkpoint
    def at_checkpoint(self, checkpoint: Checkpoint, store: Store) -> bool:
        """Whether production fingerprints as ``checkpoint`` (observed with its row hash)."""
        return self.fingerprint() == checkpoint.fingerprint

    # -- checkpoint -----------------------------------------------------------------------------------------
    def checkpoint(self, store: Store, run_id: str) -> Checkpoint:
        """Dump and observe production from one exported snapshot, so the fingerprint describes the dump."""
        try:
            return self._checkpoint(store, run_id)
        except psycopg.OperationalError as exc:
            raise TargetUnreachable(f"lost production during the checkpoint: {last_line(exc)}",
                                    target=self.name) from exc
        except psycopg.Error as exc:
            raise InfrastructureError(f"the checkpoint failed: {last_line(exc)}", target=self.name) from exc

    def _checkpoint(self, store: Store, run_id: str) -> Checkpoint:
        with self.connect(autocommit=False) as holder:
            read_text_as_str(holder)  # SQL_ASCII: the snapshot id and the names below would come back as bytes
            holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            # This connection holds the exported snapshot while pg_dump runs: production's own idle/statement
            # timeouts must not end it half way.
            holder.execute("SET idle_in_transaction_session_timeout = 0")
            holder.execute("SET statement_timeout = 0")
            row = holder.execute("SELECT pg_export_snapshot(), txid_current_snapshot()::text").fetchone()
            assert row is not None
            snapshot, txids = str(row[0]), str(row[1])
            major = int(holder.info.server_version) // 10000
            self._start_ahead(major)
            binaries = self.binaries(major)
            db = holder.execute(Q_DATABASE).fetchone()
            assert db is not None
            roles = [list(r) for r in holder.execute(Q_ROLES)]
            members = [list(r) for r in holder.execute(Q_MEMBERS)]
            settings = dbsettings.read(holder, str(db[0]))
            # pg_dump and the observation run at once, both from the snapshot this connection holds open. The
            # hashing is not split over a second connection of the snapshot: on 2 cores, beside pg_dump and its
            # backend, that measured slower (1.8x pg_dump's time instead of 1.6x at 1.5M rows), and a big table's
            # hash already gets parallel workers. The checkpoint is CPU-bound: row hashing costs about as much CPU
            # as pg_dump's COPY and compression together, so at once they take ~1.6-1.9x pg_dump alone, not 1.2x.
            with store.new_artifact() as slot:
                cache = self._hash_cache()
                cache.identify(holder)
                with pg_dump_started(binaries, self.dsn, slot.path, snapshot) as dump:
                    observation = self._observe_beside(dump, snapshot, cache)
                    dump.wait()
                cache.fill(observation)
                _as_dumped(observation, dumped_sequences(binaries, slot.path, run_id))
            holder.rollback()
        assert slot.artifact is not None
        cache.keep(observation, txids)
        return Checkpoint(
            target=self.name, kind=self.kind, run_id=run_id, observation=observation,
            fingerprint=fingerprint_of(observation),
            artifacts={"dump": {"sha256": slot.artifact.sha256, "size": slot.artifact.size, "format": "pg_dump custom"}},
            meta={
                "server_version_num": observation["server"]["version_num"], "major": major,
                "database": db[0], "encoding": db[1], "collate": db[2], "ctype": db[3],
                "database_owner": db[4], "user": db[5],
                "roles": roles, "members": members, "settings": settings, "endpoint": self.describe(),
                # tables whose content hash an earlier checkpoint's vouched for (adapters.postgres.hashcache)
                "hashes": {"reused": len(cache.reused), "hashed": len(observation["data"]) - len(cache.reused)},
                # What static analysis cannot see in the SQL (shadow.lint's `partitioned=`).
                "lint_facts": {"partitioned": sorted(name for name, t in observation["objects"]["table"].items()
                                                     if t.get("table_kind") == "partitioned table")},
            },
        )

    def _observe_beside(self, dump: Dump, snapshot: str, cache: HashCache) -> dict[str, Any]:
        """Observe from ``snapshot`` while ``dump`` runs, hashing only the tables whose hash ``cache`` cannot vouch
        for. A dump that fails first cancels the observation, and its error is the one raised; an observation that
        fails first ends the dump (the caller's ``with``)."""
        with self.connect() as conn:
            done, cancelled = threading.Event(), threading.Event()
            watcher = threading.Thread(target=_cancel_when_failed, args=(dump, [conn], done, cancelled),
                                       name="shadow-checkpoint-watcher", daemon=True)
            watcher.start()
            try:
                return self._observe(conn, snapshot, hashed=cache.hashed(conn))
            except (ShadowError, psycopg.Error):
                done.set()
                watcher.join()
                if cancelled.is_set():
                    dump.wait()  # raises pg_dump's own error
                raise
            finally:
                done.set()
                watcher.join()

    # -- shadow ---------------------------------------------------------------------------------------------
    @contextmanager
    def shadow(self, checkpoint: Checkpoint, store: Store, run_id: str, backend: str,
               limits: Any = None) -> Iterator[PgShadow]:
        """A shadow of ``checkpoint``: a clone in the warm server leased by :meth:`warm_checkpoint`, else restored
        into a new server — kept warm afterwards when :meth:`warm_checkpoint` asked for it."""
        lease, self._lease = self._lease, None
        if lease is not None and lease.entry.checkpoint.get("fingerprint") == checkpoint.fingerprint:
            with self._warm_shadow(lease, checkpoint, store, backend) as shadow:
                yield shadow
            return
        if lease is not None:
            lease.release()
        archive = store.open_verified(_artifact(checkpoint))
        major = int(checkpoint.meta["major"])
        tools = self.binaries(major)
        ahead, self._ahead = self._ahead, None
        server = ahead.server if ahead is not None and ahead.fits(run_id, backend, major) else \
            self._new_server(run_id, backend, major, limits)
        kept = False  # once kept warm, the server belongs to its entry: not stopped here
        try:
            if ahead is not None and server is ahead.server:
                ahead.ready()  # raises what starting it raised
            else:
                if ahead is not None:
                    ahead.discard()
                server.start()
            # A copy kept warm needs its twin (the golden to be) from the start; any other reads the shadow itself
            # as the action found it (adapters.postgres.held).
            shadow = PgShadow(self.name, server, tools, checkpoint, archive, backend, twin=bool(self._keep))
            before = warm.server_state(server, shadow.database).replace("absent", "closed") if self._keep else ""
            try:
                yield shadow
            finally:
                shadow.settled()
            kept = self._keep_warm(server, shadow, run_id, backend, major, before)
        finally:
            if not kept:
                server.stop()

    def _new_server(self, run_id: str, backend: str, major: int, limits: Any) -> Server:
        """A shadow's server, not started: a container of the configured image, or a local cluster."""
        entry = str(self._warm_dir / f"{self._warm_key}.json") if self._keep else None
        if backend == "docker":
            return ContainerServer(run_id, self.image_for(major), major, Limits(
                getattr(limits, "memory", None), getattr(limits, "cpus", None), getattr(limits, "pids", None)),
                warm=entry, shadow=True)
        return LocalCluster(label=run_id, binaries=binaries_for(major, configured_bindir(self.settings)),
                            warm=entry, shadow=True)

    @contextmanager
    def shadow_server_ahead(self, run_id: str, backend: str, limits: Any = None) -> Iterator[None]:
        """Start the next shadow's server in a thread while the checkpoint is taken (a container took 1.5 s to
        come up at 1 GB, a local cluster 0.5 s, on top of a 2.5 s checkpoint): the checkpoint starts it once its
        first connection has told production's major version (no connection of its own, so an unreachable
        production is waited for once). Stopped on leaving unless :meth:`shadow` took it."""
        self._ahead_wanted = (run_id, backend, limits)
        try:
            yield
        finally:
            self._ahead_wanted = None
            ahead, self._ahead = self._ahead, None
            if ahead is not None and not ahead.taken:
                ahead.discard()

    def _start_ahead(self, major: int) -> None:
        """Called by the checkpoint: the server :meth:`shadow_server_ahead` asked for, starting."""
        if self._ahead_wanted is None or self._ahead is not None:
            return
        (run_id, backend, limits), self._ahead_wanted = self._ahead_wanted, None  # one server, for the first
        try:
            server = self._new_server(run_id, backend, major, limits)
        except ShadowError:
            return  # shadow() meets the same problem and says it
        self._ahead = _Ahead(run_id, backend, major, server)

    @contextmanager
    def _warm_shadow(self, lease: warm.Lease, checkpoint: Checkpoint, store: Store,
                     backend: str) -> Iterator[PgShadow]:
        """A clone of the golden database in a leased warm server; the clones are dropped at the end, and the
        entry kept for the next run unless :meth:`moved_since` found it stale or the server was lost."""
        shadow: PgShadow | None = None
        self._leased = lease
        try:
            archive = store.object_path(_artifact(checkpoint).sha256)  # verified when it was restored
            shadow = PgShadow(self.name, lease.entry.server(), self.binaries(lease.entry.major), checkpoint,
                              archive, backend, golden=lease.entry.golden)
            shadow.warnings += lease.entry.warnings
            yield shadow
        finally:
            self._leased = None
            if shadow is not None:
                shadow.settled()
            lease.release(lost=shadow.lost() if shadow is not None else None)

    def _keep_warm(self, server: Server, shadow: PgShadow, run_id: str, backend: str, major: int,
                   before: str) -> bool:
        """Keep a cold run's server as the warm copy of its checkpoint (:func:`warm.make_golden`); False when the
        copy is not faithful, the server is lost, the action changed the server's global state (``before``: as
        it was before the action), or warm copies were not asked for."""
        if not self._keep or shadow.lost() or shadow.fidelity:
            return False
        try:
            warm.make_golden(server, shadow.database, shadow.pristine)
            state = warm.server_state(server, shadow.database)
        except psycopg.Error:
            return False
        if state != before:
            return False
        now = time.time()
        entry = warm.Entry(
            key=self._warm_key, run=run_id, backend=backend, major=major,
            host=str(getattr(server, "host", "127.0.0.1")), port=server.port, password=server.password,
            database=shadow.database, checkpoint=shadow.checkpoint.to_dict(), state=state, keep=self._keep,
            used=now, created=now, root=str(server.root) if isinstance(server, LocalCluster) else None,
            container=server.container_id if isinstance(server, ContainerServer) else None,
            warnings=list(shadow.warnings))
        return warm.keep(self._warm_dir, entry, self.settings.warm_max)

    # -- warm checkpoints (adapters.postgres.warm) ---------------------------------------------------------------
    @property
    def _warm_dir(self) -> Path:
        return warm.entries_dir(self.settings)

    def warm_checkpoint(self, store: Store, backend: str, keep: float,
                        limits: Any = None) -> tuple[Checkpoint | None, str]:
        """The checkpoint a warm server of this production holds, leased to this run until its shadow is torn
        down — or (None, why not); either way this run's shadow is kept warm ``keep`` seconds after its last use."""
        self._keep = keep
        with self.connect() as conn:
            major = int(conn.info.server_version) // 10000
        image = self.image_for(major) if backend == "docker" else None
        self._warm_key = warm.key_of(self.describe(), backend, major, image)
        lease, why = warm.lease(self._warm_dir, self._warm_key)
        if lease is None:
            return None, why
        checkpoint = Checkpoint.from_dict(lease.entry.checkpoint)
        artifact = _artifact(checkpoint)
        path = store.object_path(artifact.sha256)
        if not path.exists() or path.stat().st_size != artifact.size:
            lease.stale = "its checkpoint's archive is no longer in the store"
            lease.release()
            return None, lease.stale
        self._lease = lease
        age = time.time() - lease.entry.created
        return checkpoint, f"the warm copy of run {checkpoint.run_id}'s checkpoint ({_age(age)} old)"

    @like_checkpoint
    def moved_since(self, checkpoint: Checkpoint, shadow: Any) -> tuple[list[Change], list[Change]]:
        """Production against the warm ``checkpoint`` in what the rehearsal read or wrote: every definition and
        sequence, the rows of the tables of the shadow's footprint (all tables when it is unknown); the others'
        rows are taken as the checkpoint has them — what they hold cannot change the action's outcome."""
        assert isinstance(shadow, PgShadow)
        tables = shadow.footprint_tables
        with self.connect() as conn:
            now = self._observe(conn, hashed=None if tables is None else lambda table, _: table in tables)
        kept = checkpoint.observation["data"]
        for table, data in now["data"].items():
            was = kept.get(table)
            if data["rows"] is None and was and (was.get("columns"), was.get("key")) == (data["columns"], data["key"]):
                now["data"][table] = was
        changes = uncounted(checkpoint.observation, now)
        independent = shadow.independent(changes)
        depends = [c for c in changes if c not in independent]
        if depends and self._leased is not None:
            self._leased.stale = "production changed what the action reads or writes"
        return independent, depends

    def image_for(self, major: int) -> str:
        """The shadow image: the target's ``image:``, else SHADOW_POSTGRES_IMAGE, else ``postgres:<major>``."""
        template = str(self.spec.get("image") or self.settings.image_for(self.kind, DEFAULT_IMAGE))
        return template.replace("{major}", str(major))

    # -- production ---------------------------------------------------------------------------------------
    def execute_sql(self, endpoint: Endpoint, statements: list[Statement], timeout: float,
                    trace: list[dict[str, Any]] | None = None, tag: str = "", lock_timeout: float | None = None,
                    lock_retries: int = 0, waited: Callable[[str], None] | None = None) -> str:
        assert endpoint.dsn is not None
        try:
            return execute(endpoint.dsn, statements, timeout, self.name, trace, tag, lock_timeout, lock_retries,
                           waited)
        except SqlError as exc:
            if endpoint.dsn != self.dsn and WAL_LEVEL_ERROR.search(str(exc)):  # in the shadow (SHADOW_SETTINGS)
                exc.args = (f"{exc.args[0]} — {MINIMAL_WAL_MISSES}",)
            raise

    def end_sessions(self, tag: str) -> int:
        """End production's sessions named ``tag`` (a killed run's) and wait until they are gone."""
        with self.connect() as conn:
            return end_sessions(conn, tag)

    def atomic_blocker(self, statements: list[Statement]) -> Statement | None:
        """The first statement that cannot run inside a transaction, or None when all can."""
        return next((st for st in statements if forces_autocommit(st)), None)

    @like_checkpoint
    def apply_sql_verified(self, statements: list[Statement], timeout: float, checkpoint: Checkpoint, shadow: Any,
                           judge: Callable[[list[Change]], list[str]],
                           on_begin: Callable[[int], None] | None = None, tag: str = "",
                           lock_timeout: float = 5.0, lock_retries: int = 3,
                           waited: Callable[[str], None] | None = None,
                           keep: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[str], list[Change]]:
        """Apply in one REPEATABLE READ transaction, observe production *inside* it before and after the
        statements, and COMMIT only when ``judge`` finds the statements' own change set equal to the rehearsal's;
        otherwise ROLLBACK, which costs nothing (:mod:`adapters.postgres.own_effect`)."""
        seen: list[Change] = []
        tables = {c.name for c in shadow.rehearsed if c.kind == "rows"}

        def prepare(conn: psycopg.Connection) -> own_effect.Before:
            return own_effect.prepare(conn, checkpoint.observation, tables, self._observe)

        def verify(conn: psycopg.Connection, before: own_effect.Before) -> list[str]:
            after = self._observe(conn)
            own_effect.others_positions(before.observation, after, shadow.rehearsed)
            with shadow.connect_pristine() as pristine:
                read_text_as_str(pristine)
                rows, uncounted = own_effect.rows_changed(conn, pristine, checkpoint.observation, before, after)
                seen[:] = diff(before.observation, after, rows) + uncounted
                own_effect.mark_moved(seen, before)
                problems = judge(seen)
                if not problems and keep is not None:  # still inside the transaction: kept before COMMIT
                    keep(undo.capture(conn, own_effect.rows_before(conn, pristine, before), before.observation,
                                      after, rows, seen, checkpoint.observation))
            return problems

        problems = execute_verified(self.dsn, statements, timeout, self.name, verify, on_begin, tag, prepare,
                                    lock_timeout, lock_retries, waited)
        return problems, seen

    # -- an apply not in one transaction (adapters.postgres.stepwise) --------------------------------------------
    @like_checkpoint
    def before_action(self, checkpoint: Checkpoint, shadow: Any) -> dict[str, Any]:
        """Production's tables just before an apply that cannot run in one transaction, and the rehearsal's
        footprint. Refused when undoing the rehearsed change would take the whole checkpoint and production
        moved since it: that restore would lose those writes (nothing was applied)."""
        assert isinstance(shadow, PgShadow)
        now = self.observe()
        before = stepwise.before_action(now, shadow)
        if before["fallback"] and fingerprint_of(now) != checkpoint.fingerprint:
            raise ShadowError(f"refused before applying anything: production changed since the checkpoint, and "
                              f"undoing this apply (which cannot run in one transaction) would mean restoring the "
                              f"whole checkpoint, which would lose those writes ({before['fallback']}); run shadow "
                              "again to rehearse against the current state", target=self.name)
        self._rehearsal = shadow
        return before

    @like_checkpoint
    def own_effect(self, before: dict[str, Any], checkpoint: Checkpoint,
                   strict: bool) -> tuple[list[Change], list[Change], dict[str, Any]]:
        """After an apply not in one transaction: (the action's own change set since the checkpoint — rows
        counted against the rehearsal's pristine copy while it is there —, other writers' changes during the
        apply, the undo record)."""
        try:
            now = self.observe()
            changes = self._changes(checkpoint, now, self._rehearsal)
            ours, theirs = stepwise.split(changes, before, now, strict)
            with self.connect() as conn:
                record = stepwise.record_of(conn, ours, before, now, checkpoint.observation)
        except psycopg.OperationalError as exc:
            raise TargetUnreachable(f"lost production while reading the apply's effect: {last_line(exc)}",
                                    target=self.name) from exc
        except psycopg.Error as exc:
            raise InfrastructureError(f"reading the apply's effect failed: {last_line(exc)}",
                                      target=self.name) from exc
        return ours, theirs, record

    @like_checkpoint
    def undo(self, record: dict[str, Any], checkpoint: Checkpoint, force: bool) -> tuple[list[str], list[str], list[str]]:
        """Undo one run's own change (:mod:`adapters.postgres.undo`); a table it puts back whole from the
        checkpoint (:mod:`adapters.postgres.undo_tables`) is read from the checkpoint's archive (in the store the
        settings name, the one the run's session uses) first, before the undo's transaction begins.

        A ``pending`` record (kept before the action of an apply not in one transaction that failed or was killed
        before its effect was read) is completed first; one whose change no record can undo restores the whole
        checkpoint, as an apply without a record would."""
        store = open_store(self.settings)
        if "pending" in record:
            record = self.own_effect(record["pending"], checkpoint, bool(record.get("strict")))[2]
            if record.get("fallback"):
                self.restore(checkpoint, store)
                return [], [f"restored the whole checkpoint: {record['fallback']}"], self.verify_restored(checkpoint)
        began = store.read_undone(checkpoint.run_id, self.name) if record.get("multisets") else None
        if began is not None and self.transaction_outcome(began) == "committed":
            # Rows matched by value (adapters.postgres.undo_multiset) must not be taken out twice: an undo of this
            # run committed already (a killed rollback's recover, or a second rollback), so nothing is done again.
            return [], [f"already undone by transaction {began}, which committed"], []
        oids = undo_tables.archive_oids(record)
        try:
            with tempdirs.tempdir("restore", checkpoint.run_id) as folder:
                files = {}
                if oids:
                    try:
                        archive = store.open_verified(_artifact(checkpoint))
                    except SnapshotCorrupt as exc:
                        return [], [], [f"{', '.join(record['restore_tables'])} would be put back from the checkpoint, "
                                        f"but its archive is unusable: {exc}"]
                    files = table_data_files(self.binaries(int(checkpoint.meta["major"])), archive, oids, folder)
                with self.connect() as conn:
                    read_text_as_str(conn)
                    # Kept before it commits, where an undo must never run twice (rows matched by value).
                    keep = ((lambda xid: store.write_undone(checkpoint.run_id, self.name, xid))
                            if record.get("multisets") else None)
                    return undo.undo(conn, record, force, files=files, on_begin=keep)
        except psycopg.OperationalError as exc:
            raise TargetUnreachable(f"lost production during the undo: {last_line(exc)}", target=self.name) from exc
        except psycopg.Error as exc:
            raise RestoreFailed(f"the undo failed and was rolled back: {last_line(exc)}", target=self.name) from exc

    def transaction_outcome(self, xid: int, wait: float = 30.0) -> str:
        """Whether transaction ``xid`` committed ("committed" | "aborted" | "unknown"). One still open belongs to a killed
        shadow (nobody can send its COMMIT any more): its backend is ended first, which aborts it."""
        with self.connect() as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE backend_xid IS NOT NULL AND backend_xid::text::bigint = %s", [xid % 2**32])
            deadline = time.monotonic() + wait
            while True:
                row = conn.execute("SELECT txid_status(%s)", [xid]).fetchone()
                status = row[0] if row else None
                if status != "in progress" or time.monotonic() > deadline:
                    return str(status or "unknown")
                time.sleep(0.2)

    @like_checkpoint
    def changes_since(self, checkpoint: Checkpoint, shadow: Any | None) -> list[Change]:
        return self._changes(checkpoint, self.observe(), shadow)

    def _changes(self, checkpoint: Checkpoint, after: dict[str, Any], shadow: Any | None) -> list[Change]:
        rows: dict[str, RowDelta] = {}
        if shadow is not None:
            with self.connect() as prod, shadow.connect_pristine() as pristine:
                rows = count_changed_rows(pristine, prod, checkpoint.observation, after)
            return diff(checkpoint.observation, after, rows)
        return uncounted(checkpoint.observation, after)

    @like_checkpoint
    def restore(self, checkpoint: Checkpoint, store: Store) -> None:
        archive = store.open_verified(_artifact(checkpoint))
        restore_over(self.binaries(int(checkpoint.meta["major"])), self.dsn, archive,
                     observation=checkpoint.observation, run_id=checkpoint.run_id)
        with self.connect() as conn:
            settle_settings(conn, str(checkpoint.meta["database"]), checkpoint)

    @like_checkpoint
    def verify_restored(self, checkpoint: Checkpoint) -> list[str]:
        """Differences between production now and the checkpoint; empty when the restore is exact."""
        now = self.observe()
        if fingerprint_of(now) == checkpoint.fingerprint:
            return []
        return how_they_differ(checkpoint.observation, now)


class _Ahead:
    """A shadow's server starting in a thread (:meth:`PostgresTarget.shadow_server_ahead`)."""

    def __init__(self, run_id: str, backend: str, major: int, server: Server) -> None:
        self.run_id, self.backend, self.major, self.server = run_id, backend, major, server
        self.taken = False  # a shadow took the server: it stops it
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name=f"shadow-server-ahead-{run_id}", daemon=True)
        self._thread.start()

    def _start(self) -> None:
        try:
            self.server.start()
        except BaseException as exc:  # noqa: BLE001 - raised again by ready(), in the caller's thread
            self._error = exc

    def fits(self, run_id: str, backend: str, major: int) -> bool:
        return (run_id, backend, major) == (self.run_id, self.backend, self.major)

    def ready(self) -> None:
        """Wait for the server; from now on the caller owns it (and stops it, also when starting failed)."""
        self.taken = True
        self._thread.join()
        if self._error is not None:
            raise self._error

    def discard(self) -> None:
        self._thread.join()
        self.server.stop()


def _age(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _as_dumped(observation: dict[str, Any], dumped: Mapping[str, tuple[int, bool]]) -> None:
    """Sequences as the dump recorded them (read at pg_dump's moment, not in the snapshot: production's
    application may have taken values in between), so that the checkpoint says what a restore puts back."""
    for name, seq in observation["objects"]["sequence"].items():
        if name in dumped:
            seq["last_value"], seq["is_called"] = dumped[name]


def _cancel_when_failed(dump: Dump, conns: list[psycopg.Connection], done: threading.Event,
                        cancelled: threading.Event) -> None:
    """Until ``done``: when ``dump`` has failed, cancel what ``conns`` run (the checkpoint cannot succeed)."""
    while not done.wait(0.05):
        if dump.failed():
            cancelled.set()
            for conn in conns:
                try:
                    conn.cancel_safe(timeout=10)
                except psycopg.Error:
                    pass  # the observation then ends on its own; the dump's error is raised all the same
            return


def _artifact(checkpoint: Checkpoint) -> Artifact:
    dump = checkpoint.artifacts["dump"]
    return Artifact(dump["sha256"], int(dump["size"]))


