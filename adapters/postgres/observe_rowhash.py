"""How rows are hashed: a table's content hash in an observation, the per-row hashes undo records keep, and the
row hash in force.

A row's hash is made of each non-NULL column's name and value as text — every column's text is hashed with
``hashtextextended`` under ``COLLATE "C"``, seeded by its name, and the column hashes are XORed (row hash 2,
:func:`row_hash_expr`). Text works for every column type (``hash_record_extended`` fails on json, xml, point …) and
keeps what a conversion to jsonb would lose (json's exact text, a null-valued key *inside* a jsonb value); leaving
NULL columns out makes "add a nullable column" leave every row's hash alone, so it is not reported as an update of
every row; the order of the columns does not matter. Text output depends on session settings (TimeZone, DateStyle,
bytea_output …), which production's database, role or client may set differently from the shadow's server:
:data:`adapters.postgres.observe.READ_SETTINGS` pins them for every read, so equal data hashes equal wherever it is
observed.

Row hash 3 (the current one) is row hash 2 for a table's content hash, except that a column of a type whose own
hash function tells every distinct text apart — ``smallint``, ``integer``, ``bigint``, ``oid``, ``uuid``,
``timestamp``, ``timestamptz`` (as UTC), ``time``, ``char(n)`` (under ``COLLATE "C"``), and domains over them — is
hashed by that function (the one hash partitioning uses: stable across versions) instead of its text: no output
function per value, 3-6× less CPU on such tables (``numeric``, floats, ``interval``, ``jsonb``, enums and arrays, whose
hash functions equate values that print differently, stay text). Which columns are hashed natively is read from the
catalog of the database being hashed, so two copies of one definition hash alike; where definitions differ (a
column's type changed) the content hashes only flag the table for a row-by-row count, which is always made in row
hash 2 (:func:`column_hash_expr`), as are per-row hashes kept in undo records (:func:`row_hash_expr`).

Row hashes are versioned (``row_hash`` in the observation; absent means 1). Row hash 1 hashed a jsonb object
``{column: text}`` per row with ``jsonb_hash_extended`` — the same content at 3-4× the CPU. A run keeps the row hash
of its checkpoint to the end: every observation compared with (or derived from) a checkpoint's is made under
:func:`hashing_like` that checkpoint, so a run planned, applied or kept as an undo record by an older shadow is
still applied, verified and rolled back exactly by a newer one.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from shadow.errors import ShadowError

ROW_HASH = 3  # the row hash of new observations (see the module docstring); 1 and 2 are read and made for older runs
ROW_HASHES = (1, 2, 3)
# The row hash in force: set by hashing_like() for the work on one checkpoint's run; unset, new observations' own
# (SHADOW_ROW_HASH=1 or 2 makes a checkpoint the way shadow did before row hash 2 or 3, for the tests of such runs).
_row_hash: ContextVar[int | None] = ContextVar("shadow_row_hash", default=None)


def current_row_hash() -> int:
    """The row hash observations are made with here and now (:func:`hashing_like`)."""
    found = _row_hash.get()
    if found is not None:
        return found
    wanted = os.environ.get("SHADOW_ROW_HASH", "").strip()
    return int(wanted) if wanted in ("1", "2", "3") else ROW_HASH


def row_hash_of(observation: dict[str, Any]) -> int:
    """The row hash ``observation`` was made with (1: made before observations said)."""
    version = observation.get("row_hash", 1)
    if version not in ROW_HASHES:
        raise ShadowError(f"this checkpoint's rows were hashed by a newer shadow (row hash {version}); "
                          "use that version of shadow for this run")
    return int(version)


@contextmanager
def hashing_like(observation: dict[str, Any]) -> Iterator[None]:
    """Hash rows, inside the block, as ``observation`` (a checkpoint's) was hashed."""
    token = _row_hash.set(row_hash_of(observation))
    try:
        yield
    finally:
        _row_hash.reset(token)


F = TypeVar("F", bound=Callable[..., Any])


def like_checkpoint(method: F) -> F:
    """Decorate a method whose ``checkpoint`` argument (or, without one, ``self.checkpoint``) names the run's
    checkpoint: rows are hashed inside it as that checkpoint's observation was (:func:`hashing_like`)."""
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs).arguments
        checkpoint = bound.get("checkpoint") or bound["self"].checkpoint
        with hashing_like(checkpoint.observation):
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def row_hash_expr(columns: list[str]) -> sql.Composable:
    """SQL for the hash of row ``t`` over ``columns`` (raw names; see the module docstring), in the row hash in
    force (:func:`current_row_hash`) — row hash 2's text for 3: the per-row hashes undo records keep."""
    if current_row_hash() == 1:
        # Arrays, not jsonb_build_object: a function takes at most 100 arguments, a table up to 1600 columns.
        names = sql.SQL(", ").join(sql.Literal(c) for c in columns)
        values = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in columns)
        return sql.SQL(
            "jsonb_hash_extended(jsonb_strip_nulls(jsonb_object(ARRAY[{}]::text[], ARRAY[{}]::text[])), 0)"
        ).format(names, values)
    return column_hash_expr(columns)


