"""The ``postgres`` kind: what a plan may say about a PostgreSQL target, and the target it makes."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from adapters import Endpoint, nothing_kept, paths_as_given
from adapters.postgres import dsn as dsnlib
from adapters.postgres.cluster import stop_servers_in
from adapters.postgres.locksample import LockSampler
from adapters.postgres.target import PostgresTarget
from adapters.postgres.warm import prepare_for_next, reap_for_gc
from shadow.errors import BadInput


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
    reap_warm = staticmethod(reap_for_gc)  # warm checkpoints (policy.warm)
    prepare_warm = staticmethod(prepare_for_next)  # spare clones of each idle golden database

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

    def lock_sampler(self, endpoint: Endpoint, label: str, secrets: tuple[str, ...], where: str) -> LockSampler | None:
        """:class:`~adapters.LockSampling`: the command's sessions' locks, sampled from ``pg_locks``."""
        return LockSampler(endpoint.dsn, label, secrets, where) if endpoint.dsn else None

    def point_at(self, spec: Mapping[str, Any], address: str) -> dict[str, Any]:
        """Another database: ``address`` is its DSN."""
        return {**spec, "dsn": address}
