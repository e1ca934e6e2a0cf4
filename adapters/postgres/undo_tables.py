"""The undo's fallback for a table whose rows it cannot put back one by one: that table's data from the checkpoint.

A table without a primary key whose rows cannot be matched by value (:mod:`adapters.postgres.undo_multiset`: more
changed rows than it keeps, or changed columns), rows that were not counted one by one, a ``SQL_ASCII`` database
(its bytes cannot travel through the JSON record): the undo record then names the table instead of its rows (``restore_tables``),
with what the run left in it (row count and content hash, read inside the apply's transaction) and what the
checkpoint held. The undo puts back **only that table's data**, from the checkpoint's ``pg_dump`` archive, in the
undo's one transaction (:func:`adapters.postgres.undo.undo`) — every other table is still undone row by row and
keeps everyone else's writes, and no table is dropped, re-created or truncated: same OIDs, same definitions, same
statistics.

**How.** The table is locked against writes (``EXCLUSIVE``: reads go on) and compared with what the run left:
someone wrote to it since → a **conflict**, refused unless forced, since putting it back loses that write. So is
a write between the checkpoint and the apply (the checkpoint does not hold it either). Then the archive's COPY data
of the table (of each partition, for a partitioned table: its rows live there) is loaded into a temporary table,
and the table is brought to it as a **multiset**: the rows it holds more often than the checkpoint did are
deleted, the rows it holds less often are inserted (``OVERRIDING SYSTEM VALUE``; the archive's column list already
leaves out generated columns, which follow from the others). Rows the run did not touch are not touched. A table
with a primary key (one the checkpoint has too) is matched on it instead: rows whose key the checkpoint lacks are
deleted, rows whose key it holds with other values are updated in place, rows whose key is missing are inserted —
a row other tables reference by its key is never deleted (a foreign key would refuse it, or cascade).

Why not empty it and refill it: ``TRUNCATE`` fails on a table others reference, or with ``CASCADE`` empties theirs
too, and is not MVCC-safe for concurrent readers; ``DELETE`` of every row would fire the referencing tables'
``ON DELETE CASCADE`` / ``SET NULL`` actions on rows nobody changed, and every trigger for every row. The multiset
difference writes what differs and nothing else — like the row-by-row undo, as ordinary writes: triggers fire for
those rows and foreign keys are checked, exactly as they would for the run's own statements.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from adapters.postgres.observe import row_hash_expr, table_data
from adapters.postgres.restore import copy_section

COPY_CHUNK = 1 << 20  # bytes sent to the server per COPY message


def capture(restore_tables: dict[str, Any], conn: psycopg.Connection, table: str, why: str,
            checkpoint: dict[str, Any] | None, before: dict[str, Any], after: dict[str, Any]) -> str | None:
    """Inside the apply's transaction, after the statements: record how to put ``table``'s data back from the
    checkpoint (``why``: why not row by row). Returns why it cannot be (the whole checkpoint is restored then)."""
    then, was, left = ((checkpoint or {}).get("data", {}).get(table), before["data"].get(table),
                       after["data"].get(table))
    if then is None or was is None or left is None:
        return f"{why}, and the checkpoint's data of {table} is not known"
    row = conn.execute("SELECT oid, relkind::text FROM pg_class WHERE oid = to_regclass(%s)", [table]).fetchone()
    if row is None or row[1] not in ("r", "p"):
        return f"{why}, and {table} is not a table the checkpoint holds data for"
    leaves = [[int(row[0]), table]]
    if row[1] == "p":  # a partitioned table's rows live in its partitions
        found = conn.execute("SELECT p.relid::oid, p.relid::regclass::text, c.relkind::text "
                             "FROM pg_partition_tree(%s::oid) p JOIN pg_class c ON c.oid = p.relid "
                             "WHERE p.isleaf ORDER BY 2", [row[0]]).fetchall()
        foreign = [str(name) for _oid, name, kind in found if kind != "r"]
        if foreign:
            return f"{why}, and its partition {foreign[0]} is not a table whose data the checkpoint holds"
        leaves = [[int(oid), str(name)] for oid, name, _kind in found]
    restore_tables[table] = {
        "why": why, "only": bool(left.get("only", True)), "columns": list(left["columns"]),
        "left": [left["rows"], left["hash"]],
        "checkpoint": {"columns": list(then["columns"]), "rows": then["rows"], "hash": then["hash"]},
        # Written to by someone between the checkpoint and the apply: the checkpoint does not hold that write.
        "moved": [was["rows"], was["hash"]] != [then["rows"], then["hash"]],
        "leaves": leaves,
        # A primary key the checkpoint and the run agree on: rows are matched on it (below), not as a multiset.
        "key": left.get("key") if row[1] == "r" and left.get("key") and left.get("key") == then.get("key") else None,
    }
    return None


def archive_oids(record: dict[str, Any]) -> list[int]:
    """The tables whose data the undo of ``record`` reads from the checkpoint's archive."""
    return sorted({int(oid) for entry in (record.get("restore_tables") or {}).values() for oid, _ in entry["leaves"]})


