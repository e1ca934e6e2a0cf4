"""The PostgreSQL target: checkpoint with ``pg_dump``, shadow in a throwaway server, observe, restore."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from adapters import Checkpoint, Endpoint, env_name, fingerprint_of, nothing_kept, paths_as_given
from adapters.postgres import dsn as dsnlib
from adapters.docker import engine_answers, join_network
from adapters.postgres.binaries import ClientTools, ContainerTools, binaries_for
from adapters.postgres.container import DEFAULT_IMAGE, ContainerServer, Limits
from adapters.postgres.cluster import LocalCluster, stop_servers_in
from adapters.postgres.server import SUPERUSER, Server
from adapters.postgres.diff import count_rows, diff
from adapters.postgres.execute import end_sessions, execute, execute_verified
from adapters.postgres import footprint, own_effect
from adapters.postgres.observe import observe, read_text_as_str
from adapters.postgres import dbsettings
from adapters.postgres.restore import dumped_sequences, restore_into_empty, restore_over, run_pg_dump
from shadow.changes import Change, RowDelta, differences
from shadow.errors import BadInput, BinaryNotFound, CheckQueryFailed, InfrastructureError, RestoreFailed, TargetUnreachable
from shadow.sqlsplit import Statement, forces_autocommit
from snapshots import Artifact, Store

PRISTINE_SUFFIX = "__shadow_pristine"
# Advisory lock key: a class id of shadow's own ("SH") and the database's name hashed.
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


def endpoint_env(name: str, dsn: str) -> tuple[dict[str, str], dict[str, str]]:
    """(variables every action gets, variables it gets when this is the plan's only postgres target)."""
    url = dsnlib.to_url(dsnlib.parse(dsn))
    return {f"SHADOW_{env_name(name)}_URL": url}, {"DATABASE_URL": url, **dsnlib.pg_env(dsn)}


class PostgresTarget:
    kind = "postgres"

    def __init__(self, name: str, spec: Mapping[str, Any], settings: Any) -> None:
        self.name = name
        self.progress: Callable[[str], None] | None = None  # nothing here takes long enough to report on
        self.spec = dict(spec)
        self.dsn = str(spec["dsn"])
        self.settings = settings
        self._params = dsnlib.parse(self.dsn)

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
            return binaries_for(server_major, self.settings.pg_bindir)
        except BinaryNotFound as exc:
            if self.settings.pg_bindir or not engine_answers()[0]:
                raise
            return ContainerTools(self.image_for(server_major), server_major)

    # -- observe / fingerprint ----------------------------------------------------------------------------
    def observe(self) -> dict[str, Any]:
        with self.connect() as conn:
            return self._observe(conn)

    def _observe(self, conn: psycopg.Connection, snapshot: str | None = None) -> dict[str, Any]:
        try:
            return observe(conn, snapshot=snapshot)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise InfrastructureError(
                f"the connecting role cannot read everything shadow observes: {exc.diag.message_primary} "
                "(it needs SELECT on every table and sequence, and must not be filtered by row-level security)",
                target=self.name,
            ) from exc
        except psycopg.Error as exc:
            raise InfrastructureError(f"observing production failed: {exc.diag.message_primary or exc}",
                                      target=self.name) from exc

    def fingerprint(self, observation: dict[str, Any] | None = None) -> str:
        return fingerprint_of(observation if observation is not None else self.observe())

    # -- checkpoint -----------------------------------------------------------------------------------------
    def checkpoint(self, store: Store, run_id: str) -> Checkpoint:
        """Dump and observe production from one exported snapshot, so the fingerprint describes the dump."""
        try:
            return self._checkpoint(store, run_id)
        except psycopg.OperationalError as exc:
            raise TargetUnreachable(f"lost production during the checkpoint: {_last_line(exc)}",
                                    target=self.name) from exc
        except psycopg.Error as exc:
            raise InfrastructureError(f"the checkpoint failed: {_last_line(exc)}", target=self.name) from exc

    def _checkpoint(self, store: Store, run_id: str) -> Checkpoint:
        with self.connect(autocommit=False) as holder:
            read_text_as_str(holder)  # SQL_ASCII: the snapshot id and the names below would come back as bytes
            holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            # This connection holds the exported snapshot while pg_dump runs: production's own idle/statement
            # timeouts must not end it half way.
            holder.execute("SET idle_in_transaction_session_timeout = 0")
            holder.execute("SET statement_timeout = 0")
            row = holder.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            snapshot = str(row[0])
            major = int(holder.info.server_version) // 10000
            binaries = self.binaries(major)
            db = holder.execute(Q_DATABASE).fetchone()
            assert db is not None
            roles = [list(r) for r in holder.execute(Q_ROLES)]
            members = [list(r) for r in holder.execute(Q_MEMBERS)]
            settings = dbsettings.read(holder, str(db[0]))
            with self.connect() as conn:
                observation = self._observe(conn, snapshot)
            with store.new_artifact() as slot:
                run_pg_dump(binaries, self.dsn, slot.path, snapshot)
                _as_dumped(observation, dumped_sequences(binaries, slot.path, run_id))
            holder.rollback()
        assert slot.artifact is not None
        return Checkpoint(
            target=self.name, kind=self.kind, run_id=run_id, observation=observation,
            fingerprint=fingerprint_of(observation),
            artifacts={"dump": {"sha256": slot.artifact.sha256, "size": slot.artifact.size, "format": "pg_dump custom"}},
            meta={
                "server_version_num": observation["server"]["version_num"], "major": major,
                "database": db[0], "encoding": db[1], "collate": db[2], "ctype": db[3],
                "database_owner": db[4], "user": db[5],
                "roles": roles, "members": members, "settings": settings, "endpoint": self.describe(),
                # What static analysis cannot see in the SQL (shadow.lint's `partitioned=`).
                "lint_facts": {"partitioned": sorted(name for name, t in observation["objects"]["table"].items()
                                                     if t.get("table_kind") == "partitioned table")},
            },
        )

    # -- shadow ---------------------------------------------------------------------------------------------
    @contextmanager
    def shadow(self, checkpoint: Checkpoint, store: Store, run_id: str, backend: str,
               limits: Any = None) -> Iterator[PgShadow]:
        archive = store.open_verified(_artifact(checkpoint))
        major = int(checkpoint.meta["major"])
        tools = self.binaries(major)
        server: Server
        if backend == "docker":
            server = ContainerServer(run_id, self.image_for(major), major, Limits(
                getattr(limits, "memory", None), getattr(limits, "cpus", None), getattr(limits, "pids", None)))
        else:
            server = LocalCluster(label=run_id, binaries=binaries_for(major, self.settings.pg_bindir))
        with server:
            yield PgShadow(self.name, server, tools, checkpoint, archive, backend)

    def image_for(self, major: int) -> str:
        """The shadow image: the target's ``image:``, else SHADOW_POSTGRES_IMAGE, else ``postgres:<major>``."""
        template = str(self.spec.get("image") or self.settings.image_for(self.kind, DEFAULT_IMAGE))
        return template.replace("{major}", str(major))

    # -- production ---------------------------------------------------------------------------------------
    def execute_sql(self, endpoint: Endpoint, statements: list[Statement], timeout: float,
                    trace: list[dict[str, Any]] | None = None, tag: str = "") -> str:
        assert endpoint.dsn is not None
        return execute(endpoint.dsn, statements, timeout, self.name, trace, tag)

    def end_sessions(self, tag: str) -> int:
        """End production's sessions named ``tag`` (a killed run's) and wait until they are gone."""
        with self.connect() as conn:
            return end_sessions(conn, tag)

    def atomic_blocker(self, statements: list[Statement]) -> Statement | None:
        """The first statement that cannot run inside a transaction, or None when all can."""
        return next((st for st in statements if forces_autocommit(st)), None)

    def apply_sql_verified(self, statements: list[Statement], timeout: float, checkpoint: Checkpoint, shadow: Any,
                           judge: Callable[[list[Change]], list[str]],
                           on_begin: Callable[[int], None] | None = None, tag: str = "",
                           lock_timeout: float = 5.0, lock_retries: int = 3,
                           waited: Callable[[str], None] | None = None) -> tuple[list[str], list[Change]]:
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
            return judge(seen)

        problems = execute_verified(self.dsn, statements, timeout, self.name, verify, on_begin, tag, prepare,
                                    lock_timeout, lock_retries, waited)
        return problems, seen

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

    def changes_since(self, checkpoint: Checkpoint, shadow: Any | None) -> list[Change]:
        after = self.observe()
        rows: dict[str, RowDelta] = {}
        if shadow is not None:
            with self.connect() as prod, shadow.connect_pristine() as pristine:
                rows = _count_changed_rows(pristine, prod, checkpoint.observation, after)
            return diff(checkpoint.observation, after, rows)
        return _uncounted(checkpoint.observation, after)

    def restore(self, checkpoint: Checkpoint, store: Store) -> None:
        archive = store.open_verified(_artifact(checkpoint))
        restore_over(self.binaries(int(checkpoint.meta["major"])), self.dsn, archive,
                     observation=checkpoint.observation, run_id=checkpoint.run_id)
        with self.connect() as conn:
            _settle_settings(conn, str(checkpoint.meta["database"]), checkpoint)

    def verify_restored(self, checkpoint: Checkpoint) -> list[str]:
        """Differences between production now and the checkpoint; empty when the restore is exact."""
        now = self.observe()
        if fingerprint_of(now) == checkpoint.fingerprint:
            return []
        return _how_they_differ(checkpoint.observation, now)


class PgShadow:
    """A restored copy of one checkpoint in a throwaway server, plus a pristine twin for row diffs."""

    def __init__(self, name: str, server: Server, binaries: ClientTools, checkpoint: Checkpoint,
                 archive: Path, backend: str) -> None:
        self.name = name
        self.server = server
        self.backend = backend
        self.checkpoint = checkpoint
        self.database = str(checkpoint.meta["database"])
        self.pristine = self.database[: 63 - len(PRISTINE_SUFFIX)] + PRISTINE_SUFFIX
        self.warnings: list[str] = []
        self.binaries, self.archive = binaries, archive
        self._build(binaries, archive)
        self.dsn = server.dsn(self.database)  # shadow's own superuser: observing, checks
        action_dsn = self._action_dsn()
        env, exclusive = endpoint_env(name, action_dsn)
        self.endpoint = Endpoint(env=env, exclusive_env=exclusive, dsn=action_dsn)
        # Observing the pristine copy (row hashes of every table) is most of shadow's own cost on top of a
        # plain restore; nothing writes to the pristine copy, so it runs while the action does.
        self._counters: footprint.Counters | None = None  # taken by watch(), just before the action
        self._touched: set[str] | None = None  # what the action read or wrote (None: unknown)
        self._rehearsed: list[Change] = []
        self._pristine_result: dict[str, Any] | BaseException | None = None
        self._pristine_thread = threading.Thread(target=self._observe_pristine, name=f"observe-{name}", daemon=True)
        self._pristine_thread.start()

    def _observe_pristine(self) -> None:
        try:
            with self.connect_pristine() as conn:
                self._pristine_result = observe(conn)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the observation
            self._pristine_result = exc

    @property
    def pristine_observation(self) -> dict[str, Any]:
        self._pristine_thread.join()
        if isinstance(self._pristine_result, BaseException):
            raise InfrastructureError(f"observing the shadow's pristine copy failed: {self._pristine_result}",
                                      target=self.name) from self._pristine_result
        assert self._pristine_result is not None
        return self._pristine_result

    @property
    def fidelity(self) -> list[str]:
        """Differences between the restored copy and the checkpoint; a faithful shadow has none."""
        return self._fidelity()

    def _build(self, binaries: ClientTools, archive: Path) -> None:
        meta = self.checkpoint.meta
        with self.server.connect() as conn:
            existing = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
            for name, superuser, inherit, createrole, createdb, _login, replication, bypassrls in meta.get("roles", []):
                if name in existing:
                    continue
                options = [
                    "SUPERUSER" if superuser else "NOSUPERUSER", "INHERIT" if inherit else "NOINHERIT",
                    "CREATEROLE" if createrole else "NOCREATEROLE", "CREATEDB" if createdb else "NOCREATEDB",
                    "REPLICATION" if replication else "NOREPLICATION", "BYPASSRLS" if bypassrls else "NOBYPASSRLS",
                    "NOLOGIN",
                ]
                conn.execute(sql.SQL("CREATE ROLE {} " + " ".join(options)).format(sql.Identifier(name)))
            for role, member in meta.get("members", []):
                try:
                    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(member)))
                except psycopg.Error as exc:
                    self.warnings.append(f"role membership {member} → {role} not copied: {exc.diag.message_primary}")
            if self.database != "postgres":
                self._create_database(conn, meta)
            if meta.get("database_owner"):
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(self.database), sql.Identifier(meta["database_owner"])))
        problems = restore_into_empty(binaries, self.server.dsn(self.database), archive,
                                      observation=self.checkpoint.observation, run_id=self.checkpoint.run_id)
        if problems:
            self.warnings.append("pg_restore reported: " + "; ".join(problems[:5]))
        self._cut_outbound_connections()
        with self.server.connect() as conn:
            # FILE_COPY (15+) copies the files instead of WAL-logging every block: faster for a throwaway twin.
            strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}" + strategy).format(
                sql.Identifier(self.pristine), sql.Identifier(self.database)))
            # Last: a setting such as default_transaction_read_only must not get in the way of building the copy.
            wanted = self.checkpoint.meta.get("settings") or []
            dbsettings.settle(conn, self.database, wanted, every_database=True, shadow=True, own_role=SUPERUSER)
            dbsettings.settle(conn, self.pristine, wanted, every_database=False, shadow=True)

    def _cut_outbound_connections(self) -> None:
        """A shadow must not reach production's neighbours: foreign servers restored from the dump still point
        at real hosts with real credentials. Their user mappings are dropped, so foreign tables fail in the
        rehearsal instead of writing to a real system."""
        with self.server.connect(self.database) as conn:
            mappings = conn.execute(
                "SELECT srvname, CASE WHEN umuser = 0 THEN 'PUBLIC' ELSE quote_ident(usename) END "
                "FROM pg_user_mappings").fetchall()
            for server, user in mappings:
                conn.execute(sql.SQL("DROP USER MAPPING IF EXISTS FOR " + user + " SERVER {}").format(
                    sql.Identifier(server)))
            servers = [r[0] for r in conn.execute("SELECT srvname FROM pg_foreign_server")]
            dblink = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'dblink'").fetchone()
        if servers:
            self.warnings.append(f"foreign servers {', '.join(servers)} are cut off in the shadow (user mappings "
                                 "dropped): an action using their foreign tables fails in the rehearsal")
        if dblink:
            self.warnings.append("dblink is installed: an action can still open connections of its own from the "
                                 "shadow — use the docker backend with `isolation: container` to prevent it")

    def _action_dsn(self) -> str:
        """The action connects as production's user (same role attributes and grants), so a rehearsal hits the
        same permission errors production would."""
        user = self.checkpoint.meta.get("user")
        if not user or user == SUPERUSER:
            return self.dsn
        password = secrets.token_urlsafe(18)
        with self.server.connect() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), sql.Literal(password)))
        return self.server.dsn(self.database, user=user, password=password)

    def _create_database(self, conn: psycopg.Connection, meta: dict[str, Any]) -> None:
        create = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}")
        try:
            conn.execute(create.format(sql.Identifier(self.database), sql.Literal(meta["encoding"]),
                                       sql.Literal(meta["collate"]), sql.Literal(meta["ctype"])))
        except psycopg.Error:
            self.warnings.append(
                f"locale {meta['collate']!r} is not available here; the shadow uses C.UTF-8 (sorting may differ)"
            )
            conn.execute(create.format(sql.Identifier(self.database), sql.Literal(meta["encoding"]),
                                       sql.Literal("C.UTF-8"), sql.Literal("C.UTF-8")))

    def _fidelity(self) -> list[str]:
        """Differences between the restored copy and the checkpoint; a faithful shadow has none."""
        if fingerprint_of(self.pristine_observation) == self.checkpoint.fingerprint:
            return []
        return _how_they_differ(self.checkpoint.observation, self.pristine_observation)

    def connect(self) -> psycopg.Connection:
        return self._connect(self.dsn)

    def attach(self, network: Any) -> Endpoint:
        """Join the sandbox's internal network under the target's name; the endpoint an isolated action uses."""
        container_id = self.server.container_id if isinstance(self.server, ContainerServer) else None
        alias = join_network(network, container_id, self.name)
        assert self.endpoint.dsn is not None
        params = {**dsnlib.parse(self.endpoint.dsn), "host": alias, "port": 5432}
        env, exclusive = endpoint_env(self.name, make_conninfo(**params))
        return Endpoint(env=env, exclusive_env=exclusive, dsn=make_conninfo(**params))

    def lost(self) -> str | None:
        """Why the shadow's server no longer answers (killed, its container gone), or None while it does."""
        try:
            with psycopg.connect(self.server.dsn(), autocommit=True, connect_timeout=5):
                return None
        except psycopg.OperationalError as exc:
            return dsnlib.connect_error(exc)

    def connect_pristine(self) -> psycopg.Connection:
        return self._connect(self.server.dsn(self.pristine))

    def _connect(self, dsn: str) -> psycopg.Connection:
        try:
            conn = psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise InfrastructureError(f"lost the shadow database ({self.backend} backend): "
                                      f"{dsnlib.connect_error(exc)}", target=self.name) from exc
        read_text_as_str(conn)  # a SQL_ASCII copy's checks and row keys come back as str, as production's do
        return conn

    def observe(self) -> dict[str, Any]:
        with self.connect() as conn:
            return observe(conn)

    def watch(self) -> None:
        with self.connect() as conn:
            self._counters = footprint.counters(conn)

    def changes(self) -> list[Change]:
        if self._counters is not None and self._touched is None:  # read first: observing scans every table
            with self.connect() as conn:
                self._touched = footprint.touched_tables(conn, self._counters)
        after = self.observe()
        with self.connect_pristine() as before_conn, self.connect() as after_conn:
            rows = _count_changed_rows(before_conn, after_conn, self.pristine_observation, after)
        self._rehearsed = diff(self.pristine_observation, after, rows)
        return self._rehearsed

    @property
    def rehearsed(self) -> list[Change]:
        """The change set the rehearsal found (after :meth:`changes`)."""
        return self._rehearsed

    def independent(self, changes: list[Change]) -> list[Change]:
        return footprint.independent(changes, self._touched, self._rehearsed,
                                     self.checkpoint.observation["objects"].get("sequence", {}))

    def rehearse_rollback(self) -> list[str]:
        """Undo the rehearsal exactly as a rollback would undo production (the same restore over the same
        archive), then compare the copy with the checkpoint; empty when the undo is proven."""
        restore_over(self.binaries, self.dsn, self.archive, observation=self.checkpoint.observation,
                     run_id=self.checkpoint.run_id)
        with self.server.connect() as conn:
            _settle_settings(conn, self.database, self.checkpoint, shadow=True)
        now = self.observe()
        if fingerprint_of(now) == self.checkpoint.fingerprint:
            return []
        return _how_they_differ(self.checkpoint.observation, now)

    def check(self, query: str) -> Any:
        with self.connect() as conn:
            try:
                row = conn.execute(query, prepare=False).fetchone()
            except psycopg.Error as exc:
                message = exc.diag.message_primary or _last_line(exc)
                state = exc.sqlstate
                if state and state != "42601" and not state.startswith("08"):  # it ran, and the server refused it
                    raise CheckQueryFailed(f"check query failed on the shadow: {message}",
                                           f"{message} (SQLSTATE {state})", target=self.name) from exc
                raise BadInput(f"check query failed on the shadow: {message}", target=self.name) from exc
        return None if row is None else row[0]


