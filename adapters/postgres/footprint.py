"""What an action read and wrote, measured on the shadow — shadow's own server — not guessed from its SQL.

Before the action runs, the shadow database's per-table counters (``pg_stat_user_tables``: sequential and index
scans, rows inserted, updated, deleted) are read; after it, once every session of the action has ended (a backend
flushes its counters before it leaves ``pg_stat_activity``), they are read again. A table whose counters moved was
read or written by the action — directly, through a view, a function, a trigger or a foreign key check. Tables
the rehearsal changed count too (an ``ADD COLUMN`` scans nothing).

Production's changes since the checkpoint to *other* tables' rows, and to sequences only those tables use, cannot
change the action's outcome: they are *independent* of it. Anything else — a change to a table the action
touched, any change of a definition — is not. Servers older than 15 count asynchronously, so there the footprint
is unknown and nothing is independent.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from adapters.postgres.diff import table_of
from shadow.changes import Change

Q_COUNTERS = """
SELECT quote_ident(schemaname) || '.' || quote_ident(relname), seq_scan, coalesce(idx_scan, 0), n_tup_ins,
       n_tup_upd, n_tup_del
FROM pg_stat_user_tables
"""
Q_OTHERS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
  AND pid <> ALL(%s::int[])
"""
COUNTED_SINCE = 150000  # server_version_num from which counters are flushed synchronously at backend exit
SEQUENCE_VALUE = {"last_value", "is_called"}

Counters = dict[str, tuple[int, ...]]


def counters(conn: psycopg.Connection) -> Counters | None:
    """Every table's counters now; None on a server whose counters lag (older than 15)."""
    if conn.info.server_version < COUNTED_SINCE:
        return None
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return {str(name): tuple(int(v) for v in rest) for name, *rest in conn.execute(Q_COUNTERS)}


def touched_tables(conn: psycopg.Connection, before: Counters | None, wait: float = 10.0,
                   ignore: frozenset[int] = frozenset()) -> set[str] | None:
    """The tables whose counters moved since ``before``; None when that cannot be known (an old server, or the
    action's sessions still running after ``wait`` seconds). ``ignore``: shadow's own sessions on the shadow
    (:mod:`adapters.postgres.held`), which are not the action's."""
    if before is None:
        return None
    deadline = time.monotonic() + wait
    while _others(conn, ignore):
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    after = counters(conn)
    if after is None:
        return None
    return {name for name, now in after.items() if before.get(name) != now}


def _others(conn: psycopg.Connection, ignore: frozenset[int]) -> int:
    row = conn.execute(Q_OTHERS, [sorted(ignore)]).fetchone()
    return int(row[0]) if row else 0


def independent(changes: list[Change], touched: set[str] | None, rehearsed: list[Change],
                sequences: dict[str, Any]) -> list[Change]:
    """Of ``changes`` (production's since the checkpoint), the top-level ones the action cannot depend on: row
    changes of tables it neither read nor wrote, with the sequence values those writes consumed."""
    read_or_written = tables(touched, rehearsed)
    if read_or_written is None:
        return []
    return [c for c in changes if all(_independent(part, read_or_written, sequences) for part in c.walk())]


def tables(touched: set[str] | None, rehearsed: list[Change]) -> set[str] | None:
    """The tables the action read or wrote on the shadow, with those its change set names; None: not known."""
    return None if touched is None else touched | _tables_of(rehearsed)


def _independent(change: Change, tables: set[str], sequences: dict[str, Any]) -> bool:
    if change.kind == "rows":
        return change.name not in tables
    if change.kind == "sequence" and change.op == "alter" and set(change.detail) <= SEQUENCE_VALUE:
        seq = sequences.get(change.name) or {}
        owner = table_of("sequence", change.name, seq)
        users = set(seq.get("used_by") or []) | ({owner} if owner else set())
        return not users & tables
    return False


def _tables_of(changes: list[Change]) -> set[str]:
    """The tables a change set names: its rows, its tables, the tables of its columns."""
    out: set[str] = set()
    for change in changes:
        for part in change.walk():
            if part.kind in ("rows", "table", "partitioned table"):
                out.add(part.name)
            elif part.kind == "column":
                out.add(table_of("column", part.name, {}) or part.name)
    return out
