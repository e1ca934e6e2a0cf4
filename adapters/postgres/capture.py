"""What the action changed in a shadow, read from the rows it wrote instead of searched for in every row.

A shadow is shadow's own database, and its pristine twin a file copy of it: the two hold the same row versions at
the same places, written by the restore's transactions. Just before the action, :func:`mark` takes the shadow's
transaction horizon (``txid_current()``), each table's storage file (``relfilenode``) and write counters
(``pg_stat_user_tables``, as :mod:`adapters.postgres.footprint` reads them). After it, a row version newer than the
horizon was written by the action; every other visible row is the restored one, unchanged. So:

- a table whose write counters and storage file did not move, and whose definition did not change, holds what the
  pristine copy holds: its count and content hash are the pristine observation's (no scan);
- a table with a primary key that the action wrote to (same definition, same storage file) is read for its new row
  versions only (one pass filtering on ``xmin``, hashing only those rows), and the pristine copy for the old versions
  of those keys (by key); rows deleted are what the counts leave over, found by a pass over the keys alone when
  there are any. Its hash is the pristine one minus the old versions plus the new: the observation's hash is a sum;
- anything else — a table without a key, one whose definition changed (its rows' text may change without a write:
  a column added with a default, a renamed column), one rewritten or truncated (a new storage file; ``VACUUM FULL``
  keeps old row versions at new places), a changed type, extension or collation (a value's text may change), a
  server older than 15 (counters lag), an action still connected — is observed and counted as before
  (:func:`adapters.postgres.compare.count_changed_rows`).

The result is the same observation and the same row counts as the full comparison gives
(``tests/test_capture.py`` checks both ways on the same changes); the cost follows the rows the action wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from adapters.postgres import footprint
from adapters.postgres.compare import count_changed_rows
from adapters.postgres.diff import split_name
from adapters.postgres.observe import (native_hashes, observe, read_text_as_str, relation_sql, set_read_settings,
                                      table_data, table_hash_expr)
from adapters.postgres.rowdiff import (DIGEST_MOD, SAMPLE, bucket_count, count_rows, key_expr, key_hash, reading,
                                      sample_rows, with_keys)
from shadow import redact
from shadow.changes import RowDelta

# Kinds whose change may change how existing values read (an enum label renamed, an extension's type output).
VALUE_KINDS = ("type", "extension", "collation")
# Above this many new row versions in one table, the full comparison (one streaming pass) is the cheaper way.
MAX_CAPTURED_ROWS = 200_000

Q_FILES = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relfilenode
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
"""


@dataclass(frozen=True)
class Mark:
    """The shadow just before the action: its transaction horizon, storage files and write counters."""

    xid: int
    files: dict[str, int]
    counters: footprint.Counters
    own: frozenset[int] = frozenset()  # shadow's own sessions on the shadow, not the action's (held snapshot)


def mark(conn: psycopg.Connection, own: frozenset[int] = frozenset()) -> Mark | None:
    """The shadow's state just before the action; None on a server whose counters lag (older than 15). ``own``:
    sessions of shadow's own that stay on the shadow while the action runs."""
    counters = footprint.counters(conn)
    if counters is None:
        return None
    row = conn.execute("SELECT txid_current()").fetchone()
    assert row is not None
    return Mark(int(row[0]) % 2**32, _files(conn), counters, own)


def _files(conn: psycopg.Connection) -> dict[str, int]:
    return {str(name): int(node) for name, node in conn.execute(Q_FILES)}


def observe_changes(after: psycopg.Connection, pristine: psycopg.Connection, before: dict[str, Any],
                    since: Mark | None) -> tuple[dict[str, Any], dict[str, RowDelta], dict[str, str]]:
    """(the shadow's observation after the action, its row changes since ``before`` — the pristine copy's
    observation —, how each table was read: "unchanged", "captured" or "full"), paying for what the action wrote
    where the rows tell (module docstring), for a full comparison elsewhere; ``since`` None: a full comparison
    everywhere."""
    for conn in (after, pristine):
        read_text_as_str(conn)
    # SQL_ASCII: keys do not travel through JSON and back unchanged (:func:`rowdiff.with_keys`)
    moved = _written(after, since, pristine) if since is not None and after.info.encoding != "ascii" else None
    if moved is None:
        return _full(after, pristine, before)
    written, rewritten, versions = moved
    unchanged_values = _Values(before["objects"])
    captured: set[str] = set()

    def hashed(table: str, objects: dict[str, dict[str, dict[str, Any]]]) -> bool:
        if not unchanged_values.same(objects) or table not in before["data"] or before["data"][table]["rows"] is None:
            return True
        if not _same_definition(before["objects"], objects, table):
            return True
        parts = _tree(objects, table)
        if not parts & written:
            return False
        if (before["data"][table].get("key") and parts.isdisjoint(rewritten)
                and sum(versions.get(p, 0) for p in parts) <= MAX_CAPTURED_ROWS):
            captured.add(table)
            return False
        return True

    observation = observe(after, hashed=hashed)
    rows: dict[str, RowDelta] = {}
    how: dict[str, str] = {}
    for table, entry in observation["data"].items():
        how[table] = "full"
        if entry["rows"] is not None:
            continue
        was = before["data"][table]
        if table not in captured:
            entry["rows"], entry["hash"] = was["rows"], was["hash"]
            how[table] = "unchanged"
            continue
        assert since is not None
        # a primary key moved to other columns: the rows are matched on different keys, so the full way
        found = _Captured(after, pristine, table, was, entry, since.xid).count() if entry["key"] == was["key"] else None
        if found is None:  # the rows do not add up: count the table the full way
            entry.update(_table_data(after, table, entry))
            delta = count_rows(pristine, after, table, before, observation)
        else:
            delta, entry["rows"], entry["hash"] = found
            how[table] = "captured"
        if not delta.empty:
            rows[table] = delta
    for table in sorted(set(before["data"]) & set(observation["data"]) - set(captured)):
        b, a = before["data"][table], observation["data"][table]
        if table not in rows and (b["rows"], b["hash"]) != (a["rows"], a["hash"]):
            delta = count_rows(pristine, after, table, before, observation)
            if not delta.empty:
                rows[table] = delta
    return observation, rows, how


