"""The gateway's ``query`` tool: one read-only statement on a shadow, answered without the values redaction hides.

A result column is judged by where its values come from, never by the name the statement gives it (an alias is
free text). The server says, for every result column that is a plain reference to a table column, which table and
which column (the row description's table OID and column number; psycopg's ``pgresult.ftable``/``ftablecol``):

- a plain reference to a column that :func:`shadow.redact.is_redacted` hides (a secret-looking name or a
  ``policy.redact`` glob, ``schema.table.column`` included) is redacted;
- anything else — an expression, a whole row (``row_to_json(u)``, ``SELECT u``), a function's result, a view's
  column, a set operation — is redacted when the statement **may have read** a table holding a redacted column:
  its plan names one, the server counted a scan of one while it ran (``pg_stat_xact_all_tables``: a read inside a
  function counts too), it calls a function that runs SQL of its own or reads files (``query_to_xml`` …), or its
  plan cannot be known (a statement EXPLAIN does not take). Redacting is chosen over refusing: the other columns of
  the answer stay useful, and the agent sees which ones were hidden (``redacted_columns``);
- every value shown is then scanned for secret-looking runs (:func:`shadow.redact.mask_secret_looking`).

A server error is shown as its primary message only — never DETAIL, HINT or CONTEXT — with every quoted text that
the agent's own SQL does not contain masked (``invalid input syntax for type integer: "<a value>"``) and the
message of an error the statement raised itself (SQLSTATE class P0) withheld.

What this does not stop: a ``WHERE`` on a redacted column still filters the plain columns shown (one bit per query).
"""

from __future__ import annotations

import json
import re
from typing import Any

from shadow import redact
from shadow.errors import BadInput, excerpt

QUERY_TIMEOUT = 10.0
TABLE_KINDS = ("r", "p", "m", "f")  # kinds whose columns hold data of their own (a view's come from elsewhere)
RUNS_SQL = re.compile(r"\b(?:query|table|cursor|schema|database)_to_xml\w*|\bdblink\w*|\bpg_read_(?:binary_)?file\b"
                      r"|\blo_get\b|\blo_export\b|\bpg_ls_\w+|\bpg_stat_file\b", re.I)
STATISTICS = re.compile(r'"Relation Name": "pg_statistic(?:_ext_data)?"')  # sample values of every column
_QUOTED = re.compile(r"\"([^\"]*)\"|'([^']*)'")
_COLUMNS = """
SELECT c.oid, n.nspname, c.relname, c.relkind, a.attnum, a.attname
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p', 'm', 'f', 'v')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
"""
_READS = """
SELECT relid, coalesce(seq_scan, 0) + coalesce(idx_scan, 0) + coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)
FROM pg_catalog.pg_stat_xact_all_tables WHERE relid = ANY(%s)
"""


class QueryFailed(BadInput):
    """The agent's statement failed on the shadow; the message is already masked."""


class _Catalog:
    """The shadow's user columns: which are redacted, and which tables hold a redacted column."""

    def __init__(self, rows: list[tuple[Any, ...]], patterns: tuple[str, ...]) -> None:
        self.columns: dict[tuple[int, int], tuple[str, str]] = {}
        self.kinds: dict[int, str] = {}
        self.names: dict[tuple[str, str], int] = {}
        self.hidden: set[tuple[int, int]] = set()
        for oid, schema, table, kind, attnum, column in rows:
            qualified = f"{schema}.{table}"
            self.columns[(oid, attnum)] = (qualified, column)
            self.kinds[oid] = kind
            self.names[(schema, table)] = oid
            if redact.is_redacted(qualified, column, patterns):
                self.hidden.add((oid, attnum))
        self.sensitive = {oid for oid, _ in self.hidden if self.kinds[oid] in TABLE_KINDS}


