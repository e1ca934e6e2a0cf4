"""Observing a PostgreSQL database: its catalog and a content hash per table, computed in SQL.

An observation is plain JSON-able data::

    {"server": {"major": 15, "version_num": 150018},
     "row_hash": 2,                                     # how rows were hashed (see "Row hashing" below)
     "objects": {kind: {name: {property: value}}},     # kinds are the change-address kinds
     "data": {table: {"rows": n, "hash": "…", "key": [pk columns] | None, "only": bool, "columns": [names]}},
     "depends": {"<kind> <name>": {"<kind> <name>": deptypes}}}   # pg_depend between observed objects

The kinds in :data:`LATER_KINDS` (rules, extended statistics, publications, event triggers, collations) appear in
``objects`` only when the database has such objects (see there).

Names are schema-qualified with ``search_path = ''`` so definitions (``pg_get_viewdef`` …) are deterministic.
Objects that belong to an extension are covered by ``extension`` and not listed one by one. Everything is read in
one REPEATABLE READ transaction, so the observation is one consistent snapshot; ``snapshot`` lets a checkpoint
observe exactly what ``pg_dump --snapshot`` dumps.

Row hashing (how ``data``'s hashes are made, and in which row hash) is described in, and done by,
:mod:`adapters.postgres.observe_rowhash`; the ``objects`` and ``depends`` are read by
:mod:`adapters.postgres.observe_objects`. Their names that other modules use are importable from here too.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql
from psycopg.adapt import Buffer, Loader

from adapters.postgres.catalog import USER_NS
from adapters.postgres.observe_objects import (LATER_KINDS as LATER_KINDS, dependencies, observe_objects,
                                               server_major)
from adapters.postgres.observe_rowhash import (ROW_HASH as ROW_HASH, column_hash_expr as column_hash_expr,
                                               current_row_hash as current_row_hash, hashing_like as hashing_like,
                                               like_checkpoint as like_checkpoint, native_hashes as native_hashes,
                                               relation_sql as relation_sql, row_hash_expr as row_hash_expr,
                                               row_hash_of as row_hash_of, table_data as table_data,
                                               table_hash_expr as table_hash_expr)
from shadow.errors import TargetUnreachable

# hashed(table, objects): whether observe counts and hashes that table's rows
Hashed = Callable[[str, dict[str, dict[str, dict[str, Any]]]], bool]

# SET LOCAL for every transaction that reads user data (observing, and counting row changes in diff).
READ_SETTINGS = {
    "search_path": "",  # names in definitions come out schema-qualified, hence deterministic
    "row_security": "off",  # a table under RLS would be counted short: make the server refuse instead of lying
    # The text output of values, which row hashes are made of.
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "3",  # exact floats (shortest exact on PostgreSQL 12+)
    "bytea_output": "hex",
    "lc_monetary": "C",
    "statement_timeout": "0",  # a database-level timeout must not cancel an observation half way
}



def _as_cp1252(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError)
    return error.object[error.start:error.end].decode("cp1252", "replace"), error.end


codecs.register_error("shadow-cp1252", _as_cp1252)


class _SqlAsciiText(Loader):
    """Text from a ``SQL_ASCII`` database, as ``str``.

    Such a database stores whatever bytes it was given, and psycopg hands its text over as ``bytes``. They are
    read as UTF-8 (what such databases mostly hold), and a byte that is not part of UTF-8 as Windows-1252 (what
    legacy data mostly is otherwise: ``K\\xf8ge`` reads ``Køge``), so names, definitions, values and keys (JSON
    text included) are printable wherever they end up. Row hashes are computed by the server from the raw bytes,
    so no difference is lost to the decoding.
    """

    def load(self, data: Buffer) -> str:
        return bytes(data).decode("utf-8", "shadow-cp1252")


def read_text_as_str(conn: psycopg.Connection) -> None:
    """Make ``conn`` return text as ``str`` when its database is ``SQL_ASCII`` (psycopg returns ``bytes`` there)."""
    if conn.info.encoding == "ascii":  # psycopg's name for SQL_ASCII
        for name in ("text", "varchar", "bpchar", "name", '"char"'):
            conn.adapters.register_loader(name, _SqlAsciiText)
        conn.adapters.register_loader(0, _SqlAsciiText)  # untyped literals ('x' AS y)



def observe(conn: psycopg.Connection, *, snapshot: str | None = None, with_data: bool = True,
            hashed: Hashed | None = None) -> dict[str, Any]:
    """Observe the database ``conn`` is connected to. Leaves the connection's transaction state as it found it.

    ``hashed(table, objects)`` says which tables' rows are counted and hashed (default: every one); the others'
    ``data`` entries have ``rows`` and ``hash`` None, for the caller to fill in (:mod:`adapters.postgres.capture`).

    Inside an open transaction (a transactional apply observing its own uncommitted changes) it reads in a
    savepoint of that transaction; otherwise in a REPEATABLE READ, READ ONLY transaction of its own.
    """
    read_text_as_str(conn)
    in_tx = conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    autocommit = conn.autocommit
    if not in_tx:
        conn.autocommit = False
    try:
        with conn.transaction():
            if not in_tx:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            if snapshot:
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            set_read_settings(conn)
            return _observe_in_tx(conn, with_data, hashed)
    except psycopg.OperationalError as exc:
        raise TargetUnreachable(f"lost the connection while observing: {exc}") from exc
    finally:
        if not conn.closed and not in_tx:
            conn.autocommit = autocommit


def set_read_settings(conn: psycopg.Connection) -> None:
    """Apply :data:`READ_SETTINGS` to the open transaction."""
    calls = sql.SQL(", ").join(
        sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
        for name, value in READ_SETTINGS.items()
    )
    conn.execute(sql.SQL("SELECT {}").format(calls))


def _observe_in_tx(conn: psycopg.Connection, with_data: bool, hashed: Hashed | None = None) -> dict[str, Any]:
    objects, relkinds, table_columns = observe_objects(conn)
    return {
        "server": {"version_num": conn.info.server_version, "major": server_major(conn)},
        "row_hash": current_row_hash(),
        "objects": objects,
        "data": _observe_data(conn, objects, relkinds, table_columns, hashed) if with_data else {},
        "depends": dependencies(conn),
    }


def _observe_data(conn: psycopg.Connection, objects: dict[str, dict[str, dict[str, Any]]], relkinds: dict[str, str],
                  table_columns: dict[str, list[tuple[int, str]]], hashed: Hashed | None = None) -> dict[str, Any]:
    """Every table's and populated materialized view's row count and content hash (a partition's through its
    partitioned root)."""
    data: dict[str, Any] = {}
    keys = _primary_keys(conn)
    natives = native_hashes(conn)
    for name, relkind in sorted(relkinds.items()):
        rel = objects["table"].get(name) or objects["materialized_view"].get(name)
        if relkind not in ("r", "p", "m") or rel is None:
            continue
        if relkind == "m" and not rel.get("populated"):
            continue
        if rel.get("partition_of"):
            continue  # counted through its partitioned root
        columns = [raw for _, raw in sorted(table_columns.get(name, []))]
        if hashed is None or hashed(name, objects):
            data[name] = table_data(conn, name, only=relkind != "p", key=keys.get(name), columns=columns,
                                    natives=natives.get(name, {}))
        else:
            data[name] = {"rows": None, "hash": None, "key": keys.get(name), "only": relkind != "p", "columns": columns}
    return data


def _primary_keys(conn: psycopg.Connection) -> dict[str, list[str]]:
    rows = conn.execute(
        f"""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname),
               ARRAY(SELECT a.attname::text FROM unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
                     JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum ORDER BY k.ord)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE i.indisprimary AND {USER_NS}
        """
    ).fetchall()
    return {name: list(cols) for name, cols in rows}
