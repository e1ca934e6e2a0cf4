"""The effect of the apply's own transaction, whatever other sessions commit meanwhile.

The apply runs in one REPEATABLE READ transaction. Before its statements, production is observed inside it
(:func:`prepare`): the transaction's snapshot, the state its statements find. After them it is observed again in
the same transaction: the same snapshot plus the statements' own writes. The difference between the two is the
action's effect alone; other sessions' commits are in neither.

Counting rows needs the state before the statements next to the state after. For a table whose content the
snapshot finds as the checkpoint recorded it, the shadow's pristine copy *is* that state, so nothing is copied.
Only a table the rehearsal changes rows in *and* that other sessions wrote to since the checkpoint is copied
(a temporary table of the transaction, dropped at its end) before the statements run: cost follows the tables the
change touches, not the database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from adapters.postgres.rowdiff import count_rows
from adapters.postgres.observe import relation_sql
from shadow.changes import DATA_MOVED, Change, RowDelta

COPY_PREFIX = "shadow_before_"


@dataclass
class Before:
    observation: dict[str, Any]
    copies: dict[str, str] = field(default_factory=dict)  # table → the temporary table holding its rows before


def prepare(conn: psycopg.Connection, checkpoint: dict[str, Any], tables: set[str],
            observe: Callable[[psycopg.Connection], dict[str, Any]]) -> Before:
    """Observe production inside the transaction, and copy the ``tables`` (the rehearsal's) that moved since
    the checkpoint."""
    # Rolled back, not released: the observation's SET LOCALs (search_path, TimeZone …) would otherwise stay in
    # force for the statements that follow. It only read; rolling it back loses nothing.
    with conn.transaction(force_rollback=True):
        before = Before(observe(conn))
    for i, table in enumerate(sorted(tables)):
        now, then = before.observation["data"].get(table), checkpoint["data"].get(table)
        if now is None or then is None or _same(now, then):
            continue
        copy = f"{COPY_PREFIX}{i}"
        try:
            with conn.transaction():  # a savepoint: without the TEMP privilege the table stays uncounted
                conn.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT * FROM {}").format(
                    sql.Identifier(copy), relation_sql(table, bool(now.get("only", True)))))
        except psycopg.errors.InsufficientPrivilege:
            continue
        before.copies[table] = f"pg_temp.{copy}"
    return before


def rows_changed(conn: psycopg.Connection, pristine: psycopg.Connection, checkpoint: dict[str, Any], before: Before,
                 after: dict[str, Any]) -> tuple[dict[str, RowDelta], list[Change]]:
    """Counted row changes of the statements alone, and the tables whose content changed but whose earlier
    rows are nowhere to count against (each an uncounted ``update rows``)."""
    rows: dict[str, RowDelta] = {}
    uncounted: list[Change] = []
    was_all = before.observation["data"]
    for table in sorted(set(was_all) & set(after["data"])):
        was, now = was_all[table], after["data"][table]
        if _same(was, now):
            continue
        if table in before.copies:
            delta = count_rows(conn, conn, table, before.observation, after, before_relation=before.copies[table],
                               keys=True)
        elif table in checkpoint["data"] and _same(was, checkpoint["data"][table]):
            delta = count_rows(pristine, conn, table, before.observation, after, keys=True)
        else:
            uncounted.append(Change("update", "rows", table, {"rows_before": was["rows"], "rows_after": now["rows"],
                                                              "note": "content changed; rows not counted"}))
            continue
        if not delta.empty:
            rows[table] = delta
    return rows, uncounted


SEQUENCE_POSITION = ("last_value", "is_called")


def mark_moved(changes: list[Change], before: Before) -> None:
    """Flag the row changes of tables other sessions wrote to since the checkpoint: their counts may
    legitimately differ from the rehearsal's (``shadow.judge.compare_change_sets``)."""
    for top in changes:
        for change in top.walk():
            if change.kind == "rows" and change.name in before.copies:
                change.detail[DATA_MOVED] = True


def others_positions(before: dict[str, Any], after: dict[str, Any], rehearsed: list[Change]) -> None:
    """Sequences are not transactional: a position the rehearsal never moved but that moved during the
    transaction was moved by another session. Put ``before``'s position back into ``after`` for those."""
    moved = {c.name for top in rehearsed for c in top.walk()
             if c.kind == "sequence" and c.op == "alter" and set(c.detail) & set(SEQUENCE_POSITION)}
    was_all = before["objects"].get("sequence", {})
    for name, now in after["objects"].get("sequence", {}).items():
        was = was_all.get(name)
        if was is not None and name not in moved:
            for prop in SEQUENCE_POSITION:
                now[prop] = was.get(prop)


def rows_before(conn: psycopg.Connection, pristine: psycopg.Connection,
                before: Before) -> Callable[[str], tuple[psycopg.Connection, str]]:
    """Where a table's rows before the statements are: its copy in the transaction, or the pristine copy."""
    def where(table: str) -> tuple[psycopg.Connection, str]:
        return (conn, before.copies[table]) if table in before.copies else (pristine, table)
    return where


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (a["rows"], a["hash"]) == (b["rows"], b["hash"])