def read_only(dsn: str, sql: str, limit: int, max_bytes: int, patterns: tuple[str, ...]) -> dict[str, Any]:
    """Run ``sql`` in a READ ONLY transaction (statement timeout) on the shadow at ``dsn``: rows capped at ``limit``
    and ``max_bytes``, redacted as the module docstring says. Raises :class:`QueryFailed`."""
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            conn.read_only = True
            with conn.cursor() as cur:
                cur.execute(f"SET LOCAL statement_timeout = {int(QUERY_TIMEOUT * 1000)}")
                catalog = _Catalog(cur.execute(_COLUMNS).fetchall(), patterns)
                planned = _plan_reads(cur, sql, catalog) if catalog.sensitive else set()
                sensitive = sorted(catalog.sensitive)
                before: dict[int, int] = dict(cur.execute(_READS, (sensitive,)).fetchall()) if sensitive else {}
                cur.execute(sql.encode())  # the agent's one statement, simple protocol, on a disposable copy
                if cur.description is None:
                    return {"columns": [], "rows": [], "row_count": 0, "cut": False}
                result = cur.pgresult
                assert result is not None
                names = [d.name for d in cur.description]
                origins = [(result.ftable(i), result.ftablecol(i)) for i in range(len(names))]
                fetched = cur.fetchmany(limit + 1)
                after: dict[int, int] = dict(cur.execute(_READS, (sensitive,)).fetchall()) if sensitive else {}
                conn.rollback()
    except psycopg.Error as exc:
        raise QueryFailed(f"the query failed on the shadow: {server_error(exc, sql)}") from None
    measured = {oid for oid, n in after.items() if n > before.get(oid, 0)}
    may_read = planned is None or bool(planned & catalog.sensitive) or bool(measured)
    hidden = [_hidden(name, origin, catalog, patterns, may_read) for name, origin in zip(names, origins)]
    rows: list[list[Any]] = []
    size, cut = 2, False
    for raw in fetched:
        if len(rows) == limit:
            cut = True
            break
        row = [redact.MARKER if hide and v is not None else _shown(v) for hide, v in zip(hidden, raw)]
        size += len(json.dumps(row, default=str)) + 1
        if size > max_bytes:
            cut = True
            break
        rows.append(row)
    answer: dict[str, Any] = {"columns": names, "rows": rows, "row_count": len(rows), "cut": cut}
    if any(hidden):
        answer["redacted_columns"] = [n for n, hide in zip(names, hidden) if hide]
    if cut:
        answer["note"] = f"cut at {len(rows)} rows (row cap {limit}, byte cap {max_bytes})"
    return answer


def _plan_reads(cur: Any, sql: str, catalog: _Catalog) -> set[int] | None:
    """The tables ``sql``'s plan reads (views expanded), or None when it may read anything: EXPLAIN does not take
    the statement, it calls a function that runs SQL of its own or reads files, or it reads the statistics catalogs
    (``pg_stats`` shows sample values of every column)."""
    import psycopg

    if RUNS_SQL.search(sql):
        return None
    cur.execute("SAVEPOINT shadow_explain")
    try:
        row = cur.execute(b"EXPLAIN (VERBOSE, FORMAT JSON) " + sql.encode()).fetchone()
    except psycopg.Error:
        cur.execute("ROLLBACK TO SAVEPOINT shadow_explain")
        return None
    plan = row[0] if row else None
    text = plan if isinstance(plan, str) else json.dumps(plan)
    if RUNS_SQL.search(text) or STATISTICS.search(text):
        return None
    found: set[int] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "Relation Name" in node:
                oid = catalog.names.get((str(node.get("Schema", "")), str(node["Relation Name"])))
                if oid is not None:
                    found.add(oid)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(text))
    return found


def _hidden(name: str, origin: tuple[int, int], catalog: _Catalog, patterns: tuple[str, ...], may_read: bool) -> bool:
    if redact.is_redacted("", name, patterns):  # a secret-looking alias is hidden too: it says what it holds
        return True
    oid, attnum = origin
    if oid and attnum > 0 and (oid, attnum) in catalog.columns and catalog.kinds[oid] in TABLE_KINDS:
        return (oid, attnum) in catalog.hidden  # a plain column of a table: its own rule
    return may_read


def _shown(value: Any) -> Any:
    """A value as the answer shows it: JSON-able, long texts cut, secret-looking runs masked."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return redact.mask_secret_looking(f"\\x{bytes(value)[:2048].hex()}")
    text = value if isinstance(value, str) else json.dumps(value, default=str) \
        if isinstance(value, (dict, list)) else str(value)
    text = text if len(text) <= 4096 else text[:4096] + "…"
    return redact.mask_secret_looking(text)


def server_error(exc: Exception, sql: str) -> str:
    """What the agent may read of a failed statement: the primary message, quoted texts its own SQL does not
    contain masked, never DETAIL/HINT/CONTEXT (they quote rows); a message the statement raised itself withheld."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    state = getattr(diag, "sqlstate", None) or ""
    if not primary:
        return f"{type(exc).__name__} (no message from the server)"
    if state.startswith("P0"):
        return f"the statement raised an error of its own (SQLSTATE {state}); its message is not shown"
    masked = _QUOTED.sub(lambda m: m.group() if (m.group(1) if m.group(1) is not None else m.group(2)) in sql
                         else m.group()[0] + redact.MARKER + m.group()[0], primary)
    return excerpt(masked, 300) + (f" (SQLSTATE {state})" if state else "")
