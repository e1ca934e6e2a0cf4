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
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from adapters.postgres.diff import split_name, table_of
from adapters.postgres.observe import row_hash_expr, set_read_settings
from adapters.postgres import undo_multiset, undo_tables
from adapters.postgres.rowdiff import key_expr, with_keys
from adapters.postgres.undo_tables import Refill, columns_exist, idents
from shadow.changes import Change, RowDelta

VERSION = 2  # 2: tables without a primary key undone row by row (``multisets``, adapters.postgres.undo_multiset)
# What an added object's inverse is, in the order objects are dropped (what depends on others goes first).
DROP_ORDER = ("view", "materialized_view", "constraint", "index", "column", "table", "function", "procedure",
              "sequence")
SEQUENCE_POSITION = {"last_value", "is_called"}


def capture(conn: psycopg.Connection, before_of: Any, before: dict[str, Any], after: dict[str, Any],
            rows: dict[str, RowDelta], changes: list[Change],
            checkpoint: dict[str, Any] | None = None, unkept: str | None = None) -> dict[str, Any]:
    """The undo record of the statements' own change set ``changes`` (``rows``: its counted row changes, with
    keys). ``before_of(table)`` is ``(connection, relation name)`` holding the table's rows before the statements;
    ``checkpoint``: the checkpoint's observation (a table whose rows cannot be undone one by one is put back from
    the checkpoint's data, see :mod:`adapters.postgres.undo_tables`); ``unkept``: why no row was kept one by one
    (an apply not in one transaction, :mod:`adapters.postgres.stepwise`), when none was."""
    record: dict[str, Any] = {"version": VERSION, "tables": {}, "objects": [], "restore_tables": {},
                              "multisets": {}, "fallback": None}
    encoding = conn.execute("SHOW server_encoding").fetchone()
    sql_ascii = encoding is not None and str(encoding[0]).upper() == "SQL_ASCII"
    if sql_ascii and not all(c.name.isascii() for c in changes):
        record["fallback"] = ("the database is SQL_ASCII and the run changed objects whose names are not ASCII: "
                              "they cannot travel through the undo record unchanged")
        return record
    added_tables = {c.name for c in changes if c.op == "add" and c.kind == "table"}
    whole: dict[str, str] = {}  # table → why its rows are put back from the checkpoint rather than one by one
    for change in changes:
        _object(record, change, after["objects"])
        if change.kind != "rows" or change.name in added_tables:
            continue
        if sql_ascii:
            # Its bytes have no declared encoding: keys and rows cannot travel through JSON and back unchanged.
            whole.setdefault(change.name, "the database is SQL_ASCII: its rows cannot be kept one by one")
        elif change.name not in rows:
            whole.setdefault(change.name, unkept or f"the rows of {change.name} were not counted one by one")
    with conn.transaction(force_rollback=True):  # read under READ_SETTINGS without leaving them set
        set_read_settings(conn)
        for table, delta in sorted(rows.items()):
            if table not in added_tables and table not in whole:
                why = _rows(record, conn, before_of, table, delta, before["data"][table], after["data"][table])
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
    return record


def _object(record: dict[str, Any], change: Change, objects: dict[str, Any]) -> None:
    if change.kind == "rows":
        return
    if change.kind == "sequence" and change.op == "alter" and set(change.detail) <= SEQUENCE_POSITION:
        return  # a position: not restored (other sessions may have taken values since)
    props = objects.get(change.kind, {}).get(change.name) or {}
    table = table_of(change.kind, change.name, props)
    if change.op != "add" or change.kind not in DROP_ORDER or (change.kind == "constraint"
                                                              and table not in objects.get("table", {})):
        # Nor one table at a time: its definition is put back only by re-creating it (a new OID), which drops
        # or breaks what other tables, views and functions build on it. The whole checkpoint is restored.
        record["fallback"] = record["fallback"] or (f"`{change.address}` cannot be undone object by object, nor by "
                                                    "putting back one table (re-creating it would drop what others "
                                                    "build on it)")
        return
    obj = {"kind": change.kind, "name": change.name, "table": table,
           "implied": sorted({part.name for part in change.walk()} - {change.name})}
    if change.kind == "column":
        obj["column"] = split_name(change.name)[-1]
    record["objects"].append(obj)


