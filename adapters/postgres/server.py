"""What a shadow needs of a throwaway PostgreSQL server, whichever backend made it."""

from __future__ import annotations

from types import TracebackType
from typing import Self

import psycopg
from psycopg import sql

SUPERUSER = "shadow"  # the bootstrap superuser of every throwaway server


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