def _full(after: psycopg.Connection, pristine: psycopg.Connection,
          before: dict[str, Any]) -> tuple[dict[str, Any], dict[str, RowDelta], dict[str, str]]:
    observation = observe(after)
    return observation, count_changed_rows(pristine, after, before, observation), {t: "full" for t in observation["data"]}


def _table_data(conn: psycopg.Connection, table: str, entry: dict[str, Any]) -> dict[str, Any]:
    with conn.transaction():
        set_read_settings(conn)
        return table_data(conn, table, only=bool(entry["only"]), key=entry["key"], columns=list(entry["columns"]))


def _written(conn: psycopg.Connection, since: Mark,
             pristine: psycopg.Connection) -> tuple[set[str], set[str], dict[str, int]] | None:
    """(the tables whose write counters — rows inserted, updated, deleted — or storage file moved since ``since``,
    those whose storage file did, how many row versions each wrote at most); None when that cannot be known (a
    session of the action still connected after 10 s)."""
    own = since.own | {pristine.info.backend_pid}  # the pristine copy may be this shadow, read as it was
    if footprint.touched_tables(conn, since.counters, ignore=own) is None:  # waits for the action's sessions to end
        return None
    now = footprint.counters(conn)
    if now is None:
        return None
    files = _files(conn)
    rewritten = {name for name in set(files) | set(since.files) if files.get(name) != since.files.get(name)}
    written = {name for name, counts in now.items() if since.counters.get(name, ())[2:] != counts[2:]}
    versions = {name: counts[2] + counts[3] - sum(since.counters.get(name, (0,) * 5)[2:4])
                for name, counts in now.items()}  # rows inserted + updated (aborted ones too)
    return written | rewritten, rewritten, versions


@dataclass(frozen=True)
class _Values:
    """Whether what decides how stored values read as text is unchanged since the pristine observation."""

    before: dict[str, dict[str, dict[str, Any]]]

    def same(self, objects: dict[str, dict[str, dict[str, Any]]]) -> bool:
        return all(self.before.get(kind, {}) == objects.get(kind, {}) for kind in VALUE_KINDS)


def _tree(objects: dict[str, dict[str, dict[str, Any]]], table: str) -> set[str]:
    """``table`` and every partition (or inheritance child counted through it) below it."""
    children: dict[str, list[str]] = {}
    for name, props in objects.get("table", {}).items():
        parent = props.get("partition_of")
        if parent:
            children.setdefault(parent, []).append(name)
    out, todo = set(), [table]
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo += children.get(name, [])
    return out


def definition(objects: dict[str, dict[str, dict[str, Any]]], table: str) -> dict[str, Any]:
    """What decides how ``table``'s stored rows read as text: its partitions, their definitions and columns, and
    the types, extensions and collations of the database (:mod:`adapters.postgres.hashcache`)."""
    tree = _tree(objects, table)
    return {"tree": sorted(tree), "columns": _columns_of(objects, tree),
            "relations": {name: [objects.get(kind, {}).get(name) for kind in ("table", "materialized_view")]
                          for name in sorted(tree)},
            "values": {kind: objects.get(kind, {}) for kind in VALUE_KINDS}}


def _same_definition(before: dict[str, dict[str, dict[str, Any]]], after: dict[str, dict[str, dict[str, Any]]],
                     table: str) -> bool:
    """The table (with its partitions) and its columns are defined as they were: its rows read as they did."""
    tree = _tree(after, table)
    if tree != _tree(before, table):
        return False
    for name in tree:
        for kind in ("table", "materialized_view"):
            if before.get(kind, {}).get(name) != after.get(kind, {}).get(name):
                return False
    return _columns_of(before, tree) == _columns_of(after, tree)


def _columns_of(objects: dict[str, dict[str, dict[str, Any]]], tables: set[str]) -> dict[str, Any]:
    return {name: props for name, props in objects.get("column", {}).items()
            if ".".join(split_name(name)[:-1]) in tables}


