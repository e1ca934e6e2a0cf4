"""PostgreSQL change sets: catalog changes plus row changes, with implied changes nested under their cause.

Row changes are counted between two *live* databases (the pristine copy and the changed one) without pulling
whole tables into Python: rows are hashed in SQL and grouped into buckets by their key's hash; only the rows
of buckets whose (count, sum of hashes) differ are fetched, as (key, hash) pairs, a batch of buckets at a time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
from psycopg import sql

from adapters.postgres.observe import relation_sql, row_hash_expr, set_read_settings
from shadow import redact
from shadow.changes import Change, RowDelta, diff_objects

# A column's ordinal shifts when an earlier one is dropped: that is not a change of the column.
IGNORED_PROPERTIES = ("position",)
SAMPLE = 5
SAMPLE_VALUE_CHARS = 200  # a sample row's values are clipped to this many characters
FETCH_BATCH_ROWS = 200_000


def split_name(name: str) -> list[str]:
    """The dot-separated parts of a qualified name made of ``quote_ident``-ed parts, each still quoted.

    A dot inside a quoted part (``"Order.Items"``) is part of the name, not a separator.
    """
    parts: list[str] = []
    start, quoted = 0, False
    for i, ch in enumerate(name):
        if ch == '"':
            quoted = not quoted  # an escaped quote ("") toggles twice
        elif ch == "." and not quoted:
            parts.append(name[start:i])
            start = i + 1
    parts.append(name[start:])
    return parts


def _parent(name: str) -> str:
    """``schema.table`` of ``schema.table.column``."""
    return ".".join(split_name(name)[:-1])


def table_of(kind: str, name: str, props: dict[str, Any]) -> str | None:
    """The table an object belongs to, if any."""
    if kind in ("index", "trigger", "rule", "statistics"):
        return props.get("table")
    if kind == "constraint":
        return props.get("on")
    if kind == "column":
        return _parent(name)
    if kind == "sequence" and props.get("owned_by"):
        return _parent(str(props["owned_by"]))
    return None


def diff(before: dict[str, Any], after: dict[str, Any], rows: dict[str, RowDelta]) -> list[Change]:
    """The change set from observation ``before`` to ``after``; ``rows`` holds counted row changes."""
    changes = diff_objects(before["objects"], after["objects"], ignore=IGNORED_PROPERTIES)
    for table in sorted(set(after["data"]) - set(before["data"])):
        if after["data"][table]["rows"]:
            changes.append(Change("insert", "rows", table, {"count": after["data"][table]["rows"]}))
    for table in sorted(set(before["data"]) - set(after["data"])):
        if before["data"][table]["rows"]:
            changes.append(Change("delete", "rows", table, {"count": before["data"][table]["rows"]}))
    for table, delta in sorted(rows.items()):
        for op in ("insert", "update", "delete"):
            if delta.count(op):
                detail: dict[str, Any] = {"count": delta.count(op)}
                if delta.samples.get(op):
                    detail["sample_keys"] = delta.samples[op]
                if delta.sample_rows.get(op):
                    detail["sample_rows"] = delta.sample_rows[op]
                if delta.digests.get(op):
                    detail["keys_digest"] = delta.digests[op]
                if not delta.by_key:
                    detail["compared_as"] = "multiset (no primary key)"
                changes.append(Change(op, "rows", table, detail))
    return nest(changes, before["objects"], after["objects"])


def nest(changes: list[Change], before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """Put every change that another one implies under it."""
    def props(change: Change) -> dict[str, Any]:
        side = before if change.op == "drop" else after
        return side.get(change.kind, {}).get(change.name) or before.get(change.kind, {}).get(change.name) or {}

    by_address = {c.address: c for c in changes}
    parent_of: dict[str, str] = {}
    for change in changes:
        p = props(change)
        table = table_of(change.kind, change.name, p)
        candidates: list[str] = []
        if change.kind == "index" and p.get("constraint") and table:
            candidates.append(f"{change.op} constraint {table}.{p['constraint']}")
        if change.kind == "sequence" and change.op == "alter":
            owners = ([table] if table else []) + list(p.get("used_by") or [])
            candidates += [f"insert rows {t}" for t in owners] + [f"add table {t}" for t in owners]
        if change.kind == "sequence" and change.op in ("add", "drop") and p.get("owned_by"):
            candidates.append(f"{change.op} column {p['owned_by']}")
        if table and change.kind != "table" and change.op in ("add", "drop"):
            # Only an added or dropped table implies its parts; `may: alter table T` must not cover a disabled
            # trigger or a dropped NOT NULL on T.
            candidates.append(f"{change.op} table {table}")
        if change.kind == "rows" and change.op in ("insert", "delete"):
            candidates.append(f"{'add' if change.op == 'insert' else 'drop'} table {change.name}")
            candidates.append(f"{'add' if change.op == 'insert' else 'drop'} materialized_view {change.name}")
        if change.kind not in ("schema", "extension") and change.op in ("add", "drop"):
            parts = split_name(change.name)
            schema = parts[0] if len(parts) > 1 else None
            if schema:
                candidates.append(f"{change.op} schema {schema}")
        for candidate in candidates:
            if candidate in by_address and candidate != change.address:
                parent_of[change.address] = candidate
                break
    top: list[Change] = []
    for change in changes:
        parent = parent_of.get(change.address)
        if parent:
            by_address[parent].children.append(change)
        else:
            top.append(change)
    return top


def count_rows(
    conn_before: psycopg.Connection,
    conn_after: psycopg.Connection,
    table: str,
    before: dict[str, Any],
    after: dict[str, Any],
) -> RowDelta:
    """Count inserted/updated/deleted rows of ``table`` between two live databases."""
    with ExitStack() as stack:
        for conn in (conn_before, conn_after):
            stack.enter_context(_reading(conn))
        return _count_rows(conn_before, conn_after, table, before, after)


@contextmanager
def _reading(conn: psycopg.Connection) -> Iterator[None]:
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
) -> RowDelta:
    b_data, a_data = before["data"][table], after["data"][table]
    a_cols = list(a_data["columns"])
    # A dropped column is not an update of every row: hash the old rows without it. (An added column is left
    # out of the old rows anyway, and NULL values are left out of the new ones.)
    b_cols = [c for c in b_data["columns"] if c in a_cols]
    key = a_data.get("key") if a_data.get("key") and a_data.get("key") == b_data.get("key") else None
    total = max(b_data["rows"], a_data["rows"])
    buckets = 1
    while buckets < 4096 and buckets * 256 < total:
        buckets *= 2

    rel = relation_sql(table, bool(a_data.get("only", True)))

    def select(columns: list[str], what: sql.Composable, where: sql.Composable = sql.SQL("")) -> sql.Composed:
        h = row_hash_expr(columns)
        k = _key_expr(key) if key else sql.SQL("{}::text").format(h)
        return sql.SQL("SELECT {what} FROM (SELECT {k} AS k, {h} AS h FROM {rel} t) s {where}").format(
            what=what, k=k, h=h, rel=rel, where=where
        )

    agg = sql.SQL("(hashtext(k) & {m}) AS b, count(*), sum(h::numeric)::text").format(m=sql.Literal(buckets - 1))

    def buckets_of(conn: psycopg.Connection, columns: list[str]) -> dict[int, tuple[int, str]]:
        q = sql.SQL("{} GROUP BY 1").format(select(columns, agg))
        return {b: (n, s) for b, n, s in conn.execute(q)}

    bb, ab = buckets_of(conn_before, b_cols), buckets_of(conn_after, a_cols)
    differing = sorted(b for b in set(bb) | set(ab) if bb.get(b) != ab.get(b))
    inserted = updated = deleted = 0
    digest = {"update": 0, "delete": 0}
    samples: dict[str, list[str]] = {"insert": [], "update": [], "delete": []}
    per_bucket = max(1, total // buckets)
    step = max(1, FETCH_BATCH_ROWS // per_bucket)
    for i in range(0, len(differing), step):
        batch = differing[i : i + step]
        where = sql.SQL("WHERE (hashtext(k) & {}) = ANY({})").format(sql.Literal(buckets - 1), sql.Literal(batch))

        def fetch(conn: psycopg.Connection, columns: list[str]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for kk, hh in conn.execute(select(columns, sql.SQL("k, h"), where)):
                if key:
                    out[kk] = hh
                else:
                    out[kk] = out.get(kk, 0) + 1  # multiset: count of identical rows
            return out

        old, new = fetch(conn_before, b_cols), fetch(conn_after, a_cols)
        if key:
            for k in new.keys() - old.keys():
                inserted += 1
                _sample(samples["insert"], k)
            for k in old.keys() - new.keys():
                deleted += 1
                digest["delete"] += _key_hash(k)
                _sample(samples["delete"], k)
            for k in old.keys() & new.keys():
                if old[k] != new[k]:
                    updated += 1
                    digest["update"] += _key_hash(k)
                    _sample(samples["update"], k)
        else:
            for k in old.keys() | new.keys():
                d = new.get(k, 0) - old.get(k, 0)
                if d > 0:
                    inserted += d
                elif d < 0:
                    deleted += -d
                    digest["delete"] += -d * _key_hash(str(k))
    sample_rows: dict[str, list[dict[str, Any]]] = {}
    if key:
        sample_rows = _sample_rows(conn_before, conn_after, table, rel, key, list(b_data["columns"]), a_cols, samples)
        if any(redact.looks_secret(c) for c in key):
            samples = {op: [redact.MARKER] * len(v) for op, v in samples.items()}
    # Which existing rows changed, not only how many: production deleting other rows than the rehearsal did must
    # diverge. (Inserted keys are left out: generated keys — UUIDs, timestamps — differ by nature.)
    return RowDelta(inserted, updated, deleted, by_key=key is not None,
                    samples={op: sorted(v) for op, v in samples.items() if v},
                    digests={op: format(v % DIGEST_MOD, "x") for op, v in digest.items() if v},
                    sample_rows=sample_rows)


def _sample_rows(conn_before: psycopg.Connection, conn_after: psycopg.Connection, table: str, rel: sql.Composable,
                 key: list[str], b_cols: list[str], a_cols: list[str],
                 samples: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """The sampled rows as they were and as they are (values as text, clipped; secret-looking columns redacted)."""
    wanted = sorted({k for keys in samples.values() for k in keys})
    if not wanted:
        return {}

    def fetch(conn: psycopg.Connection, columns: list[str]) -> dict[str, dict[str, Any] | None]:
        values = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in columns)
        query = sql.SQL("SELECT {k}, ARRAY[{v}]::text[] FROM {rel} t WHERE {k} = ANY({wanted})").format(
            k=_key_expr(key), v=values, rel=rel, wanted=sql.Literal(wanted))
        return {k: redact.row(table, dict(zip(columns, map(_clip, vals), strict=True)))
                for k, vals in conn.execute(query)}

    old, new = fetch(conn_before, b_cols), fetch(conn_after, a_cols)
    out: dict[str, list[dict[str, Any]]] = {}
    for op, keys in samples.items():
        out[op] = [{"key": redact.row(table, dict(zip(key, map(_key_text, json.loads(k)), strict=True))),
                    "before": None if op == "insert" else old.get(k),
                    "after": None if op == "delete" else new.get(k)} for k in sorted(keys)]
    return out


def _clip(value: str | None) -> str | None:
    if value is None or len(value) <= SAMPLE_VALUE_CHARS:
        return value
    return value[: SAMPLE_VALUE_CHARS - 1] + "…"


def _key_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


DIGEST_MOD = 1 << 96


def _key_hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:12], "big")


def _key_expr(key: list[str]) -> sql.Composable:
    return sql.SQL("jsonb_build_array({})::text").format(sql.SQL(", ").join(sql.SQL("t.") + sql.Identifier(c) for c in key))


def _sample(bucket: list[str], key: str) -> None:
    if len(bucket) < SAMPLE:
        bucket.append(key)
