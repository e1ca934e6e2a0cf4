"""How a PostgreSQL shadow's databases are made on its server (:mod:`adapters.postgres.shadowcopy`): the shadow's
database created for a restore or cloned from a warm golden one, its pristine twin, and its foreign servers cut off.

The twin is a file copy of the freshly restored shadow (a cold shadow kept warm afterwards), a second restore of the
checkpoint (a cold one, once the action has written the shadow), or a clone of the golden database (a warm one);
:class:`PgShadow <adapters.postgres.shadowcopy.PgShadow>` decides which, and when. :class:`ShadowDatabases` holds
these steps for it: it is only ever a base of ``PgShadow``, whose attributes it names below.

Once made, the shadow database is read by the steps around one action — the mark before it, the footprint, the
observation after it, the rehearsed undo — through one session of shadow's own (:class:`KeptSession`) instead of a
connection each: a connection costs a SCRAM exchange and a new backend with cold catalog caches (about 4 ms on a
local cluster; the password changes at every warm lease, so no cheaper authentication will do). ``PgShadow`` closes
it when it is settled.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from adapters import Checkpoint
from adapters.postgres import dbsettings, warm
from adapters.postgres import dsn as dsnlib
from adapters.postgres.binaries import ClientTools
from adapters.postgres.restore import restore_into_empty
from adapters.postgres.server import SUPERUSER, Server
from shadow.errors import InfrastructureError


class ShadowDatabases:
    """The steps that make a shadow's databases; :class:`adapters.postgres.shadowcopy.PgShadow` sets what they use."""

    name: str
    server: Server
    checkpoint: Checkpoint
    database: str
    pristine: str
    golden: str | None
    warnings: list[str]
    binaries: ClientTools
    archive: Path
    _pristine_ready: threading.Event
    _admin: psycopg.Connection | None

    def _clone(self, golden: str, admin: psycopg.Connection | None) -> None:
        """The shadow database as a clone of the warm server's golden one, with the checkpoint's settings, made
        through ``admin`` (the lease's session on :data:`warm.ADMIN_DB`) or a new session there — kept for the
        held snapshot's watcher (:meth:`PgShadow.watch`: one handshake fewer)."""
        conn = admin if admin is not None else self.server.connect(warm.ADMIN_DB)
        try:
            warm.clone(conn, golden, self.database, self.checkpoint.meta.get("database_owner"),
                       warm.spare_names(self.database))
            wanted = self.checkpoint.meta.get("settings") or []
            dbsettings.settle(conn, self.database, wanted, every_database=True, shadow=True, own_role=SUPERUSER)
        except BaseException:
            conn.close()
            raise
        self._admin = conn

    def _clone_pristine(self) -> None:
        """The twin, cloned from the golden database; its observation is the checkpoint's (the golden one was
        verified equal to it when it was kept, and refuses connections since)."""
        assert self.golden is not None
        try:
            with self.server.connect(warm.ADMIN_DB) as conn:
                warm.clone(conn, self.golden, self.pristine, None, warm.spare_names(self.database))
                dbsettings.settle(conn, self.pristine, self.checkpoint.meta.get("settings") or [],
                                  every_database=False, shadow=True)
        except psycopg.Error as exc:
            raise InfrastructureError(f"cloning the shadow's pristine copy failed: {exc}", target=self.name) from exc
        self._pristine_ready.set()

    def _copy_twin(self) -> None:
        """The pristine twin as a file copy of the shadow database (nothing may be connected to it)."""
        with self.server.connect() as conn:
            # FILE_COPY (15+) copies the files instead of WAL-logging every block: faster for a throwaway twin.
            strategy = " STRATEGY FILE_COPY" if conn.info.server_version >= 150000 else ""
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}" + strategy).format(
                sql.Identifier(self.pristine), sql.Identifier(self.database)))
            wanted = self.checkpoint.meta.get("settings") or []
            dbsettings.settle(conn, self.pristine, wanted, every_database=False, shadow=True)
        self._pristine_ready.set()

    def _restore_twin(self) -> None:
        """The pristine twin as a second restore of the checkpoint: once the action has written the shadow, the
        only way back to its pristine rows when the held snapshot cannot show them (a cold shadow)."""
        with self.server.connect() as conn:
            self._create_database(conn, self.checkpoint.meta, self.pristine)
        problems = restore_into_empty(self.binaries, self.server.dsn(self.pristine), self.archive,
                                      observation=self.checkpoint.observation, run_id=self.checkpoint.run_id)
        if problems:
            self.warnings.append("pg_restore reported (second restore): " + "; ".join(problems[:5]))
        with self.server.connect() as conn:
            dbsettings.settle(conn, self.pristine, self.checkpoint.meta.get("settings") or [], every_database=False,
                              shadow=True)
        self._pristine_ready.set()

    def _create_database(self, conn: psycopg.Connection, meta: dict[str, Any], name: str) -> None:
        create = sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}")
        try:
            conn.execute(create.format(sql.Identifier(name), sql.Literal(meta["encoding"]),
                                       sql.Literal(meta["collate"]), sql.Literal(meta["ctype"])))
        except psycopg.Error:
            self.warnings.append(
                f"locale {meta['collate']!r} is not available here; the shadow uses C.UTF-8 (sorting may differ)"
            )
            conn.execute(create.format(sql.Identifier(name), sql.Literal(meta["encoding"]),
                                       sql.Literal("C.UTF-8"), sql.Literal("C.UTF-8")))

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


IDLE = psycopg.pq.TransactionStatus.IDLE


class KeptSession:
    """One session made by ``connect`` on first use, reused until :meth:`close`. It is handed out idle and in
    autocommit, as a fresh connection would be, and checked alive first (an action may have ended every other
    session on its server); a use that fails, or leaves it in a transaction, ends it as leaving ``with connection:``
    would (rollback or commit, then close), and the next use connects again."""

    def __init__(self, connect: Callable[[], psycopg.Connection]) -> None:
        self._connect = connect
        self._conn: psycopg.Connection | None = None

    @contextmanager
    def use(self) -> Iterator[psycopg.Connection]:
        """The session (connected now if need be), for a ``with`` block."""
        conn = self._alive() or self._connect()
        self._conn = conn
        try:
            yield conn
        except BaseException:
            self._conn = None
            _end(conn, failed=True)
            raise
        if not conn.autocommit or conn.info.transaction_status != IDLE:
            self._conn = None
            _end(conn, failed=False)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _alive(self) -> psycopg.Connection | None:
        conn = self._conn
        if conn is None or conn.closed:
            return None
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            self.close()
            return None
        return conn


def _end(conn: psycopg.Connection, failed: bool) -> None:
    """End ``conn`` as leaving ``with conn:`` does: roll back after a failure, else commit; then close."""
    try:
        if failed:
            try:
                conn.rollback()
            except psycopg.Error:
                pass  # the connection is gone, or its transaction with it
        else:
            conn.commit()
    finally:
        conn.close()


def answering(dsn: str) -> tuple[psycopg.Connection | None, str | None]:
    """An autocommit session on ``dsn`` — or None and why its server no longer answers (killed, its container gone),
    within 5 s."""
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=5), None
    except psycopg.OperationalError as exc:
        return None, dsnlib.connect_error(exc)