def _rows(record: dict[str, Any], conn: psycopg.Connection, before_of: Any, table: str, delta: RowDelta,
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
        pre = _read(old_conn, old_rel, key, delta.keys["update"] + delta.keys["delete"], b_cols, json_too=True)
    post = _read(conn, table, key, delta.keys["insert"] + delta.keys["update"], a_cols)
    record["tables"][table] = {
        "key": key, "before_columns": b_cols, "after_columns": a_cols, "only": bool(now.get("only", True)),
        "insert": [[k, post[k][0]] for k in delta.keys["insert"]],
        "update": [[k, pre[k][0], post[k][0], pre[k][1]] for k in delta.keys["update"]],
        "delete": [[k, pre[k][0], pre[k][1]] for k in delta.keys["delete"]],
    }
    return None


def _read(conn: psycopg.Connection, rel: str, key: list[str], keys: list[str], columns: list[str],
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


def column_digest(conn: psycopg.Connection, table: str, column: str) -> str:
    """How many values an (added) column holds, and a hash over them."""
    row = conn.execute(sql.SQL("SELECT count({c}), COALESCE(sum(hashtextextended({c}::text, 0)::numeric), 0)::text "
                               "FROM {t}").format(c=sql.SQL(column), t=sql.SQL(table))).fetchone()
    assert row is not None
    return f"{row[0]}:{row[1]}"


def table_digest(conn: psycopg.Connection, table: str, columns: list[str]) -> str:
    """How many rows an (added) table holds, and a hash over them."""
    if not columns:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(table))).fetchone()
        return f"{row[0] if row else 0}:"
    row = conn.execute(sql.SQL("SELECT count(*), COALESCE(sum({h}::numeric), 0)::text FROM {t} t").format(
        h=row_hash_expr(columns), t=sql.SQL(table))).fetchone()
    assert row is not None
    return f"{row[0]}:{row[1]}"


# -- the undo ------------------------------------------------------------------------------------------------

def undo(conn: psycopg.Connection, record: dict[str, Any], force: bool, lock_timeout: float = 5.0,
         files: dict[int, Path] | None = None,
         on_begin: Callable[[int], None] | None = None) -> tuple[list[str], list[str], list[str]]:
    """Undo ``record`` in one transaction: (conflicts, what was done, problems). With conflicts (and not
    ``force``) or problems, the transaction is rolled back and production is as it was. ``files``: the
    checkpoint's data of the tables the record puts back whole (:func:`undo_tables.archive_oids`). ``on_begin``:
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
            refills = undo_tables.load(conn, restore_tables, files or {}, force, conflicts, problems)
            multisets = record.get("multisets") or {}
            todos = {table: undo_multiset.plan(conn, table, entry, force, conflicts, problems)
                     for table, entry in sorted(multisets.items())}
            if problems or (conflicts and not force):
                raise psycopg.Rollback()
            _undo_all_rows(conn, record["tables"], refills, multisets, todos, force, conflicts, done, problems,
                           str(path[0]) if path else "")
            for table, todo in todos.items():
                problems += undo_multiset.verify(conn, table, multisets[table], todo)
            if problems:
                raise psycopg.Rollback()
            for obj in sorted(record["objects"], key=lambda o: DROP_ORDER.index(o["kind"])):
                _drop(conn, obj, record["objects"], set(restore_tables), force, conflicts, done)
            if conflicts and not force:
                raise psycopg.Rollback()
            problems = _verify(conn, record)
            if problems:
                raise psycopg.Rollback()
    except psycopg.errors.LockNotAvailable:
        problems = [f"a lock the undo needs was held longer than {lock_timeout:g} s by another session; nothing "
                    "was changed — retry when production is less busy"]
    return conflicts, done, problems


@dataclass
class _Plan:
    """What undoing one table's rows takes: keys to delete, rows to put back, rows to re-insert."""

    delete: list[str] = field(default_factory=list)
    put_back: list[dict[str, Any]] = field(default_factory=list)
    reinsert: list[dict[str, Any]] = field(default_factory=list)