@dataclass
class Refill:
    """One table (or partition) to bring to the checkpoint's rows, loaded into temporary table ``copy``."""

    table: str  # as the undo record names it (a partitioned table: its root)
    leaf: str
    copy: sql.Composable
    columns: list[str]
    key: list[str] | None = None  # its primary key, when rows are matched on it


def load(conn: psycopg.Connection, restore_tables: dict[str, Any], files: dict[int, Path], force: bool,
         conflicts: list[str], problems: list[str]) -> dict[str, Refill]:
    """Inside the undo's transaction: lock each table against writes, compare it with what the run left
    (conflicts), and load the checkpoint's rows of what is to be put back. Keyed by the relation written to."""
    refills: dict[str, Refill] = {}
    for table, entry in sorted(restore_tables.items()):
        leaves = []
        for oid, name in entry["leaves"]:
            row = conn.execute("SELECT oid::regclass::text FROM pg_class WHERE oid = %s::oid", [oid]).fetchone()
            if row is None:
                problems.append(f"{name} (of {table}) was dropped or re-created since the apply; its data cannot be "
                                "put back from the checkpoint on its own")
                break
            leaves.append((int(oid), str(row[0])))
        else:
            for _oid, leaf in leaves:  # EXCLUSIVE: nobody writes to it until the undo commits; reads go on
                conn.execute(sql.SQL("LOCK TABLE ONLY {} IN EXCLUSIVE MODE").format(sql.SQL(leaf)))
            if not _differs(conn, table, entry, force, conflicts):
                continue
            for oid, leaf in leaves:
                refill = _load(conn, table, leaf, files.get(oid), len(refills), problems)
                if refill is not None:
                    key = entry.get("key")
                    refill.key = list(key) if key and set(key) <= set(refill.columns) else None
                    refills[leaf] = refill
    return refills


def _state(conn: psycopg.Connection, table: str, only: bool, columns: list[str]) -> tuple[int, str] | None:
    """(rows, content hash) of ``table`` over ``columns`` — as the observation computes them; None when a column is
    gone."""
    if not columns_exist(conn, table, columns):
        return None
    data = table_data(conn, table, only=only, key=None, columns=columns)
    return int(data["rows"]), str(data["hash"])


def _differs(conn: psycopg.Connection, table: str, entry: dict[str, Any], force: bool, conflicts: list[str]) -> bool:
    """Whether ``table`` is to be put back: not already as the checkpoint (an undo that ran before), and as the
    run left it (else a conflict, put back only with ``force``)."""
    then = entry["checkpoint"]
    if _state(conn, table, entry["only"], then["columns"]) == (then["rows"], then["hash"]):
        return False  # already as the checkpoint: the undo is idempotent
    now = _state(conn, table, entry["only"], entry["columns"])
    clean = True
    if now != (entry["left"][0], entry["left"][1]):
        counted = f"{now[0]} now" if now else "a column of it gone"
        conflicts.append(f"table {table}: written to by someone since the apply ({entry['left'][0]} row(s) as the run "
                         f"left it, {counted}); it is put back whole from the checkpoint because {entry['why']}")
        clean = False
    if entry.get("moved"):
        conflicts.append(f"table {table}: written to by someone between the checkpoint and the apply; putting it back "
                         f"whole from the checkpoint (because {entry['why']}) loses those writes")
        clean = False
    return clean or force


def _load(conn: psycopg.Connection, table: str, leaf: str, file: Path | None, n: int,
          problems: list[str]) -> Refill | None:
    section = copy_section(file) if file is not None else None
    if section is None:
        problems.append(f"the checkpoint's archive holds no data for {leaf} (of {table})")
        return None
    columns, lines = section
    if not columns_exist(conn, leaf, columns):
        problems.append(f"{leaf} no longer has every column the checkpoint's data of it has")
        for _ in lines:  # read to the end, which closes the file
            pass
        return None
    copy = sql.Identifier("pg_temp", f"shadow_undo_{n}")
    conn.execute(sql.SQL("CREATE TEMP TABLE {copy} ON COMMIT DROP AS SELECT {cols} FROM ONLY {leaf} WITH NO DATA")
                 .format(copy=copy, cols=idents(columns), leaf=sql.SQL(leaf)))
    with conn.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(copy, idents(columns))) as pipe:
        for chunk in chunks(lines):
            pipe.write(chunk)
    return Refill(table, leaf, copy, columns)


def chunks(lines: Iterator[bytes]) -> Iterator[bytes]:
    buffer: list[bytes] = []
    size = 0
    for line in lines:
        buffer.append(line)
        size += len(line)
        if size >= COPY_CHUNK:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