class _Captured:
    """One keyed table's row changes, from the row versions the action wrote (module docstring)."""

    def __init__(self, after: psycopg.Connection, pristine: psycopg.Connection, table: str,
                 was: dict[str, Any], entry: dict[str, Any], xid: int) -> None:
        self.after, self.pristine, self.table = after, pristine, table
        self.was, self.entry, self.xid = was, entry, xid
        self.key: list[str] = list(entry["key"])
        self.columns: list[str] = list(entry["columns"])
        self.rel = relation_sql(table, bool(entry["only"]))
        # Each row's part of the content hash, exactly as the observation sums them (same definition both sides).
        self.hash = table_hash_expr(self.columns, native_hashes(after, table).get(table, {}))

    def count(self) -> tuple[RowDelta, int, str] | None:
        """(the row changes, the table's row count, its content hash), or None when the rows do not add up."""
        with reading(self.after), reading(self.pristine):
            total, new = self._new_versions()
            old = self._by_key(self.pristine, list(new))
            kept = total - len(new)  # restored rows the action did not touch
            gone = int(self.was["rows"]) - kept  # restored rows updated or deleted
            deleted_count = gone - len(old)
            if deleted_count < 0:
                return None
            deleted: dict[str, int] = {}
            if deleted_count:
                keys = self._deleted_keys(set(new))
                if keys is None or len(keys) != deleted_count:
                    return None
                deleted = self._by_key(self.pristine, sorted(keys))
                if len(deleted) != deleted_count:
                    return None
            inserted = [k for k in new if k not in old]
            updated = [k for k in old if old[k] != new[k]]
            digest = {"update": sum(map(key_hash, updated)), "delete": sum(map(key_hash, deleted))}
            samples = {"insert": sorted(inserted)[:SAMPLE], "update": sorted(updated)[:SAMPLE],
                       "delete": sorted(deleted)[:SAMPLE]}
            rows = sample_rows(self.pristine, self.after, self.table, (self.rel, self.rel), self.key, self.columns,
                               self.columns, samples)
            if any(redact.looks_secret(c) for c in self.key):
                samples = {op: [redact.MARKER] * len(v) for op, v in samples.items()}
            content = int(self.was["hash"]) - sum(old.values()) - sum(deleted.values()) + sum(new.values())
        delta = RowDelta(len(inserted), len(updated), len(deleted), by_key=True,
                         samples={op: v for op, v in samples.items() if v},
                         digests={op: format(v % DIGEST_MOD, "x") for op, v in digest.items() if v},
                         sample_rows=rows, keys={"insert": inserted, "update": updated, "delete": sorted(deleted)})
        return delta, total, str(content)

    def _new_versions(self) -> tuple[int, dict[str, int]]:
        """(the table's row count, key → row hash of every row version written since the mark), in one pass."""
        new = sql.SQL("age(t.xmin) < age({}::text::xid)").format(sql.Literal(str(self.xid)))
        query = sql.SQL("SELECT count(*), array_agg({k}) FILTER (WHERE {new}), array_agg({h}) FILTER (WHERE {new}) "
                        "FROM {rel} t").format(k=key_expr(self.key), h=self.hash, rel=self.rel, new=new)
        row = self.after.execute(query).fetchone()
        assert row is not None
        return int(row[0]), {str(k): int(h) for k, h in zip(row[1] or [], row[2] or [], strict=True)}

    def _by_key(self, conn: psycopg.Connection, keys: list[str]) -> dict[str, int]:
        """key → row hash of the rows with these keys."""
        return {k: int(h) for k, h in with_keys(conn, self.table, self.rel, self.key, keys, self.hash)}

    def _deleted_keys(self, new: set[str]) -> set[str] | None:
        """The keys of the pristine copy no longer in the table: one pass over the keys alone on each side, in
        buckets by the key's hash; only the keys of buckets that differ are read."""
        buckets = bucket_count(int(self.was["rows"]))
        mask = sql.Literal(buckets - 1)
        k = key_expr(self.key)

        def summary(conn: psycopg.Connection) -> dict[int, tuple[int, int]]:
            query = sql.SQL("SELECT hashtext(k) & {m}, count(*), sum(hashtext(k)::bigint) "
                            "FROM (SELECT {k} AS k FROM {rel} t) s GROUP BY 1").format(m=mask, k=k, rel=self.rel)
            return {int(b): (int(n), int(s)) for b, n, s in conn.execute(query)}

        def keys_in(conn: psycopg.Connection, wanted: list[int]) -> set[str]:
            query = sql.SQL("SELECT k FROM (SELECT {k} AS k FROM {rel} t) s "
                            "WHERE (hashtext(k) & {m}) = ANY({b}::int[])").format(  # hashed lookup, as in rowdiff
                k=k, rel=self.rel, m=mask, b=sql.Literal(wanted))
            return {str(r[0]) for r in conn.execute(query)}

        before, now = summary(self.pristine), summary(self.after)
        differing = sorted(b for b in set(before) | set(now) if before.get(b) != now.get(b))
        if len(differing) * (int(self.was["rows"]) // buckets + 1) > MAX_CAPTURED_ROWS:
            return None
        return keys_in(self.pristine, differing) - keys_in(self.after, differing)
