"""Comparing PostgreSQL observations and databases: counted row changes between two live databases, a change
set when there is nothing to count against, how a restored database still differs, and putting a database's own
settings back."""

from __future__ import annotations

from typing import Any

import psycopg

from adapters import Checkpoint
from adapters.postgres import dbsettings
from adapters.postgres.diff import diff
from adapters.postgres.rowdiff import count_rows
from adapters.postgres.observe import read_text_as_str
from shadow.changes import Change, RowDelta, diff_objects, listed
from shadow.errors import RestoreFailed


def count_changed_rows(before_conn: psycopg.Connection, after_conn: psycopg.Connection,
                        before: dict[str, Any], after: dict[str, Any]) -> dict[str, RowDelta]:
    rows: dict[str, RowDelta] = {}
    for conn in (before_conn, after_conn):  # keys compared across the two must both be str (SQL_ASCII)
        read_text_as_str(conn)
    for table in sorted(set(before["data"]) & set(after["data"])):
        b, a = before["data"][table], after["data"][table]
        if (b["rows"], b["hash"]) != (a["rows"], a["hash"]):
            delta = count_rows(before_conn, after_conn, table, before, after)
            if not delta.empty:
                rows[table] = delta
    return rows


def uncounted(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """The change set between two observations with no copy to count rows against: a table whose content changed
    is an ``update rows`` that says only that."""
    changes = diff(before, after, {})
    for table in sorted(set(before["data"]) & set(after["data"])):
        was, now = before["data"][table], after["data"][table]
        if (was["rows"], was["hash"]) != (now["rows"], now["hash"]):
            changes.append(Change("update", "rows", table, {"rows_before": was["rows"], "rows_after": now["rows"],
                                                            "note": "content changed; rows not counted"}))
    return changes


def how_they_differ(want: dict[str, Any], got: dict[str, Any], limit: int = 20) -> list[str]:
    """How observation ``got`` differs from ``want``, in change addresses (what a restore or a shadow still has to
    undo); what a change set leaves out (a column's position) by the same addresses, nothing ignored."""
    lines = [c.summary() for c in uncounted(want, got)]
    if not lines:
        lines = [c.summary() for c in diff_objects(want["objects"], got["objects"])] or ["fingerprints differ"]
    return listed(lines, limit)


def settle_settings(conn: psycopg.Connection, database: str, checkpoint: Checkpoint, shadow: bool = False) -> None:
    """Put the database's own settings (ALTER DATABASE / ALTER ROLE … IN DATABASE … SET) back to the checkpoint's;
    pg_dump does not carry them. Checkpoints taken before shadow recorded them are left as they are."""
    if "settings" not in checkpoint.meta:
        return
    try:
        dbsettings.settle(conn, database, checkpoint.meta["settings"], every_database=False, shadow=shadow)
    except psycopg.Error as exc:
        raise RestoreFailed(f"the database's settings could not be put back: {last_line(exc)}",
                            target=checkpoint.target) from exc


def last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
