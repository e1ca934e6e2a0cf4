"""The undo of the rows of tables with a primary key, key by key; and every table's rows written back in an order
foreign keys accept.

**Capture** (:func:`capture`, for :func:`adapters.postgres.undo.capture`): for a table whose rows the statements
changed by primary key, the rows they updated or deleted as they were before (``row_to_json``, read where
``before_of`` says) and a hash of each inserted or updated row as the statements left it. A table with no key on
either side is handed to :mod:`adapters.postgres.undo_multiset`; for a table whose rows cannot be kept one by one
it says why, and that table is put back whole instead (:mod:`adapters.postgres.undo_tables`).

**Undo** (:func:`undo_all_rows`, inside :func:`adapters.postgres.undo.undo`'s transaction): each captured row is
locked, then classified — as the apply left it (undone), as it was before (already undone: left alone), or
neither (a **conflict**, undone only when forced). Deletes go from referencing tables before the tables they
reference, rows put back and re-inserted into referenced tables before the tables referencing them; the tables
put back whole and the keyless ones undone by value take their place in that order. An updated row is put back
one column at a time, only where it differs, so ``UPDATE OF column`` triggers fire as they did for the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from adapters.postgres import undo_multiset, undo_tables
from adapters.postgres.observe import row_hash_expr, set_read_settings
from adapters.postgres.rowdiff import with_keys
from adapters.postgres.undo_tables import Refill, columns_exist, idents
from shadow.changes import RowDelta


def capture(record: dict[str, Any], conn: psycopg.Connection, before_of: Any, table: str, delta: RowDelta,
            was: dict[str, Any], now: dict[str, Any]) -> str | None:
    """Keep the rows of ``table`` the statements changed; or say why they cannot be kept one by one."""
    key = now.get("key")
    if not key and not was.get("key") and not delta.by_key:
        entry, why = undo_multiset.capture(conn, before_of, table, delta, was, now)
        if entry is not None:
            record["multisets"][table] = entry
        return why
    if not key or key != was.get("key") or not delta.by_key:
        return f"{table} has no primary key: its rows cannot be undone one by one"
    if not delta.keys:
        return f"the changed keys of {table} were not collected"
    b_cols, a_cols = list(was["columns"]), list(now["columns"])
    old_conn, old_rel = before_of(table)
    with old_conn.transaction(force_rollback=True):
        set_read_settings(old_conn)
        pre = read(old_conn, old_rel, key, delta.keys["update"] + delta.keys["delete"], b_cols, json_too=True)
    post = read(conn, table, key, delta.keys["insert"] + delta.keys["update"], a_cols)
    record["tables"][table] = {
        "key": key, "before_columns": b_cols, "after_columns": a_cols, "only": bool(now.get("only", True)),
        "insert": [[k, post[k][0]] for k in delta.keys["insert"]],
        "update": [[k, pre[k][0], post[k][0], pre[k][1]] for k in delta.keys["update"]],
        "delete": [[k, pre[k][0], pre[k][1]] for k in delta.keys["delete"]],
    }
    return None


def read(conn: psycopg.Connection, rel: str, key: list[str], keys: list[str], columns: list[str],
         json_too: bool = False) -> dict[str, tuple[str, str | None]]:
    """key → (row hash over ``columns``, the row as JSON when ``json_too``) for the rows of relation ``rel``
    (a quoted name; its partitions' rows too) with ``keys``."""
    row = sql.SQL("row_to_json(t)::text") if json_too else sql.SQL("NULL")
    what = sql.SQL("{}::text, {}").format(row_hash_expr(columns), row)
    return {k: (str(h), j) for k, h, j in with_keys(conn, rel, sql.SQL(rel), key, keys, what)}


def _by_keys(key: list[str], rel: str, keys: list[str]) -> sql.Composable:
    """``t``'s rows with one of ``keys`` — matched on the key columns, so the primary key's index is used."""
    records = json.dumps([dict(zip(key, json.loads(k), strict=True)) for k in keys])
    return sql.SQL("({t}) IN (SELECT {r} FROM json_populate_recordset(NULL::{rel}, {records}) r)").format(
        t=idents(key, "t."), r=idents(key, "r."), rel=sql.SQL(rel), records=sql.Literal(records))


@dataclass
class _Plan:
    """What undoing one table's rows takes: keys to delete, rows to put back, rows to re-insert."""

    delete: list[str] = field(default_factory=list)
    put_back: list[dict[str, Any]] = field(default_factory=list)
    reinsert: list[dict[str, Any]] = field(default_factory=list)


def undo_all_rows(conn: psycopg.Connection, tables: dict[str, Any], refills: dict[str, Refill],
                  multisets: dict[str, Any], todos: dict[str, Any], force: bool, conflicts: list[str],
                  done: list[str], problems: list[str], search_path: str) -> None:
    """Every table's rows, in an order foreign keys accept: deletes from referencing tables before the tables
    they reference, then rows put back and re-inserted in referenced tables before the tables referencing them.
    The tables put back whole from the checkpoint (``refills``) and the keyless ones undone by value (``todos``
    of ``multisets``, :mod:`adapters.postgres.undo_multiset`) take their place in the same order.

    The rows are read under the observation's settings; they are written under the session's own
    ``search_path``, so production's triggers find the unqualified names they use, as for any other write."""
    plans = {table: _classify(conn, table, rows, force, conflicts) for table, rows in sorted(tables.items())}
    parents_first = _fk_order(conn, list(plans) + [t for t in [*refills, *todos] if t not in plans])
    by_value = {table: (todo, _writable(conn, table, multisets[table]["columns"])) for table, todo in todos.items()}
    conn.execute("SELECT set_config('search_path', %s, true)", [search_path])
    _write_rows(conn, tables, refills, plans, by_value, parents_first, done, problems)
    set_read_settings(conn)  # (an error above rolls the whole undo back: nothing to reset then)


def _write_rows(conn: psycopg.Connection, tables: dict[str, Any], refills: dict[str, Refill],
                plans: dict[str, _Plan], by_value: dict[str, tuple[dict[str, Any], list[str]]],
                parents_first: list[str], done: list[str], problems: list[str]) -> None:
    deleted: dict[str, int] = {}
    for table in reversed(parents_first):
        if table in refills:
            deleted[table] = undo_tables.delete_surplus(conn, refills[table])
        elif table in by_value:
            deleted[table] = undo_multiset.delete(conn, by_value[table][0])
        elif plans[table].delete:
            key = tables[table]["key"]
            conn.execute(sql.SQL("DELETE FROM {t} t WHERE {w}").format(
                t=sql.SQL(table), w=_by_keys(key, table, plans[table].delete)))
    for table in parents_first:
        if table in refills:
            inserted = undo_tables.insert_missing(conn, refills[table])
            whole = refills[table].table
            done.append(f"{table}: put back from the checkpoint{f' (a partition of {whole})' if whole != table else ''}"
                        f" — {deleted[table]} row(s) deleted, {inserted} "
                        f"{'updated or inserted by key' if refills[table].key else 'inserted'}")
        elif table in by_value:
            todo, writable = by_value[table]
            said = undo_multiset.insert(conn, table, todo, writable, deleted[table], problems)
            if said:
                done.append(said)
        else:
            _put_back(conn, table, tables[table]["key"], tables[table]["before_columns"], plans[table])
    for table, plan in plans.items():
        if plan.delete or plan.put_back or plan.reinsert:
            done.append(f"{table}: {len(plan.delete)} row(s) deleted, {len(plan.put_back)} put back, "
                        f"{len(plan.reinsert)} re-inserted")


def _classify(conn: psycopg.Connection, table: str, rows: dict[str, Any], force: bool,
              conflicts: list[str]) -> _Plan:
    """Each captured row as the apply left it (undo it), as it was before (already undone: leave it), or neither
    (a conflict: someone changed it since; undone only with ``force``)."""
    key, b_cols, a_cols = rows["key"], rows["before_columns"], rows["after_columns"]
    every = [r[0] for r in rows["insert"]] + [r[0] for r in rows["update"]] + [r[0] for r in rows["delete"]]
    # Lock them first: a write committed between the reads below and the undo's own write would be overwritten
    # unseen (READ COMMITTED re-reads the row at the write, not at the read). A row still being written by an open
    # transaction is waited for (at most the undo's lock_timeout), then read as that writer left it.
    with_keys(conn, table, sql.SQL(table), key, every, sql.SQL("1"), lock=True)
    now_a = read(conn, table, key, every, a_cols) if columns_exist(conn, table, a_cols) else {}
    now_b = read(conn, table, key, every, b_cols)
    plan = _Plan()

    def as_left(k: str, post: str) -> bool:
        return now_a.get(k, ("", None))[0] == post

    for k, post in rows["insert"]:
        if k in now_b and not as_left(k, post):
            conflicts.append(f"{table} row {k}: inserted by the run, changed by someone since")
        if k in now_b and (force or as_left(k, post)):
            plan.delete.append(k)
    for k, pre, post, old in rows["update"]:
        if as_left(k, post) or (force and now_b.get(k, ("", None))[0] != pre):
            if not as_left(k, post):
                conflicts.append(f"{table} row {k}: updated by the run, changed by someone since")
            (plan.put_back if k in now_b else plan.reinsert).append(json.loads(old))
        elif now_b.get(k, ("", None))[0] != pre:
            conflicts.append(f"{table} row {k}: updated by the run, changed by someone since")
    for k, pre, old in rows["delete"]:
        if k not in now_b:
            plan.reinsert.append(json.loads(old))
        elif now_b[k][0] != pre:
            conflicts.append(f"{table} row {k}: deleted by the run, written again by someone since")
            if force:
                plan.delete.append(k)
                plan.reinsert.append(json.loads(old))
    return plan


def _fk_order(conn: psycopg.Connection, tables: list[str]) -> list[str]:
    """``tables`` with every table after the tables its foreign keys reference (a cycle keeps its given order)."""
    edges = {(str(child), str(parent)) for child, parent in conn.execute(
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint WHERE contype = 'f'")}
    ordered: list[str] = []
    pending = list(tables)
    while pending:
        ready = [t for t in pending if not any((t, p) in edges for p in pending if p != t)] or pending[:1]
        ordered += ready
        pending = [t for t in pending if t not in ready]
    return ordered


def _put_back(conn: psycopg.Connection, table: str, key: list[str], b_cols: list[str], plan: _Plan) -> None:
    target = sql.SQL(table)
    writable = _writable(conn, table, b_cols)
    settable = [c for c in writable if c not in key and c not in _always_identity(conn, table)]
    # One column at a time, and only where it differs: an ``UPDATE OF column`` trigger fires only for a column the
    # run changed, as it did for the run's own statement — never for a value written back unchanged (compared as
    # text: json, point … have no equality operator).
    rows = sql.Literal(json.dumps(plan.put_back))
    match = sql.SQL(" AND ").join(sql.SQL("t.{c} = r.{c}").format(c=sql.Identifier(c)) for c in key)
    for column in settable if plan.put_back else []:
        conn.execute(sql.SQL("UPDATE {t} t SET {col} = r.{col} FROM json_populate_recordset(NULL::{t}, {rows}) r "
                             "WHERE {match} AND t.{col}::text IS DISTINCT FROM r.{col}::text").format(
            t=target, col=sql.Identifier(column), rows=rows, match=match))
    if plan.reinsert:
        conn.execute(sql.SQL("INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE SELECT {rcols} FROM "
                             "json_populate_recordset(NULL::{t}, {rows}) r").format(
            t=target, cols=idents(writable), rcols=idents(writable, "r."),
            rows=sql.Literal(json.dumps(plan.reinsert))))


def _writable(conn: psycopg.Connection, table: str, columns: list[str]) -> list[str]:
    """``columns`` less the generated ones (their values follow from the others)."""
    generated = {r[0] for r in conn.execute("SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass "
                                            "AND attgenerated <> ''", [table])}
    return [c for c in columns if c not in generated]


def _always_identity(conn: psycopg.Connection, table: str) -> set[str]:
    """Columns GENERATED ALWAYS AS IDENTITY: an UPDATE may not set them (an INSERT may, OVERRIDING SYSTEM VALUE)."""
    return {r[0] for r in conn.execute("SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass "
                                       "AND attidentity = 'a'", [table])}
