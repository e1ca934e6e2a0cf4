"""A PostgreSQL shadow: the checkpoint restored into a throwaway server, and its pristine state for row diffs (the
shadow as the action found it, through a held snapshot, or a twin). How its databases are made — created or cloned,
the twin copied, restored again or cloned — is in :mod:`adapters.postgres.shadowcopy_make`."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from adapters import Checkpoint, Endpoint, env_name, fingerprint_of
from adapters.postgres import dsn as dsnlib
from adapters.postgres import capture, footprint
from adapters.docker import join_network
from adapters.postgres.binaries import ClientTools
from adapters.postgres import dbsettings
from adapters.postgres.compare import count_changed_rows, how_they_differ, last_line, settle_settings
from adapters.postgres.diff import diff
from adapters.postgres import held, undo, warm
from adapters.postgres.rowdiff import count_rows
from adapters.postgres.observe import like_checkpoint, observe, read_text_as_str
from adapters.postgres.restore import restore_into_empty, restore_over
from adapters.postgres.server import SUPERUSER, Server
from adapters.postgres.shadowcopy_make import KeptSession, ShadowDatabases, answering
from shadow.changes import Change, RowDelta
from shadow.errors import BadInput, CheckQueryFailed, InfrastructureError

PRISTINE_SUFFIX = "__shadow_pristine"


def pristine_name(database: str) -> str:
    """The pristine twin's name beside a shadow database named ``database``."""
    return database[: 63 - len(PRISTINE_SUFFIX)] + PRISTINE_SUFFIX


def endpoint_env(name: str, dsn: str) -> tuple[dict[str, str], dict[str, str]]:
    """(variables every action gets, variables it gets when this is the plan's only postgres target)."""
    url = dsnlib.to_url(dsnlib.parse(dsn))
    return {f"SHADOW_{env_name(name)}_URL": url}, {"DATABASE_URL": url, **dsnlib.pg_env(dsn)}