def _surplus(a: sql.Composable, b: sql.Composable, columns: list[str]) -> sql.Composable:
    """The ctids of ``a``'s rows beyond the number of times ``b`` holds the same row (over ``columns``)."""
    h = row_hash_expr(columns)
    return sql.SQL("SELECT c FROM (SELECT c, h, row_number() OVER (PARTITION BY h) AS n FROM (SELECT t.ctid AS c, "
                   "{h} AS h FROM {a} t) x) mine LEFT JOIN (SELECT {h} AS h, count(*) AS k FROM {b} t GROUP BY 1) "
                   "theirs USING (h) WHERE mine.n > coalesce(theirs.k, 0)").format(h=h, a=a, b=b)


def _keys_not_in(a: sql.Composable, b: sql.Composable, key: list[str]) -> sql.Composable:
    """The ctids of ``a``'s rows whose key ``b`` does not hold."""
    return sql.SQL("SELECT t.ctid FROM {a} t WHERE NOT EXISTS (SELECT FROM {b} o WHERE ({tk}) = ({ok}))").format(
        a=a, b=b, tk=idents(key, "t."), ok=idents(key, "o."))


def delete_surplus(conn: psycopg.Connection, r: Refill) -> int:
    """Delete the rows the table holds more often than the checkpoint did — for a keyed table, the rows whose key
    the checkpoint did not hold (a row whose key it did hold is updated in place by :func:`insert_missing`: a
    row that other tables reference is never deleted and re-inserted)."""
    only = sql.SQL("ONLY ") + sql.SQL(r.leaf)
    if r.key:
        cur = conn.execute(sql.SQL("DELETE FROM {t} d WHERE d.ctid IN ({gone})").format(
            t=only, gone=_keys_not_in(only, r.copy, r.key)))
        return max(cur.rowcount, 0)
    cur = conn.execute(sql.SQL("DELETE FROM {t} d WHERE d.ctid IN ({surplus})").format(
        t=only, surplus=_surplus(only, r.copy, r.columns)))
    return max(cur.rowcount, 0)


def insert_missing(conn: psycopg.Connection, r: Refill) -> int:
    """Insert the checkpoint's rows the table holds less often than the checkpoint did — for a keyed table, give
    each row whose key both hold the checkpoint's values, and insert the rows whose key it lacks (how many values
    and rows were written)."""
    only = sql.SQL("ONLY ") + sql.SQL(r.leaf)
    if r.key:
        return _by_key(conn, r, only)
    cur = conn.execute(sql.SQL("INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE SELECT {tcols} FROM {copy} t "
                               "WHERE t.ctid IN ({missing})").format(
        t=sql.SQL(r.leaf), cols=idents(r.columns), tcols=idents(r.columns, "t."), copy=r.copy,
        missing=_surplus(r.copy, only, r.columns)))
    return max(cur.rowcount, 0)


def _by_key(conn: psycopg.Connection, r: Refill, only: sql.Composable) -> int:
    assert r.key is not None
    always = {row[0] for row in conn.execute("SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass "
                                             "AND attidentity = 'a'", [r.leaf])}
    settable = [c for c in r.columns if c not in r.key and c not in always]
    changed = 0
    # One column at a time, and only where it differs: an ``UPDATE OF column`` trigger fires only for a column the
    # run changed, as it did for the run's own statement — never for a value written back unchanged.
    for column in settable:
        cur = conn.execute(sql.SQL("UPDATE {t} t SET {col} = c.{col} FROM {copy} c WHERE ({tk}) = ({ck}) "
                                   "AND t.{col} IS DISTINCT FROM c.{col}").format(
            t=only, col=sql.Identifier(column), copy=r.copy, tk=idents(r.key, "t."), ck=idents(r.key, "c.")))
        changed += max(cur.rowcount, 0)
    cur = conn.execute(sql.SQL("INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE SELECT {tcols} FROM {copy} t "
                               "WHERE t.ctid IN ({missing})").format(
        t=sql.SQL(r.leaf), cols=idents(r.columns), tcols=idents(r.columns, "t."), copy=r.copy,
        missing=_keys_not_in(r.copy, only, r.key)))
    return changed + max(cur.rowcount, 0)


def verify(conn: psycopg.Connection, restore_tables: dict[str, Any]) -> list[str]:
    """Inside the undo's transaction: every table put back holds the checkpoint's rows."""
    problems = []
    for table, entry in sorted(restore_tables.items()):
        then = entry["checkpoint"]
        now = _state(conn, table, entry["only"], then["columns"])
        if now != (then["rows"], then["hash"]):
            problems.append(f"{table}: not the checkpoint's rows after putting them back "
                            f"({then['rows']} row(s) in the checkpoint, {now[0] if now else '?'} now)")
    return problems


def columns_exist(conn: psycopg.Connection, table: str, columns: list[str]) -> bool:
    have = {r[0] for r in conn.execute("SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass "
                                       "AND attnum > 0 AND NOT attisdropped", [table])}
    return set(columns) <= have


def idents(columns: list[str], prefix: str = "") -> sql.Composable:
    return sql.SQL(", ").join(sql.SQL(prefix) + sql.Identifier(c) for c in columns)