def _settle_settings(conn: psycopg.Connection, database: str, checkpoint: Checkpoint, shadow: bool = False) -> None:
    """Put the database's own settings (ALTER DATABASE / ALTER ROLE … IN DATABASE … SET) back to the checkpoint's;
    pg_dump does not carry them. Checkpoints taken before shadow recorded them are left as they are."""
    if "settings" not in checkpoint.meta:
        return
    try:
        dbsettings.settle(conn, database, checkpoint.meta["settings"], every_database=False, shadow=shadow)
    except psycopg.Error as exc:
        raise RestoreFailed(f"the database's settings could not be put back: {_last_line(exc)}",
                            target=checkpoint.target) from exc


def _as_dumped(observation: dict[str, Any], dumped: Mapping[str, tuple[int, bool]]) -> None:
    """Sequences as the dump recorded them (read at pg_dump's moment, not in the snapshot: production's
    application may have taken values in between), so that the checkpoint says what a restore puts back."""
    for name, seq in observation["objects"]["sequence"].items():
        if name in dumped:
            seq["last_value"], seq["is_called"] = dumped[name]


def _count_changed_rows(before_conn: psycopg.Connection, after_conn: psycopg.Connection,
                        before: dict[str, Any], after: dict[str, Any]) -> dict[str, RowDelta]:
    rows: dict[str, RowDelta] = {}
    for conn in (before_conn, after_conn):  # keys compared across the two must both be str (SQL_ASCII)
        read_text_as_str(conn)
    for table in sorted(set(before["data"]) & set(after["data"])):
        b, a = before["data"][table], after["data"][table]
        if (b["rows"], b["hash"]) != (a["rows"], a["hash"]):
            delta = count_rows(before_conn, after_conn, table, before, after)
            if not delta.empty:
                rows[table] = delta
    return rows


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def _artifact(checkpoint: Checkpoint) -> Artifact:
    dump = checkpoint.artifacts["dump"]
    return Artifact(dump["sha256"], int(dump["size"]))