class PgShadow(ShadowDatabases):
    """A restored copy of one checkpoint in a throwaway server, plus a pristine twin for row diffs.

    ``golden``: the server is a warm one (:mod:`adapters.postgres.warm`) holding the checkpoint restored and
    verified in that database; the shadow and its twin are clones of it, and the twin's observation is the
    checkpoint's."""

    def __init__(self, name: str, server: Server, binaries: ClientTools, checkpoint: Checkpoint,
                 archive: Path, backend: str, golden: str | None = None, twin: bool = True,
                 admin: psycopg.Connection | None = None) -> None:
        self.name = name
        self.server = server
        self.backend = backend
        self.checkpoint = checkpoint
        self.database = str(checkpoint.meta["database"])
        self.pristine = pristine_name(self.database)
        self.golden = golden
        self.warnings: list[str] = []
        self.binaries, self.archive = binaries, archive
        self._pristine_ready = threading.Event()  # the twin exists
        self._pristine_result: dict[str, Any] | BaseException | None = None
        self._pristine_thread = threading.Thread(target=self._observe_pristine, name=f"pristine-{name}", daemon=True)
        # The pristine state is the shadow itself as the action found it, read through a snapshot held open
        # (adapters.postgres.held) — no second copy — unless ``twin``: a cold shadow kept warm afterwards copies
        # itself into a twin right after the restore (the twin becomes the golden). The twin is made anyway when the
        # action may rewrite a table (watch()), or when the snapshot turns out unable to show the old rows: a clone
        # of the golden (warm), or a second restore (cold). (At 1 GB, cloned beside a warm shadow, the twin made it
        # ready in 1.07 s instead of 0.40 s, and a warm plan took 2.0 s instead of 1.1 s.)
        self._held: held.Held | None = None
        self._admin: psycopg.Connection | None = None  # the clone's session on warm.ADMIN_DB, until watch()
        self._pristine_is_shadow = False  # the shadow was restored to the checkpoint after the action (rehearsal)
        self._twin_up_front = twin and golden is None
        if golden is None:
            self._build(binaries, archive, twin=self._twin_up_front)
            if self._twin_up_front:
                self._pristine_ready.set()
        else:
            self._pristine_result = checkpoint.observation
            self._clone(golden, admin)
        self.dsn = server.dsn(self.database)  # shadow's own superuser: observing, checks
        action_dsn = self._action_dsn()
        env, exclusive = endpoint_env(name, action_dsn)
        self.endpoint = Endpoint(env=env, exclusive_env=exclusive, dsn=action_dsn)
        # Observing the pristine copy (row hashes of every table) is most of shadow's own cost on top of a
        # plain restore; nothing writes to the pristine copy, so it runs while the action does.
        self._mark: capture.Mark | None = None  # taken by watch(), just before the action
        self._session = KeptSession(self.connect)  # shadow's own, from the mark to settled(): one for every step
        self.counted: dict[str, str] = {}  # how changes() read each table (capture.observe_changes)
        self._after: dict[str, Any] | None = None  # the observation changes() made, and its row changes
        self._rows: dict[str, RowDelta] = {}
        self._counters: footprint.Counters | None = None
        self._touched: set[str] | None = None  # what the action read or wrote (None: unknown)
        self._rehearsed: list[Change] = []
        if self._twin_up_front:  # nothing writes to the pristine copy: it is observed while the action runs
            self._pristine_thread.start()
        elif golden is None:  # the shadow is its own pristine copy until the action runs: observed now
            self._observe_pristine(self.connect)

    @like_checkpoint
    def _observe_pristine(self, connect: Callable[[], psycopg.Connection] | None = None) -> None:
        """The pristine state's observation, through ``connect`` (the twin's by default), kept for whoever reads it
        (:attr:`pristine_observation`) — or the error observing it raised."""
        try:
            with (connect or self.connect_pristine)() as conn:
                self._pristine_result = observe(conn)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the observation
            self._pristine_result = exc

    @property
    def pristine_observation(self) -> dict[str, Any]:
        if self._pristine_thread.ident is not None:
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

    def _build(self, binaries: ClientTools, archive: Path, twin: bool) -> None:
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
                self._create_database(conn, meta, self.database)
            if meta.get("database_owner"):
                conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(self.database), sql.Identifier(meta["database_owner"])))
        problems = restore_into_empty(binaries, self.server.dsn(self.database), archive,
                                      observation=self.checkpoint.observation, run_id=self.checkpoint.run_id)
        if problems:
            self.warnings.append("pg_restore reported: " + "; ".join(problems[:5]))
        self._cut_outbound_connections()
        with self.server.connect(self.database) as conn:
            # Statistics, as production has them (pg_restore brings none before PostgreSQL 18, and the server's
            # autovacuum is off): the action is planned as it would be there. Before the twin: it copies them.
            try:
                conn.execute("ANALYZE")
            except psycopg.Error as exc:
                self.warnings.append(f"the shadow could not be analyzed, its action runs without planner "
                                     f"statistics: {exc.diag.message_primary or exc}")
        if twin:
            self._copy_twin()
        with self.server.connect() as conn:
            # Last: a setting such as default_transaction_read_only must not get in the way of building the copy.
            wanted = self.checkpoint.meta.get("settings") or []
            dbsettings.settle(conn, self.database, wanted, every_database=True, shadow=True, own_role=SUPERUSER)

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

    def _fidelity(self) -> list[str]:
        """Differences between the restored copy and the checkpoint; a faithful shadow has none."""
        if fingerprint_of(self.pristine_observation) == self.checkpoint.fingerprint:
            return []
        return how_they_differ(self.checkpoint.observation, self.pristine_observation)

    def connect(self) -> psycopg.Connection:
        return self._connect(self.dsn)

    def attach(self, network: Any) -> Endpoint:
        """Join the sandbox's internal network under the target's name; the endpoint an isolated action uses."""
        container_id = getattr(self.server, "container_id", None)
        alias = join_network(network, container_id, self.name)
        assert self.endpoint.dsn is not None
        params = {**dsnlib.parse(self.endpoint.dsn), "host": alias, "port": 5432}
        env, exclusive = endpoint_env(self.name, make_conninfo(**params))
        return Endpoint(env=env, exclusive_env=exclusive, dsn=make_conninfo(**params))

    def lost(self) -> str | None:
        """Why the shadow's server no longer answers (killed, its container gone), or None while it does."""
        conn, why = answering(self.server.dsn())
        if conn is not None:
            conn.close()
        return why

    def settled(self) -> None:
        """Wait for the pristine twin's work (its observation) to end, and end the held snapshot and shadow's own
        session."""
        if self._pristine_thread.ident is not None:
            self._pristine_thread.join()
        self._session.close()
        self._close_admin()
        if self._held is not None:
            self._held.close()
            self._held = None

    def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()

    def connect_pristine(self) -> psycopg.Connection:
        """A session reading the checkpoint's state: the shadow as the action found it (module
        :mod:`adapters.postgres.held`) while that can show it — else the twin, made now if need be."""
        if self._pristine_is_shadow:
            return self._connect(self.dsn)
        why = "the snapshot could not be held"
        if not self._pristine_ready.is_set() and self._held is not None:
            self._held.quiet()
            try:
                with self._session.use() as checker:
                    usable = self._held.usable(checker)
            except InfrastructureError as exc:  # the shadow does not answer: the twin, as when it cannot be read
                usable, self._held.ended = False, str(exc)
            if usable:
                try:
                    conn = self._held.reader()
                except psycopg.Error:
                    pass
                else:
                    read_text_as_str(conn)
                    return conn
            why = self._held.ended or "the held session had ended"
            self._held.close()
            self._held = None
        if not self._pristine_ready.is_set():
            copy = "a second copy of the warm checkpoint" if self.golden else "a second restore of the checkpoint"
            self.warnings.append(f"the rows as the action found them were read from {copy}, not from the shadow "
                                 f"itself: {why}")
            if self.golden is not None:
                self._clone_pristine()
            else:
                self._restore_twin()
        return self._connect(self.server.dsn(self.pristine))

    def _connect(self, dsn: str) -> psycopg.Connection:
        try:
            conn = psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            raise InfrastructureError(f"lost the shadow database ({self.backend} backend): "
                                      f"{dsnlib.connect_error(exc)}", target=self.name) from exc
        read_text_as_str(conn)  # a SQL_ASCII copy's checks and row keys come back as str, as production's do
        return conn

    @like_checkpoint
    def observe(self) -> dict[str, Any]:
        with self.connect() as conn:
            return observe(conn)

    def watch(self, sql_text: str | None = None) -> None:
        """Just before the action: hold the shadow's state (or make its twin now, when the action may rewrite a
        table: :func:`adapters.postgres.held.may_rewrite`), then mark where the action starts."""
        own: frozenset[int] = frozenset()
        hold = not self._pristine_ready.is_set() and self._held is None
        if hold and held.may_rewrite(sql_text):
            hold = False
            if self.golden is not None:
                self._clone_pristine()
            else:
                self._copy_twin()
        with self._session.use() as conn:
            if hold:
                try:
                    self._held = held.Held(self.dsn, self.server.dsn(warm.ADMIN_DB), conn, self._admin)
                    self._admin, own = None, frozenset({self._held.pid})  # the admin session is its watcher's
                except psycopg.Error:
                    self._held = None  # the twin, once the action has run
            if self._held is not None:  # it stays, idle beside the held session: nothing new for the action to meet
                own |= {conn.info.backend_pid}
            self._mark = capture.mark(conn, own)
            self._counters = self._mark.counters if self._mark else None
        if self._held is None:  # no session of shadow's own stays on the shadow while the action runs
            self._session.close()
        self._close_admin()  # nor on the server, but the held snapshot's watcher

    def _footprint(self) -> set[str] | None:
        """What the action read or wrote, by the counters (read before anything else scans the tables)."""
        if self._counters is not None and self._touched is None:
            with self._session.use() as conn:
                own = self._mark.own if self._mark else frozenset()
                self._touched = footprint.touched_tables(conn, self._counters, ignore=own)
        return self._touched

    @like_checkpoint
    def changes(self) -> list[Change]:
        self._footprint()  # first: observing scans every table
        with self.connect_pristine() as before_conn, self._session.use() as after_conn:
            after, rows, self.counted = capture.observe_changes(after_conn, before_conn, self.pristine_observation,
                                                                self._mark)
        self._after, self._rows = after, rows
        self._rehearsed = diff(self.pristine_observation, after, rows)
        return self._rehearsed

    @property
    def rehearsed(self) -> list[Change]:
        """The change set the rehearsal found (after :meth:`changes`)."""
        return self._rehearsed

    @property
    def observed_after(self) -> dict[str, Any] | None:
        """The shadow's observation after the action (None before :meth:`changes`)."""
        return self._after

    @property
    def footprint_tables(self) -> set[str] | None:
        """The tables the rehearsal read or wrote (None: not known, a server older than 15)."""
        return footprint.tables(self._footprint(), self._rehearsed)

    def independent(self, changes: list[Change]) -> list[Change]:
        return footprint.independent(changes, self._footprint(), self._rehearsed,
                                     self.checkpoint.observation["objects"].get("sequence", {}))

    @like_checkpoint
    def rehearse_rollback(self, undo: bool = False) -> list[str]:
        """Undo the rehearsal exactly as a rollback would undo production, then compare the copy with the
        checkpoint; empty when the undo is proven. ``undo``: production's apply runs in one transaction and keeps
        an undo record, so ``shadow rollback`` undoes its own change row by row: the same record is kept here and
        undone (cost: the rows changed), unless it says the whole checkpoint is needed. Otherwise the same restore
        over the same archive as production's."""
        if undo and self._after is not None:
            problems = self._rehearse_undo()
            if problems is not None:
                return problems
        self._session.close()  # the restore replaces the database with no session of shadow's own on it, as before
        restore_over(self.binaries, self.dsn, self.archive, observation=self.checkpoint.observation,
                     run_id=self.checkpoint.run_id)
        with self.server.connect() as conn:
            settle_settings(conn, self.database, self.checkpoint, shadow=True)
        now = self.observe()
        if fingerprint_of(now) == self.checkpoint.fingerprint:
            # Restored and proven equal to the checkpoint, and written no more: the shadow is its own pristine
            # copy again (the held snapshot saw the tables the restore replaced; no twin needs making for that).
            if not self._pristine_ready.is_set():
                if self._held is not None:
                    self._held.close()
                    self._held = None
                self._pristine_is_shadow = True
            return []
        return how_they_differ(self.checkpoint.observation, now)

    def _rehearse_undo(self) -> list[str] | None:
        """Keep the undo record production's apply would keep, undo it, and compare the copy with the pristine
        one (cost: what the action wrote, :mod:`adapters.postgres.capture`); None when the record says only the
        whole checkpoint (or a whole table of it) undoes this change."""
        assert self._after is not None
        with self._session.use() as conn:
            # Two sessions on the pristine state, none open while the undo runs: it may be this very shadow read
            # as it was (adapters.postgres.held), whose reader's locks would hold the undo's ALTERs up.
            with self.connect_pristine() as pristine:
                rows = {table: delta if delta.keys or not delta.by_key else
                        count_rows(pristine, conn, table, self.pristine_observation, self._after, keys=True)
                        for table, delta in self._rows.items()}
                record = undo.capture(conn, lambda table: (pristine, table), self.pristine_observation, self._after,
                                      rows, self._rehearsed, self.checkpoint.observation)
            if record.get("fallback") or record.get("restore_tables") or record.get("recreate"):
                return None
            conflicts, _, problems = undo.undo(conn, record, force=False)
            if conflicts or problems:
                return conflicts + problems
            with self.connect_pristine() as pristine:
                after, rows, _ = capture.observe_changes(conn, pristine, self.pristine_observation, self._mark)
        left = [c for c in diff(self.pristine_observation, after, rows)
                if not all(_sequence_position(part) for part in c.walk())]
        return [c.summary() for c in left]

    def check(self, query: str) -> Any:
        with self.connect() as conn:
            try:
                row = conn.execute(query, prepare=False).fetchone()
            except psycopg.Error as exc:
                message = exc.diag.message_primary or last_line(exc)
                state = exc.sqlstate
                if state and state != "42601" and not state.startswith("08"):  # it ran, and the server refused it
                    raise CheckQueryFailed(f"check query failed on the shadow: {message}",
                                           f"{message} (SQLSTATE {state})", target=self.name) from exc
                raise BadInput(f"check query failed on the shadow: {message}", target=self.name) from exc
        return None if row is None else row[0]


def _sequence_position(change: Change) -> bool:
    """A sequence's position moved: an undo leaves it where the apply took it (values handed out stay handed
    out), as production's does."""
    return change.kind == "sequence" and change.op == "alter" and set(change.detail) <= {"last_value", "is_called"}
