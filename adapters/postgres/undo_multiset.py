"""The undo of a table without a primary key, row by row: its rows are matched by their values.

A table without a key holds a **multiset** of rows: two rows with the same values cannot be told apart, and need
not be — undoing "the run inserted one row ``v``" means taking one ``v`` out, whichever. So the capture records,
inside the apply's transaction, the run's own multiset difference: each row value (by its row hash, over the
table's columns) the run added or took out, how many times, how many rows of that value the run left, and, for a
value taken out, the row itself (``row_to_json``). Other sessions' writes to *other* values of the table are kept
by the undo, as a keyed table's are; only a write to a value the run changed is a conflict.

**Capture** (:func:`capture`): one pass over each side groups row hashes into 4,096 buckets (count and sum); only
the buckets that differ are read again, hash by hash. Cost: two scans of the table on each side, whatever the
table's size (the two sides at once when they are two connections), and memory for the changed values only. Above :data:`MAX_ROWS` changed rows — or when the columns
changed — the table is put back whole from the checkpoint instead (:mod:`adapters.postgres.undo_tables`).

**Undo** (:func:`plan`, then :func:`delete` and :func:`insert` in foreign-key order): for each value ``v`` the run put ``n`` rows of in, production now holds
``c`` rows of ``v``: ``c >= n`` — take ``n`` out (by ``ctid``, the rows locked first), whatever others inserted or
deleted of that value since (their rows are kept, by count: the run's change is taken out of the multiset as it is
now); ``c < n`` — someone deleted what the run inserted — a **conflict**, refused unless forced. A value the run
took ``n`` rows of out gets ``n`` rows inserted again. Each statement's row count is checked against the plan
inside the transaction. Counts cannot tell an undo that already ran from others' writes, so such an undo must
never run twice: the undo's transaction id is kept before it commits, and an undo whose transaction committed is
not run again (:meth:`adapters.postgres.target.PostgresTarget.undo`).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg import sql

from adapters.postgres.observe import current_row_hash, relation_sql, row_hash_expr, set_read_settings
from adapters.postgres.undo_tables import idents
from shadow.changes import RowDelta

MAX_ROWS = 10_000  # changed rows of one keyless table kept one by one; above, the table is put back whole
MAX_ROWS_ENV = "SHADOW_UNDO_BY_VALUE_ROWS"  # overrides MAX_ROWS; 0: keyless tables are always put back whole
BUCKETS = 4096


def capture(conn: psycopg.Connection, before_of: Any, table: str, delta: RowDelta, was: dict[str, Any],
            now: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(the multiset entry of ``table``, None) — or (None, why its rows cannot be undone one by one). ``conn``: the
    apply's transaction, read settings in force; ``before_of(table)``: where its rows before the statements are."""
    why = f"{table} has no primary key"
    columns = list(now["columns"])
    if not columns or columns != list(was["columns"]) or bool(now.get("only", True)) != bool(was.get("only", True)):
        return None, f"{why} and its columns changed: its rows cannot be undone one by one"
    changed, limit = delta.inserted + delta.updated + delta.deleted, max_rows()
    if changed > limit:
        return None, (f"{why} and the run changed {changed} of its rows (at most {limit} are kept one by one, "
                      f"{MAX_ROWS_ENV})")
    only = bool(now.get("only", True))
    old_conn, old_rel = before_of(table)

    def before(read: Callable[[], Any]) -> Any:
        with old_conn.transaction(force_rollback=True):
            set_read_settings(old_conn)
            return read()

    with _Sides(old_conn is not conn) as sides:  # the two sides read at once when they are two connections
        then_buckets, now_buckets = sides.both(lambda: before(lambda: _buckets(old_conn, old_rel, only, columns)),
                                               lambda: _buckets(conn, table, only, columns))
        differing = sorted(b for b in set(then_buckets) | set(now_buckets)
                           if then_buckets.get(b) != now_buckets.get(b))
        then, after = sides.both(lambda: before(lambda: _counts_in(old_conn, old_rel, only, columns, differing)),
                                 lambda: _counts_in(conn, table, only, columns, differing))
    out = {h: n - after.get(h, 0) for h, n in then.items() if n > after.get(h, 0)}
    rows = before(lambda: _rows_of(old_conn, old_rel, only, columns, sorted(out)))
    added: list[list[Any]] = [[h, n - then.get(h, 0), n] for h, n in sorted(after.items()) if n > then.get(h, 0)]
    removed: list[list[Any]] = [[h, n, after.get(h, 0), rows[h]] for h, n in sorted(out.items())]
    if sum(a[1] for a in added) + sum(r[1] for r in removed) > 2 * limit:
        return None, f"{why} and the run changed more than {limit} of its rows ({MAX_ROWS_ENV})"
    return {"columns": columns, "only": only, "row_hash": current_row_hash(), "added": added,
            "removed": removed}, None


