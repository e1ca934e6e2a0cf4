"""PostgreSQL targets: checkpoint by ``pg_dump``, shadow in a throwaway server, observe the catalog and data."""

from __future__ import annotations

from adapters.postgres.kind import PostgresKind
from adapters.postgres.target import PostgresTarget

KIND = PostgresKind()

__all__ = ["KIND", "PostgresKind", "PostgresTarget"]
