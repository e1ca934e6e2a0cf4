"""The undo of the objects a run added (columns, indexes, constraints, tables, views, functions, sequences).

**Capture** (:func:`capture`, for :func:`adapters.postgres.undo.capture`): each added object the undo can drop
one by one is recorded with the names its addition implied (a column's own constraints …); an added table or
column gets a digest of what it holds (:func:`table_digest`, :func:`column_digest`). A change that cannot be
undone object by object — a drop, an altered definition, a constraint on a table the observation does not hold —
makes the record say so (``fallback``): the rollback then restores the whole checkpoint. A sequence's position
is not restored (other sessions may have taken values since).

**Undo** (:func:`drop`, in :data:`DROP_ORDER`, inside :func:`adapters.postgres.undo.undo`'s transaction): an
object already gone is left alone (an undo that ran before); an added table or column someone wrote into since,
or an added column others built something on since (an index, a constraint, a view — dropping the column would
drop them), is a **conflict**, refused unless forced. :func:`exists` is what the undo's verification asks
of each dropped object.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from adapters.postgres.diff import split_name, table_of
from adapters.postgres.observe import row_hash_expr
from adapters.postgres.undo_tables import columns_exist
from shadow.changes import Change

# What an added object's inverse is, in the order objects are dropped (what depends on others goes first).
DROP_ORDER = ("view", "materialized_view", "constraint", "index", "column", "table", "function", "procedure",
              "sequence")
SEQUENCE_POSITION = {"last_value", "is_called"}


def capture(record: dict[str, Any], change: Change, objects: dict[str, Any]) -> None:
    """Record what undoing ``change`` takes in ``record["objects"]`` — or, when it cannot be undone object by
    object, why not in ``record["fallback"]``. ``objects``: the observation after the statements."""
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


def drop(conn: psycopg.Connection, obj: dict[str, Any], record_objects: list[dict[str, Any]], put_back: set[str],
         force: bool, conflicts: list[str], done: list[str]) -> None:
    """Drop the added object ``obj`` unless it is gone already or someone wrote into it or built on it since (a
    conflict, dropped anyway with ``force``). ``put_back``: the tables put back whole from the checkpoint."""
    kind, name, table = obj["kind"], obj["name"], obj.get("table")
    if not exists(conn, kind, name, table, obj.get("column")):
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


def exists(conn: psycopg.Connection, kind: str, name: str, table: str | None, column: str | None) -> bool:
    """Whether the object ``kind`` ``name`` (of ``table``; a column: ``column`` of it) is there."""
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