def _undo_all_rows(conn: psycopg.Connection, tables: dict[str, Any], refills: dict[str, Refill],
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
    now_a = _read(conn, table, key, every, a_cols) if columns_exist(conn, table, a_cols) else {}
    now_b = _read(conn, table, key, every, b_cols)
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


def _drop(conn: psycopg.Connection, obj: dict[str, Any], record_objects: list[dict[str, Any]], put_back: set[str],
          force: bool, conflicts: list[str], done: list[str]) -> None:
    kind, name, table = obj["kind"], obj["name"], obj.get("table")
    if not _exists(conn, kind, name, table, obj.get("column")):
        return  # already undone
    # A column of a table put back whole: the table's own check covered it (the rows it dropped held values).
    if (kind == "column" and table not in put_back
            and column_digest(conn, str(table), obj["column"]) != obj.get("digest")):
        conflicts.append(f"column {name}: added by the run, written to by someone since")
        if not force:
            return
    if kind == "column":
        theirs = _built_on(conn, str(table), _unquoted(obj["column"]), _added_names(record_objects))
        if theirs:
            conflicts.append(f"column {name}: added by the run, and {', '.join(theirs)} built on it since (dropping "
                             "the column would drop them)")
            if not force:
                return
    if kind == "table" and table_digest(conn, name, obj.get("columns") or []) != obj.get("digest"):
        conflicts.append(f"table {name}: added by the run, written to by someone since")
        if not force:
            return
    statement = {
        "column": sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(sql.SQL(str(table)), sql.SQL(obj.get("column", ""))),
        "constraint": sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(sql.SQL(str(table)),
                                                                          sql.SQL(split_name(name)[-1])),
        "materialized_view": sql.SQL("DROP MATERIALIZED VIEW {}").format(sql.SQL(name)),
    }.get(kind, sql.SQL("DROP {} {}").format(sql.SQL(kind.upper()), sql.SQL(name)))
    conn.execute(statement)
    done.append(f"dropped {kind} {name}")


def _added_names(objects: list[dict[str, Any]]) -> set[str]:
    """The names of what the run added, with what its additions implied (a column's own constraints …)."""
    return {o["name"] for o in objects} | {name for o in objects for name in o.get("implied", [])}


def _built_on(conn: psycopg.Connection, table: str, column: str, ours: set[str]) -> list[str]:
    """What depends on ``table``'s ``column`` and is not the run's own: indexes, constraints, views."""
    rows = conn.execute("""
        SELECT CASE WHEN d.classid = 'pg_class'::regclass THEN 'index ' || d.objid::regclass::text
                    WHEN d.classid = 'pg_constraint'::regclass THEN 'constraint ' || (
                        SELECT quote_ident(conname) FROM pg_constraint WHERE oid = d.objid)
                    ELSE 'view ' || (SELECT ev_class::regclass::text FROM pg_rewrite WHERE oid = d.objid) END
        FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = %s::regclass AND a.attname = %s
          AND d.deptype IN ('a', 'n')  -- not the column's own default (pg_attrdef), which goes with it
          AND d.classid IN ('pg_class'::regclass, 'pg_constraint'::regclass, 'pg_rewrite'::regclass)
          AND NOT (d.classid = 'pg_class'::regclass AND d.objid = d.refobjid)""", [table, column]).fetchall()
    out = []
    for (what,) in rows:
        if what is None:
            continue
        kind, _, name = str(what).partition(" ")
        qualified = f"{table}.{name}" if kind == "constraint" else name
        if qualified not in ours and name not in ours:
            out.append(str(what))
    return sorted(out)


def _exists(conn: psycopg.Connection, kind: str, name: str, table: str | None, column: str | None) -> bool:
    if kind == "column":
        return column is not None and table is not None and columns_exist(conn, table, [_unquoted(column)])
    if kind == "constraint":
        row = conn.execute("SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s) AND quote_ident(conname) = %s",
                           [table, split_name(name)[-1]]).fetchone()
        return row is not None
    if kind in ("function", "procedure"):
        return conn.execute("SELECT to_regprocedure(%s)", [name]).fetchone() not in (None, (None,))
    return conn.execute("SELECT to_regclass(%s)", [name]).fetchone() not in (None, (None,))


def _unquoted(part: str) -> str:
    return part[1:-1].replace('""', '"') if part.startswith('"') else part


def _verify(conn: psycopg.Connection, record: dict[str, Any]) -> list[str]:
    """Inside the undo's transaction: every captured row as it was, every object the run added gone. (Objects
    others created since are theirs: kept, not compared with the checkpoint.)"""
    problems: list[str] = []
    for table, rows in sorted(record["tables"].items()):
        keys = [r[0] for r in rows["insert"]] + [r[0] for r in rows["update"]] + [r[0] for r in rows["delete"]]
        now = _read(conn, table, rows["key"], keys, rows["before_columns"])
        wrong = [k for k, *_ in rows["insert"] if k in now]
        wrong += [k for k, pre, *_ in rows["update"] + rows["delete"] if now.get(k, (None,))[0] != pre]
        if wrong:
            problems.append(f"{table}: {len(wrong)} row(s) not as they were before the run (e.g. {wrong[0]})")
    for obj in record["objects"]:
        if _exists(conn, obj["kind"], obj["name"], obj.get("table"), obj.get("column")):
            problems.append(f"{obj['kind']} {obj['name']} is still there")
    problems += undo_tables.verify(conn, record.get("restore_tables") or {})
    return problems[:20]