class _Sides:
    """Reads of the rows before (another connection: the pristine copy) and after (the apply's transaction) at
    once, in a thread, when they are two connections — in the apply's transaction, the wall time is lock time."""

    def __init__(self, parallel: bool) -> None:
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="shadow-undo-before") if parallel else None

    def __enter__(self) -> _Sides:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)

    def both(self, before: Callable[[], Any], after: Callable[[], Any]) -> tuple[Any, Any]:
        if self.pool is None:
            return before(), after()
        # The row hash in force (a context variable) is the caller's: the thread runs in a copy of its context.
        done = self.pool.submit(contextvars.copy_context().run, before)
        try:
            now = after()
        except BaseException:
            with contextlib.suppress(BaseException):
                done.result()
            raise
        return done.result(), now


def max_rows() -> int:
    """How many changed rows of one keyless table are kept one by one (:data:`MAX_ROWS_ENV`, else MAX_ROWS)."""
    try:
        return max(0, int(os.environ.get(MAX_ROWS_ENV, MAX_ROWS)))
    except ValueError:
        return MAX_ROWS


def plan(conn: psycopg.Connection, table: str, entry: dict[str, Any], force: bool,
         conflicts: list[str], problems: list[str]) -> dict[str, Any]:
    """What undoing ``table``'s entry takes now (read under the observation's settings, the rows to take out
    locked): ``{"delete": {relation: [ctid, …]}, "insert": [[row, n], …], "forced": bool}``."""
    columns, only = entry["columns"], bool(entry["only"])
    todo: dict[str, Any] = {"delete": {}, "insert": [], "forced": False}
    if entry.get("row_hash", 1) != current_row_hash():
        problems.append(f"{table}: its rows were kept with row hash {entry.get('row_hash', 1)}, not "
                        f"{current_row_hash()}; nothing was changed")
        return todo
    hashes = [a[0] for a in entry["added"]] + [r[0] for r in entry["removed"]]
    now = _counts_of(conn, table, only, columns, hashes)
    wanted: dict[str, int] = {}
    clashes = 0
    for h, n, _left in entry["added"]:
        c = now.get(h, 0)
        if c < n:  # fewer rows of that value than the run put in: someone deleted what the run inserted
            clashes += 1
            if not force:
                continue
        if min(n, c):
            wanted[h] = min(n, c)
    for _h, n, _left, row in entry["removed"]:
        todo["insert"].append([row, n])
    # What each value must count once the undo wrote (checked by :func:`verify` inside the same transaction).
    todo["expect"] = {h: now.get(h, 0) - wanted.get(h, 0) for h, *_ in entry["added"]}
    todo["expect"].update({h: now.get(h, 0) + n for h, n, *_ in entry["removed"]})
    if clashes:
        conflicts.append(f"table {table}: {clashes} row value(s) the run inserted were deleted since (it has no "
                         "primary key: its rows are matched by their values)")
        todo["forced"] = True
    if wanted and (force or not clashes):
        # The rows to take out, locked: nobody deletes or updates them between here and the DELETE.
        found = conn.execute(sql.SQL("SELECT {h}::text, t.tableoid::regclass::text, t.ctid::text FROM {t} t "
                                     "WHERE {h} = ANY(%s::bigint[]) FOR UPDATE OF t").format(
            h=row_hash_expr(columns), t=relation_sql(table, only)), [list(wanted)]).fetchall()
        for h, rel, tid in found:
            if wanted.get(h, 0) > 0:
                wanted[h] -= 1
                todo["delete"].setdefault(rel, []).append(tid)
        if any(wanted.values()):
            problems.append(f"{table}: {sum(wanted.values())} row(s) the run inserted are no longer there")
    return todo


def delete(conn: psycopg.Connection, todo: dict[str, Any]) -> int:
    """Take out the rows :func:`plan` located (by ``ctid``, partition by partition); how many were."""
    deleted = 0
    for rel, tids in sorted(todo["delete"].items()):
        deleted += conn.execute(sql.SQL("DELETE FROM ONLY {} WHERE ctid = ANY(%s::tid[])").format(sql.SQL(rel)),
                                [tids]).rowcount
    return deleted