def column_hash_expr(columns: list[str], natives: dict[str, str] | None = None) -> sql.Composable:
    """Row hash 2 of row ``t`` over ``columns``: each non-NULL column's text hashed with a seed of its own (its
    name's) and the hashes XORed; a NULL counts as absent and the order of the columns does not matter. ``COLLATE
    "C"``: a case-insensitive column's hash would not see a change of case. ``natives``: the columns hashed by
    their type's own function instead (row hash 3, :func:`native_hashes`)."""
    if not columns:
        return sql.SQL("0::bigint")
    natives = natives or {}

    def one(c: str) -> sql.Composable:
        seed = sql.SQL(f"({int.from_bytes(hashlib.sha256(c.encode()).digest()[:8], 'big', signed=True)})")
        template = NATIVE_HASH.get(natives.get(c, ""), TEXT_HASH)
        return sql.SQL("COALESCE(" + template + ", 0::bigint)").format(v=sql.SQL("t.{}").format(sql.Identifier(c)),
                                                                       s=seed)

    return sql.SQL("({})").format(sql.SQL(" # ").join(one(c) for c in columns))


TEXT_HASH = 'hashtextextended({v}::text COLLATE "C", {s}::bigint)'
# Row hash 3: types whose own hash function tells apart every two values that print differently (by base type).
NATIVE_HASH = {
    "int2": "hashint2extended({v}, {s}::bigint)",
    "int4": "hashint4extended({v}, {s}::bigint)",
    "int8": "hashint8extended({v}, {s}::bigint)",
    "oid": "hashoidextended({v}, {s}::bigint)",
    "uuid": "uuid_hash_extended({v}, {s}::bigint)",
    "timestamp": "timestamp_hash_extended({v}, {s}::bigint)",
    "timestamptz": "timestamp_hash_extended({v} AT TIME ZONE 'UTC', {s}::bigint)",
    "time": "time_hash_extended({v}, {s}::bigint)",
    "bpchar": 'hashbpcharextended({v} COLLATE "C", {s}::bigint)',  # char(n) only: padded alike, so exact
}
# Every table's columns hashed natively in row hash 3: column → base type name. A domain counts as its base type
# (one level); char without a length keeps its text (its trailing blanks print but do not hash).
Q_NATIVE_HASHES = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), a.attname, b.typname
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'm') AND b.typnamespace = 'pg_catalog'::regnamespace
  AND b.typname = ANY(%(types)s) AND (b.typname <> 'bpchar' OR (t.typtype <> 'd' AND a.atttypmod > 0))
  AND (%(relation)s::text IS NULL OR c.oid = %(relation)s::regclass)
"""


def native_hashes(conn: psycopg.Connection, relation: str | None = None) -> dict[str, dict[str, str]]:
    """table → {column: base type} of the columns row hash 3 hashes natively, for every table or ``relation`` (a
    quoted name); nothing in an older row hash."""
    if current_row_hash() < 3:
        return {}
    out: dict[str, dict[str, str]] = {}
    for table, column, base in conn.execute(Q_NATIVE_HASHES, {"types": list(NATIVE_HASH), "relation": relation}):
        out.setdefault(str(table), {})[str(column)] = str(base)
    return out


def table_hash_expr(columns: list[str], natives: dict[str, str]) -> sql.Composable:
    """SQL for row ``t``'s part of its table's content hash (the observation's), in the row hash in force."""
    if current_row_hash() == 1:
        return row_hash_expr(columns)
    return column_hash_expr(columns, natives if current_row_hash() >= 3 else None)


def relation_sql(name: str, only: bool) -> sql.Composable:
    # ``name`` is already quote_ident-ed by the catalog query.
    return sql.SQL(("ONLY " if only else "") + name)


def table_data(conn: psycopg.Connection, name: str, *, only: bool, key: list[str] | None,
               columns: list[str], natives: dict[str, str] | None = None) -> dict[str, Any]:
    """``name``'s row count and content hash; ``natives``: its columns hashed natively (:func:`native_hashes`),
    read here when not given."""
    if natives is None:
        natives = native_hashes(conn, name).get(name, {})
    # sum() of the bigint hashes is numeric already, the same value as summing them cast to numeric (no overflow),
    # and about 10% cheaper: it adds in 128-bit integers rather than in numeric.
    query = sql.SQL("SELECT count(*), COALESCE(sum({h}), 0)::text FROM {rel} t").format(
        h=table_hash_expr(columns, natives), rel=relation_sql(name, only)
    )
    row = conn.execute(query).fetchone()
    assert row is not None
    return {"rows": int(row[0]), "hash": row[1], "key": key, "only": only, "columns": columns}
