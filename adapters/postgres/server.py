"""What a shadow needs of a throwaway PostgreSQL server, whichever backend made it."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import psycopg
from psycopg import sql

SUPERUSER = "shadow"  # the bootstrap superuser of every throwaway server

# How a shadow's server differs from a plain throwaway one (``shadow=True`` on either backend). A shadow is loaded
# once from a dump, then rehearses one action:
# - autovacuum off: right after a restore it would vacuum every freshly loaded table (the insert threshold) on the
#   cores the rehearsal needs, and make CREATE DATABASE … TEMPLATE wait for it to leave; the shadow is analyzed once
#   instead (PgShadow), so the action is planned with statistics;
# - wal_level minimal: pg_restore -j loads each table in the transaction that truncates it, and builds its indexes,
#   without writing them to the WAL — at 1 GB the restore took 4.9-5.0 s instead of 7.3-8.4 s (the same archive,
#   the same server otherwise). What it costs a rehearsal: an action that creates a replication slot or starts a
#   base backup fails in the shadow (CREATE PUBLICATION only warns) — :data:`MINIMAL_WAL_MISSES` names it.
SHADOW_SETTINGS = {"autovacuum": "off", "wal_level": "minimal", "max_wal_senders": "0"}
MINIMAL_WAL_MISSES = ("the shadow's server runs with wal_level = minimal (a restore writes no WAL that way): "
                      "replication slots and base backups are not available in a rehearsal")


class Server:
    """Base of ``LocalCluster`` (local backend) and ``ContainerServer`` (docker backend).

    Subclasses implement ``start``, ``stop`` and ``dsn``; ``__exit__`` stops the server even when ``start``
    failed half way.
    """

    password: str
    port: int

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def stop_soon(self) -> None:
        """Stop and remove the server for a process that ends now: where a backend can leave the last of that work
        to a process of its own, without waiting for it (a container); else :meth:`stop`."""
        self.stop()

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        raise NotImplementedError

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.dsn(dbname), autocommit=autocommit)

    def create_database(self, name: str) -> str:
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