def insert(conn: psycopg.Connection, table: str, todo: dict[str, Any], writable: list[str], deleted: int,
           problems: list[str]) -> str | None:
    """Put back the rows the run took out (after :func:`delete` took out ``deleted``); what was done, or None when
    nothing. The rows each statement wrote are counted: anything but the plan is a problem (the undo is rolled
    back)."""
    rows = [json.loads(row) for row, n in todo["insert"] for _ in range(n)]
    inserted = 0
    if rows:
        inserted = conn.execute(sql.SQL("INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE SELECT {rcols} FROM "
                                        "json_populate_recordset(NULL::{t}, {rows}) r").format(
            t=sql.SQL(table), cols=idents(writable), rcols=idents(writable, "r."),
            rows=sql.Literal(json.dumps(rows)))).rowcount
    planned = sum(len(tids) for tids in todo["delete"].values())
    if (deleted, inserted) != (planned, len(rows)):
        problems.append(f"{table}: {deleted} row(s) deleted and {inserted} inserted, not {planned} and {len(rows)} "
                        "(a trigger or rule rewrote the undo's own writes)")
    if not deleted and not rows:
        return None
    return f"{table}: {deleted} row(s) deleted, {inserted} re-inserted (no primary key: matched by their values)"


def verify(conn: psycopg.Connection, table: str, entry: dict[str, Any], todo: dict[str, Any]) -> list[str]:
    """Inside the undo's transaction, under the observation's settings: every value the run changed counts what
    the undo meant it to (a trigger that rewrote a re-inserted row, say, would make it count otherwise)."""
    expect = todo.get("expect") or {}
    now = _counts_of(conn, table, bool(entry["only"]), entry["columns"], list(expect))
    wrong = [h for h, n in expect.items() if now.get(h, 0) != n]
    if not wrong:
        return []
    return [f"{table}: {len(wrong)} row value(s) not counted as the undo meant (e.g. {now.get(wrong[0], 0)} rows of "
            f"one, not {expect[wrong[0]]})"]


def _buckets(conn: psycopg.Connection, rel: str, only: bool, columns: list[str]) -> dict[int, tuple[int, str]]:
    # OFFSET 0 keeps the subquery apart, so each row's hash is computed once, not once per use (1M rows: 0.31 s
    # instead of 0.47 s here).
    query = sql.SQL("SELECT s.h & {m}, count(*), sum(s.h)::text FROM (SELECT {h} AS h FROM {t} t OFFSET 0) s "
                    "GROUP BY 1").format(
        m=sql.Literal(BUCKETS - 1), h=row_hash_expr(columns), t=relation_sql(rel, only))
    return {int(b): (int(n), str(total)) for b, n, total in conn.execute(query)}


def _counts_in(conn: psycopg.Connection, rel: str, only: bool, columns: list[str],
               buckets: list[int]) -> dict[str, int]:
    """hash → rows, for the rows whose hash falls in ``buckets``."""
    if not buckets:
        return {}
    query = sql.SQL("SELECT s.h::text, count(*) FROM (SELECT {h} AS h FROM {t} t OFFSET 0) s "
                    "WHERE s.h & {m} = ANY(%s::bigint[]) GROUP BY s.h").format(
        h=row_hash_expr(columns), t=relation_sql(rel, only), m=sql.Literal(BUCKETS - 1))
    return {str(h): int(n) for h, n in conn.execute(query, [buckets])}


def _counts_of(conn: psycopg.Connection, rel: str, only: bool, columns: list[str], hashes: list[str]) -> dict[str, int]:
    """hash → rows, for ``hashes``."""
    if not hashes:
        return {}
    query = sql.SQL("SELECT s.h::text, count(*) FROM (SELECT {h} AS h FROM {t} t OFFSET 0) s "
                    "WHERE s.h = ANY(%s::bigint[]) GROUP BY s.h").format(h=row_hash_expr(columns),
                                                                       t=relation_sql(rel, only))
    return {str(h): int(n) for h, n in conn.execute(query, [hashes])}


def _rows_of(conn: psycopg.Connection, rel: str, only: bool, columns: list[str], hashes: list[str]) -> dict[str, str]:
    """hash → one row of that hash as JSON."""
    if not hashes:
        return {}
    query = sql.SQL("SELECT DISTINCT ON (s.h) s.h::text, s.j FROM (SELECT {h} AS h, row_to_json(t)::text AS j "
                    "FROM {t} t) s WHERE s.h = ANY(%s::bigint[]) ORDER BY s.h").format(
        h=row_hash_expr(columns), t=relation_sql(rel, only))
    return {str(h): str(j) for h, j in conn.execute(query, [hashes])}