class PostgresKind:
    name = "postgres"
    keys = ("dsn", "image")
    runs_sql = True
    resolve_paths = staticmethod(paths_as_given)
    # The vocabulary of change addresses: `<op> <kind> <name>`.
    change_ops: tuple[str, ...] = ("add", "drop", "alter", "insert", "update", "delete")
    change_kinds: tuple[str, ...] = ("schema", "table", "column", "index", "constraint", "view", "materialized_view", "function",
                    "procedure", "trigger", "sequence", "type", "extension", "default_privileges", "rule",
                    "statistics", "publication", "event_trigger", "collation", "rows")
    clear_leftovers = staticmethod(stop_servers_in)  # a cluster's server, or one an action started in its HOME
    prune = staticmethod(nothing_kept)  # a checkpoint is a pg_dump archive in the store

    def validate(self, spec: Mapping[str, Any]) -> Iterator[tuple[str | None, str]]:
        for key in spec:
            if key not in self.keys and key != "kind":
                yield key, f"unknown key for a postgres target (expected: {', '.join(self.keys)})"
        if "dsn" not in spec:
            yield None, "a postgres target needs `dsn:` (e.g. dsn: ${APP_DATABASE_URL})"
        elif not isinstance(spec["dsn"], str) or not spec["dsn"].strip():
            yield "dsn", "must be a PostgreSQL connection string or URL"
        else:
            try:
                dsnlib.parse(spec["dsn"])
            except BadInput as exc:
                yield "dsn", str(exc)

    def target(self, name: str, spec: Mapping[str, Any], settings: Any) -> PostgresTarget:
        return PostgresTarget(name, spec, settings)


def _uncounted(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """The change set between two observations with no copy to count rows against: a table whose content changed
    is an ``update rows`` that says only that."""
    changes = diff(before, after, {})
    for table in sorted(set(before["data"]) & set(after["data"])):
        was, now = before["data"][table], after["data"][table]
        if (was["rows"], was["hash"]) != (now["rows"], now["hash"]):
            changes.append(Change("update", "rows", table, {"rows_before": was["rows"], "rows_after": now["rows"],
                                                            "note": "content changed; rows not counted"}))
    return changes


def _how_they_differ(want: dict[str, Any], got: dict[str, Any], limit: int = 20) -> list[str]:
    """How observation ``got`` differs from ``want``, in change addresses (what a restore or a shadow still has to
    undo); the raw observation difference only for what no change address names (a sequence's position …)."""
    lines = [c.summary() for c in _uncounted(want, got)]
    if not lines:
        lines = differences({"objects": want["objects"], "data": want["data"]},
                            {"objects": got["objects"], "data": got["data"]}, limit) or ["fingerprints differ"]
    return lines if len(lines) <= limit else lines[:limit] + [f"… and {len(lines) - limit} more"]
