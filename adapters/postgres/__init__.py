"""PostgreSQL targets: checkpoint by ``pg_dump``, shadow in a throwaway server, observe the catalog and data."""

from __future__ import annotations

from adapters.postgres.target import PostgresKind, PostgresTarget

KIND = PostgresKind()

__all__ = ["KIND", "PostgresKind", "PostgresTarget"]
