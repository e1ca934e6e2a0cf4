"""Undo only what a run did, and keep everyone else's writes (Bytebase calls the capture "prior backup").

**Capture.** Inside the apply's own transaction, once production's change set was verified and before COMMIT,
:func:`capture` records what undoing exactly that change needs: for each table whose rows the statements changed
(by primary key) the rows they updated or deleted as they were before (``row_to_json``, read from the pristine
copy or the transaction's own copy, :mod:`adapters.postgres.own_effect`) and a hash of each inserted or updated row
as the statements left it; and the objects they added (columns, indexes, constraints, tables, views, functions,
sequences), with a digest of what an added table or column holds. Cost follows the rows and objects changed.
A table without a primary key keeps the run's multiset difference instead: its rows are undone matched by value
(``multisets``, :mod:`adapters.postgres.undo_multiset`). A table whose rows cannot be kept one by one (a keyless
one with too many changed rows or changed columns, rows not counted one by one, a ``SQL_ASCII`` database) is put
back whole from the checkpoint's data instead, in the same transaction (``restore_tables``,
:mod:`adapters.postgres.undo_tables`). A change to a definition that cannot be undone object by object — a drop, an
altered definition — makes the record say so (``fallback``): the rollback then restores the whole checkpoint.

**Undo.** :func:`undo` runs in one transaction. For every captured row it compares production now with what the
apply left: a row still as the apply left it is put back (an inserted row deleted, an updated one given its old
values, a deleted one re-inserted); a row already as it was before is left alone (an undo that ran before — the
undo is idempotent); anything else is a **conflict** — someone changed that row since — refused unless forced.
Added objects are then dropped (after checking that nobody wrote into an added table or column, or built something
on an added column, since), and the result verified inside the transaction: every captured row as it was before,
every added object gone. Untouched tables are never touched: same OIDs, same statistics, their rows as others wrote
them; objects others created since stay.

This module holds the two entry points and the record's format; the rows of a table with a primary key are kept and
written back by :mod:`adapters.postgres.undo_rows`, the added objects by :mod:`adapters.postgres.undo_objects`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from adapters.postgres import undo_definitions, undo_multiset, undo_objects, undo_rows, undo_tables
from adapters.postgres.archive_entries import Scripts
from adapters.postgres.observe import set_read_settings
from adapters.postgres.undo_objects import DROP_ORDER as DROP_ORDER
from adapters.postgres.undo_objects import SEQUENCE_POSITION as SEQUENCE_POSITION
from adapters.postgres.undo_objects import column_digest as column_digest
from adapters.postgres.undo_objects import table_digest as table_digest
from shadow.changes import Change, RowDelta

VERSION = 3  # 2: tables without a primary key undone row by row (``multisets``, adapters.postgres.undo_multiset)
#             3: definitions put back from the checkpoint (``recreate``, ``readd``, adapters.postgres.undo_definitions)


def capture(conn: psycopg.Connection, before_of: Any, before: dict[str, Any], after: dict[str, Any],
            rows: dict[str, RowDelta], changes: list[Change],
            checkpoint: dict[str, Any] | None = None, unkept: str | None = None) -> dict[str, Any]:
    """The undo record of the statements' own change set ``changes`` (``rows``: its counted row changes, with
    keys). ``before_of(table)`` is ``(connection, relation name)`` holding the table's rows before the statements;
    ``checkpoint``: the checkpoint's observation (a table whose rows cannot be undone one by one is put back from
    the checkpoint's data, see :mod:`adapters.postgres.undo_tables`); ``unkept``: why no row was kept one by one
    (an apply not in one transaction, :mod:`adapters.postgres.stepwise`), when none was."""
    record: dict[str, Any] = {"version": VERSION, "tables": {}, "objects": [], "restore_tables": {},
                              "multisets": {}, "recreate": {}, "readd": [], "fallback": None}
    encoding = conn.execute("SHOW server_encoding").fetchone()
    sql_ascii = encoding is not None and str(encoding[0]).upper() == "SQL_ASCII"
    if sql_ascii and not all(c.name.isascii() for c in changes):
        record["fallback"] = ("the database is SQL_ASCII and the run changed objects whose names are not ASCII: "
                              "they cannot travel through the undo record unchanged")
        return record
    added_tables = {c.name for c in changes if c.op == "add" and c.kind == "table"}
    whole: dict[str, str] = {}  # table → why its rows are put back from the checkpoint rather than one by one
    # A changed definition put back from the checkpoint (adapters.postgres.undo_definitions); a table re-created
    # whole takes its rows with it.
    placed = {c.address: how for c in changes if checkpoint and "objects" in checkpoint
              and (how := undo_definitions.place(c, checkpoint["objects"], after["objects"]))}
    recreated = {table for how, table in placed.values() if how == "recreate"}
    for change in changes:
        if change.address not in placed:
            undo_objects.capture(record, change, after["objects"])
        if change.kind != "rows" or change.name in added_tables or change.name in recreated:
            continue
        if sql_ascii:
            # Its bytes have no declared encoding: keys and rows cannot travel through JSON and back unchanged.
            whole.setdefault(change.name, "the database is SQL_ASCII: its rows cannot be kept one by one")
        elif change.name not in rows:
            whole.setdefault(change.name, unkept or f"the rows of {change.name} were not counted one by one")
    with conn.transaction(force_rollback=True):  # read under READ_SETTINGS without leaving them set
        set_read_settings(conn)
        for table, delta in sorted(rows.items()):
            if table not in added_tables and table not in whole and table not in recreated:
                why = undo_rows.capture(record, conn, before_of, table, delta, before["data"][table],
                                        after["data"][table])
                if why:
                    whole[table] = why
        for obj in record["objects"]:
            if obj["kind"] == "column":
                obj["digest"] = column_digest(conn, obj["table"], obj["column"])
            elif obj["kind"] == "table":
                obj["columns"] = list((after["data"].get(obj["name"]) or {}).get("columns") or [])
                obj["digest"] = table_digest(conn, obj["name"], obj["columns"])
        for table, why in sorted(whole.items()):
            problem = undo_tables.capture(record["restore_tables"], conn, table, why, checkpoint, before, after)
            if problem:
                record["fallback"] = record["fallback"] or problem
        if placed and checkpoint is not None:
            undo_definitions.capture(record, conn, placed, changes, checkpoint, before, after)
    return record


# -- the undo ------------------------------------------------------------------------------------------------

def undo(conn: psycopg.Connection, record: dict[str, Any], force: bool, lock_timeout: float = 5.0,
         files: dict[int, Path] | None = None, on_begin: Callable[[int], None] | None = None,
         scripts: dict[str, Scripts] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Undo ``record`` in one transaction: (conflicts, what was done, problems). With conflicts (and not
    ``force``) or problems, the transaction is rolled back and production is as it was. ``files``: the
    checkpoint's data of the tables the record puts back whole (:func:`undo_tables.archive_oids`); ``scripts``: what
    re-creates each table the record re-creates (:mod:`adapters.postgres.undo_definitions`). ``on_begin``:
    called with the transaction's id before anything is written (kept, it tells whether the undo committed)."""
    conflicts: list[str] = []
    done: list[str] = []
    problems: list[str] = []
    restore_tables = record.get("restore_tables") or {}
    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = {max(1, int(lock_timeout * 1000))}")
            if on_begin is not None:
                xid = conn.execute("SELECT txid_current()").fetchone()
                assert xid is not None
                on_begin(int(xid[0]))
            path = conn.execute("SELECT current_setting('search_path')").fetchone()
            set_read_settings(conn)
            if int(record.get("version", 1)) > VERSION:
                problems.append(f"the undo record was kept by a newer shadow (record version {record['version']}, "
                                f"this shadow reads up to {VERSION}): upgrade shadow; nothing was changed")
                raise psycopg.Rollback()
            recreating = _judge_definitions(conn, record, force, conflicts, problems)
            refills = undo_tables.load(conn, restore_tables, files or {}, force, conflicts, problems)
            multisets = record.get("multisets") or {}
            todos = {table: undo_multiset.plan(conn, table, entry, force, conflicts, problems)
                     for table, entry in sorted(multisets.items())}
            if problems or (conflicts and not force):
                raise psycopg.Rollback()
            for table in recreating:
                undo_definitions.recreate(conn, table, record["recreate"][table], (scripts or {}).get(table), done,
                                          problems)
            if problems:
                raise psycopg.Rollback()
            set_read_settings(conn)  # the archive's SQL set its own search_path
            undo_rows.undo_all_rows(conn, record["tables"], refills, multisets, todos, force, conflicts, done,
                                    problems, str(path[0]) if path else "")
            for table, todo in todos.items():
                problems += undo_multiset.verify(conn, table, multisets[table], todo)
            if problems:
                raise psycopg.Rollback()
            for obj in sorted(record["objects"], key=lambda o: DROP_ORDER.index(o["kind"])):
                undo_objects.drop(conn, obj, record["objects"], set(restore_tables), force, conflicts, done)
            undo_definitions.readd_all(conn, record, force, conflicts, done)
            if conflicts and not force:
                raise psycopg.Rollback()
            problems = _verify(conn, record) + undo_definitions.verify(conn, record)
            if problems:
                raise psycopg.Rollback()
    except psycopg.errors.LockNotAvailable:
        problems = [f"a lock the undo needs was held longer than {lock_timeout:g} s by another session; nothing "
                    "was changed — retry when production is less busy"]
    return conflicts, done, problems


