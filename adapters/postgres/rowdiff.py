"""Counting row changes between two *live* databases (the pristine copy and the changed one, or a table and its
copy) without pulling whole tables into Python: rows are hashed in SQL and grouped into buckets by their key's
hash; only the rows of buckets whose (count, sum of hashes) differ are fetched, as (key, hash) pairs, a batch of
buckets at a time.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from adapters.postgres.observe import column_hash_expr, relation_sql, set_read_settings
from shadow import redact
from shadow.changes import RowDelta

SAMPLE = 5
SAMPLE_VALUE_CHARS = 200  # a sample row's values are clipped to this many characters
FETCH_BATCH_ROWS = 200_000
PROBE = 16  # a table of at least 256 × PROBE buckets is probed on 1 bucket in PROBE first (differing_buckets)
T = TypeVar("T")
U = TypeVar("U")


def count_rows(
    conn_before: psycopg.Connection,
    conn_after: psycopg.Connection,
    table: str,
    before: dict[str, Any],
    after: dict[str, Any],
    before_relation: str | None = None,
    keys: bool = False,
) -> RowDelta:
    """Count inserted/updated/deleted rows of ``table`` between two live databases. ``before_relation``: read the
    rows before from that relation (a copy, ``pg_temp.…``) instead of ``table``. ``keys``: also list every changed
    key (``RowDelta.keys``; tables with a primary key)."""
    with ExitStack() as stack:
        for conn in (conn_before, conn_after):
            stack.enter_context(reading(conn))
        return _count_rows(conn_before, conn_after, table, before, after, before_relation, keys)


@contextmanager
def reading(conn: psycopg.Connection) -> Iterator[None]:
    """One snapshot for both passes over a table, with the settings observe hashes rows under.

    Without them, a database whose default TimeZone (or bytea_output …) differs from the shadow's server would
    show every row of a table with such a column as updated.
    """
    in_tx = conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    with conn.transaction():  # a savepoint when the caller's transaction is open (a transactional apply)
        if not in_tx:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        set_read_settings(conn)
        yield


def _count_rows(
    conn_before: psycopg.Connection,
    conn_after: psycopg.Connection,
    table: str,
    before: dict[str, Any],
    after: dict[str, Any],
    before_relation: str | None = None,
    keys: bool = False,
) -> RowDelta:
    b_data, a_data = before["data"][table], after["data"][table]
    a_cols = list(a_data["columns"])
    # Rows are matched on the columns both sides have: a dropped column is not an update of every row, only of
    # the rows that lose a non-NULL value with it (a column added NULL everywhere is no update: NULLs are not
    # hashed). So the old rows are hashed twice — without the dropped columns (h, for matching) and with them
    # (hf, the row as it was).
    b_cols = [c for c in b_data["columns"] if c in a_cols]
    dropped = [c for c in b_data["columns"] if c not in a_cols]
    key = a_data.get("key") if a_data.get("key") and a_data.get("key") == b_data.get("key") else None
    total = max(b_data["rows"], a_data["rows"])
    rel = relation_sql(table, bool(a_data.get("only", True)))
    rows = _RowHashes(rel, sql.SQL(before_relation) if before_relation else rel, key, bucket_count(total))
    full = list(b_data["columns"]) if dropped else None
    differing = rows.differing_buckets(conn_before, b_cols, full, conn_after, a_cols)
    tally = _Tally(keys={"insert": [], "update": [], "delete": []} if keys and key else None)
    step = max(1, FETCH_BATCH_ROWS // max(1, total // rows.buckets))
    if len(differing) <= step:  # one batch: fetch the differing buckets' rows at once
        where = rows.in_buckets(differing)
        batches: Iterator[tuple[dict[str, Any], dict[str, Any]]] = iter(
            [(rows.fetch(conn_before, b_cols, where, full, before=True), rows.fetch(conn_after, a_cols, where, None))])
    else:  # many: one streaming pass over each side, bucket by bucket (never one rescan per batch)
        batches = rows.stream(conn_before, b_cols, full, conn_after, a_cols, differing)
    for old, new in batches:
        if key:
            tally.keyed(old, new)
        else:
            tally.multiset(old, new)
    samples = tally.samples
    sampled: dict[str, list[dict[str, Any]]] = {}
    if key:
        sampled = sample_rows(conn_before, conn_after, table, (rows.rel_before, rows.rel), key,
                              list(b_data["columns"]), a_cols, samples)
        if any(redact.looks_secret(c) for c in key):
            samples = {op: [redact.MARKER] * len(v) for op, v in samples.items()}
    # Which existing rows changed, not only how many: production deleting other rows than the rehearsal did must
    # diverge. (Inserted keys are left out: generated keys — UUIDs, timestamps — differ by nature.)
    return RowDelta(tally.inserted, tally.updated, tally.deleted, by_key=key is not None,
                    samples={op: sorted(v) for op, v in samples.items() if v},
                    digests={op: format(v % DIGEST_MOD, "x") for op, v in tally.digest.items() if v},
                    sample_rows=sampled, destroyed=_non_null_values(conn_before, rows.rel_before, dropped),
                    updated_by_drop=tally.by_drop, keys=tally.keys or {})


def compare_hash_expr(columns: list[str]) -> sql.Composable:
    """SQL for a 64-bit hash of row ``t`` over ``columns`` that two sides of one comparison agree on: row hash 2
    (:func:`adapters.postgres.observe.column_hash_expr`) always, whatever the run's checkpoint was hashed with —
    both sides are hashed here, by the same query."""
    return column_hash_expr(columns)


def bucket_count(total: int) -> int:
    """How many buckets a table of ``total`` rows is hashed into: a power of two, about 256 rows each, 4096 at most."""
    buckets = 1
    while buckets < 4096 and buckets * 256 < total:
        buckets *= 2
    return buckets


@dataclass(frozen=True)
class _RowHashes:
    """The queries over one relation's rows as (k, h): its key (or, without one, the row hash) and the row hash."""

    rel: sql.Composable
    rel_before: sql.Composable  # where the rows before are read: ``rel`` itself, or a copy of it
    key: list[str] | None
    buckets: int

    def select(self, columns: list[str], what: str, where: sql.Composable = sql.SQL(""),
               full: list[str] | None = None, before: bool = False) -> sql.Composed:
        """``what`` over k, h and b (the row's bucket); its ``{hf}`` is h, or with ``full`` the hash over those
        columns. A bucket is a hash of the key's columns (of the row, without a key) — never of k's text, which a
        query that does not ask for k then does not build."""
        h = compare_hash_expr(columns)
        k = key_expr(self.key) if self.key else sql.SQL("{}::text").format(h)
        hf = sql.SQL(", {} AS hf").format(compare_hash_expr(full)) if full else sql.SQL("")
        b = sql.SQL("({} & {})::int").format(compare_hash_expr(self.key) if self.key else h,
                                              sql.Literal(self.buckets - 1))
        return sql.SQL("SELECT {what} FROM (SELECT {k} AS k, {h} AS h{hf}, {b} AS b FROM {rel} t) s {where}").format(
            what=sql.SQL(what).format(hf=sql.SQL("hf" if full else "h")), k=k, h=h, hf=hf, b=b,
            rel=self.rel_before if before else self.rel, where=where
        )

    def differing_buckets(self, conn_before: psycopg.Connection, b_cols: list[str], full: list[str] | None,
                          conn_after: psycopg.Connection, a_cols: list[str]) -> list[int]:
        """The buckets whose (count, sum of hashes) differ between the two sides, in order.

        A large table is probed first on one bucket in :data:`PROBE`: when most of those differ, most rows
        changed, and every bucket is taken as differing — the stream then reads each side once instead of
        twice (hashing every row to find the buckets would cost as much as reading them all)."""
        agg = "b, count(*), sum({hf})::text"

        def buckets_of(conn: psycopg.Connection, columns: list[str], full: list[str] | None,
                       before: bool, where: sql.Composable) -> dict[int, tuple[int, str]]:
            q = sql.SQL("{} GROUP BY 1").format(self.select(columns, agg, where, full=full, before=before))
            return {b: (n, s) for b, n, s in conn.execute(q)}

        def differing(where: sql.Composable) -> list[int]:
            bb, ab = both(conn_before, conn_after, lambda: buckets_of(conn_before, b_cols, full, True, where),
                          lambda: buckets_of(conn_after, a_cols, None, False, where))
            return sorted(b for b in set(bb) | set(ab) if bb.get(b) != ab.get(b))

        if self.buckets >= PROBE * 16:
            probed = self.buckets // PROBE
            if len(differing(sql.SQL("WHERE b < {}").format(sql.Literal(probed)))) * 4 >= probed * 3:
                return list(range(self.buckets))
        return differing(sql.SQL(""))

    def in_buckets(self, batch: list[int]) -> sql.Composable:
        """The rows of these buckets (none to filter when that is every bucket); an ``int[]``, which PostgreSQL
        looks values up in by hash (a ``smallint[]`` is searched element by element, for every row)."""
        if len(batch) == self.buckets:
            return sql.SQL("")
        return sql.SQL("WHERE b = ANY({}::int[])").format(sql.Literal(batch))

    def fetch(self, conn: psycopg.Connection, columns: list[str], where: sql.Composable,
              full: list[str] | None, before: bool = False) -> dict[str, Any]:
        """key → (h, hf); without a key, row hash → [count, how many lost values in dropped columns]."""
        out: dict[str, Any] = {}
        for kk, hh, hf in conn.execute(self.select(columns, "k, h, {hf}", where, full, before)):
            self._add(out, kk, hh, hf)
        return out

    def _add(self, out: dict[str, Any], kk: str, hh: int, hf: int) -> None:
        if self.key:
            out[kk] = (hh, hf)
        else:  # multiset: count of identical rows
            seen = out.setdefault(kk, [0, 0])
            seen[0] += 1
            seen[1] += hh != hf

    def stream(self, conn_before: psycopg.Connection, b_cols: list[str], full: list[str] | None,
               conn_after: psycopg.Connection, a_cols: list[str],
               differing: list[int]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        """(rows before, rows after) of each differing bucket, from one pass over each side in bucket order; both
        servers sort at the same time (the first fetch of each runs in its own thread)."""
        what = "b, k, h, {hf}"
        where = self.in_buckets(differing)
        cursors = []
        try:
            for conn, columns, wide, before in ((conn_before, b_cols, full, True), (conn_after, a_cols, None, False)):
                conn.execute("SET LOCAL work_mem = '64MB'")
                cur = conn.cursor(name=f"shadow_rows_{'before' if before else 'after'}")
                cur.itersize = 20_000
                cur.execute(sql.SQL("{} ORDER BY b").format(self.select(columns, what, where, wide, before)))
                cursors.append(cur)
            first = both(conn_before, conn_after, *(lambda c=c: c.fetchmany(c.itersize) for c in cursors))
            sides = [self._by_bucket(itertools.chain(rows, _rest(cur))) for rows, cur in zip(first, cursors, strict=True)]
            (b_old, old), (b_new, new) = next(sides[0], (None, {})), next(sides[1], (None, {}))
            while b_old is not None or b_new is not None:
                if b_new is None or (b_old is not None and b_old < b_new):
                    yield old, {}
                    b_old, old = next(sides[0], (None, {}))
                elif b_old is None or b_new < b_old:
                    yield {}, new
                    b_new, new = next(sides[1], (None, {}))
                else:
                    yield old, new
                    (b_old, old), (b_new, new) = next(sides[0], (None, {})), next(sides[1], (None, {}))
        finally:
            for cur in cursors:
                cur.close()

    def _by_bucket(self, rows: Iterator[Any]) -> Iterator[tuple[int, dict[str, Any]]]:
        if self.key:  # the common case, a row at a time: no call per row
            for bucket, group in itertools.groupby(rows, key=itemgetter(0)):
                yield int(bucket), {kk: (hh, hf) for _, kk, hh, hf in group}
            return
        for bucket, group in itertools.groupby(rows, key=itemgetter(0)):
            out: dict[str, Any] = {}
            for _, kk, hh, hf in group:
                self._add(out, kk, hh, hf)
            yield int(bucket), out


def _rest(cur: Any) -> Iterator[Any]:
    """A server-side cursor's remaining rows, fetched a batch at a time (iterating it row by row costs a call each)."""
    while batch := cur.fetchmany(cur.itersize):
        yield from batch


def both(conn_a: psycopg.Connection, conn_b: psycopg.Connection, on_a: Callable[[], T],
         on_b: Callable[[], U]) -> tuple[T, U]:
    """``on_a()`` and ``on_b()``, at the same time when they use two connections (each server scans while the
    other does), one after the other on one."""
    if conn_a is conn_b:
        return on_a(), on_b()
    with ThreadPoolExecutor(1) as pool:
        later = pool.submit(on_b)
        return on_a(), later.result()


@dataclass
class _Tally:
    """Rows inserted, updated and deleted so far, with digests and samples of the keys of those that changed."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    by_drop: int = 0  # updates that only lost the values of dropped columns
    digest: dict[str, int] = field(default_factory=lambda: {"update": 0, "delete": 0})
    samples: dict[str, list[str]] = field(default_factory=lambda: {"insert": [], "update": [], "delete": []})
    keys: dict[str, list[str]] | None = None  # every changed key by op, when asked for

    def keyed(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        """One batch of a table with a key: ``old`` key → (h, hf), ``new`` key → (h, h)."""
        for k in new.keys() - old.keys():
            self.inserted += 1
            self._changed("insert", k)
        for k in old.keys() - new.keys():
            self.deleted += 1
            self.digest["delete"] += key_hash(k)
            self._changed("delete", k)
        for k in old.keys() & new.keys():
            if old[k][1] != new[k][0]:
                self.updated += 1
                self.by_drop += old[k][0] == new[k][0]
                self.digest["update"] += key_hash(k)
                self._changed("update", k)

    def _changed(self, op: str, k: str) -> None:
        _sample(self.samples[op], k)
        if self.keys is not None:
            self.keys[op].append(k)

    def multiset(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        """One batch of a table without a key: row hash → [count, lost values] on each side."""
        for k in old.keys() | new.keys():
            (was, lost), now = old.get(k, (0, 0)), new.get(k, (0, 0))[0]
            if now > was:
                self.inserted += now - was
            elif now < was:
                self.deleted += was - now
                self.digest["delete"] += (was - now) * key_hash(str(k))
            # of the rows kept, at least this many lost a value (which identical copies went is unknowable)
            lost_kept = max(0, lost - (was - min(was, now)))
            self.updated += lost_kept
            self.by_drop += lost_kept
            self.digest["update"] += lost_kept * key_hash(str(k))


def _non_null_values(conn: psycopg.Connection, rel: sql.Composable, columns: list[str]) -> dict[str, int]:
    """How many non-NULL values each of ``columns`` holds (raw names)."""
    if not columns:
        return {}
    counts = sql.SQL(", ").join(sql.SQL("count(t.{})").format(sql.Identifier(c)) for c in columns)
    row = conn.execute(sql.SQL("SELECT {} FROM {} t").format(counts, rel)).fetchone()
    assert row is not None
    return {c: int(n) for c, n in zip(columns, row, strict=True) if n}


def sample_rows(conn_before: psycopg.Connection, conn_after: psycopg.Connection, table: str,
                 rels: tuple[sql.Composable, sql.Composable],
                 key: list[str], b_cols: list[str], a_cols: list[str],
                 samples: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """The sampled rows as they were and as they are (values as text, clipped; secret-looking columns redacted)."""
    wanted = sorted({k for keys in samples.values() for k in keys})
    if not wanted:
        return {}

    def fetch(conn: psycopg.Connection, columns: list[str], rel: sql.Composable) -> dict[str, dict[str, Any] | None]:
        values = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in columns)
        return {k: redact.row(table, dict(zip(columns, map(_clip, vals), strict=True)))
                for k, vals in with_keys(conn, table, rel, key, wanted, sql.SQL("ARRAY[{}]::text[]").format(values))}

    old, new = fetch(conn_before, b_cols, rels[0]), fetch(conn_after, a_cols, rels[1])
    out: dict[str, list[dict[str, Any]]] = {}
    for op, keys in samples.items():
        out[op] = [{"key": redact.row(table, dict(zip(key, map(_key_text, json.loads(k)), strict=True))),
                    "before": None if op == "insert" else old.get(k),
                    "after": None if op == "delete" else new.get(k)} for k in sorted(keys)]
    return out


def with_keys(conn: psycopg.Connection, table: str, rel: sql.Composable, key: list[str], keys: list[str],
              what: sql.Composable, lock: bool = False) -> list[tuple[Any, ...]]:
    """(key, ``what``…) of the rows of ``rel`` with these keys (as :func:`key_expr` spells them), found through the
    primary key's index: the keys are read back into ``table``'s row type. Where that does not work (a key
    column whose type differs between ``rel`` and ``table``), every row's key is compared instead. ``lock``: the
    rows found are locked FOR UPDATE until the transaction ends (nobody changes them between a read and a write)."""
    if not keys:
        return []
    locking = sql.SQL(" FOR UPDATE OF t" if lock else "")
    if conn.info.encoding == "ascii":  # SQL_ASCII: its bytes do not travel through JSON and back unchanged
        return _scan_for_keys(conn, rel, key, keys, what, locking)
    records = json.dumps([dict(zip(key, json.loads(k), strict=True)) for k in keys])
    columns = sql.SQL(", ").join(sql.SQL("t.") + sql.Identifier(c) for c in key)
    wanted = sql.SQL(", ").join(sql.SQL("x.") + sql.Identifier(c) for c in key)
    indexed = sql.SQL("SELECT {k}, {what} FROM {rel} t WHERE ({cols}) IN "
                      "(SELECT {wanted} FROM jsonb_populate_recordset(NULL::{row}, {records}::jsonb) x){lock}").format(
        k=key_expr(key), what=what, rel=rel, cols=columns, wanted=wanted, row=sql.SQL(table),
        records=sql.Literal(records), lock=locking)
    try:
        with conn.transaction():
            found = conn.execute(indexed).fetchall()
        asked = set(keys)
        return [(str(k), *rest) for k, *rest in found if k in asked]
    except (psycopg.errors.DataError, psycopg.errors.SyntaxErrorOrAccessRuleViolation,
            psycopg.errors.FeatureNotSupported):
        pass  # rolled back to the savepoint
    return _scan_for_keys(conn, rel, key, keys, what, locking)


def _scan_for_keys(conn: psycopg.Connection, rel: sql.Composable, key: list[str], keys: list[str],
                   what: sql.Composable, locking: sql.Composable = sql.SQL("")) -> list[tuple[Any, ...]]:
    scan = sql.SQL("SELECT {k}, {what} FROM {rel} t WHERE {k} = ANY({keys}){lock}").format(
        k=key_expr(key), what=what, rel=rel, keys=sql.Literal(keys), lock=locking)
    return [(str(k), *rest) for k, *rest in conn.execute(scan)]


def _clip(value: str | None) -> str | None:
    if value is None or len(value) <= SAMPLE_VALUE_CHARS:
        return value
    return value[: SAMPLE_VALUE_CHARS - 1] + "…"


def _key_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


DIGEST_MOD = 1 << 96


def key_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:12], "big")


def key_expr(key: list[str]) -> sql.Composable:
    """Row ``t``'s key as text: what changed keys are named by (and the undo matches on)."""
    return sql.SQL("jsonb_build_array({})::text").format(sql.SQL(", ").join(sql.SQL("t.") + sql.Identifier(c) for c in key))


def _sample(bucket: list[str], key: str) -> None:
    if len(bucket) < SAMPLE:
        bucket.append(key)