def _judge_definitions(conn: psycopg.Connection, record: dict[str, Any], force: bool, conflicts: list[str],
                       problems: list[str]) -> list[str]:
    """The tables to re-create (:func:`undo_definitions.judge`), each locked; conflicts and problems noted."""
    recreate = record.get("recreate") or {}
    if not recreate:
        return []
    now = undo_definitions.observe_objects(conn)[0]
    allowed = {o["name"] for o in record["objects"] if o["kind"] == "constraint"}
    allowed |= {key for entry in recreate.values() for key in entry["keys"]}
    return [table for table, entry in sorted(recreate.items())
            if undo_definitions.judge(conn, table, entry, now, allowed, force, conflicts, problems)]


def _verify(conn: psycopg.Connection, record: dict[str, Any]) -> list[str]:
    """Inside the undo's transaction: every captured row as it was, every object the run added gone. (Objects
    others created since are theirs: kept, not compared with the checkpoint.)"""
    problems: list[str] = []
    for table, rows in sorted(record["tables"].items()):
        keys = [r[0] for r in rows["insert"]] + [r[0] for r in rows["update"]] + [r[0] for r in rows["delete"]]
        now = undo_rows.read(conn, table, rows["key"], keys, rows["before_columns"])
        wrong = [k for k, *_ in rows["insert"] if k in now]
        wrong += [k for k, pre, *_ in rows["update"] + rows["delete"] if now.get(k, (None,))[0] != pre]
        if wrong:
            problems.append(f"{table}: {len(wrong)} row(s) not as they were before the run (e.g. {wrong[0]})")
    for obj in record["objects"]:
        if undo_objects.exists(conn, obj["kind"], obj["name"], obj.get("table"), obj.get("column")):
            problems.append(f"{obj['kind']} {obj['name']} is still there")
    problems += undo_tables.verify(conn, record.get("restore_tables") or {})
    return problems[:20]
