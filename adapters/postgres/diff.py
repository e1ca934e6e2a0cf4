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
    dropped_columns = {c.name: c for c in changes if c.op == "drop" and c.kind == "column"}
    for table, delta in sorted(rows.items()):
        for raw, values in delta.destroyed.items():
            column = dropped_columns.get(_column_name(before["objects"], table, raw) or "")
            if column is not None:
                column.detail["destroyed_values"] = values
        for op in ("insert", "update", "delete"):
            if delta.count(op):
                detail: dict[str, Any] = {"count": delta.count(op)}
                if op == "update" and delta.updated_by_drop:
                    detail["lost_values"] = delta.updated_by_drop
                if delta.samples.get(op):
                    detail["sample_keys"] = delta.samples[op]
                if delta.sample_rows.get(op):
                    detail["sample_rows"] = delta.sample_rows[op]
                if delta.digests.get(op):
                    detail["keys_digest"] = delta.digests[op]
                if not delta.by_key:
                    detail["compared_as"] = "multiset (no primary key)"
                changes.append(Change(op, "rows", table, detail))
    return nest(changes, before["objects"], after["objects"],
                depends_before=before.get("depends") or {}, depends_after=after.get("depends") or {})


def _column_name(objects: dict[str, Any], table: str, raw: str) -> str | None:
    """The observed (quoted) name ``table.column`` of raw column name ``raw``."""
    for name in objects.get("column", {}):
        parts = split_name(name)
        if ".".join(parts[:-1]) == table and _unquote(parts[-1]) == raw:
            return str(name)
    return None


def _unquote(part: str) -> str:
    return part[1:-1].replace('""', '"') if part.startswith('"') else part


# Which pg_depend types make a dropped object go with the drop of what it depends on: partition (P), internal (i),
# automatic (a), normal (n, the objects DROP … CASCADE takes) — the closest first.
DROP_DEPENDENCIES = "Pian"


def nest(changes: list[Change], before: dict[str, Any], after: dict[str, Any], *,
         depends_before: dict[str, dict[str, str]] | None = None,
         depends_after: dict[str, dict[str, str]] | None = None) -> list[Change]:
    """Put every change that another one implies under it.

    ``before`` and ``after`` are the observations' objects; ``depends_*`` their dependencies (``observe``'s
    ``depends``). What PostgreSQL does to partitions (and inheritance children) because of a change on the parent —
    a column, a cloned index, key, check or trigger, the same alteration — nests under the parent's change, level by
    level. What PostgreSQL drops because something it depends on was dropped (the index and foreign key on a dropped
    column, the views DROP … CASCADE takes) nests under that drop.
    """
    def props(change: Change) -> dict[str, Any]:
        side = before if change.op == "drop" else after
        return side.get(change.kind, {}).get(change.name) or before.get(change.kind, {}).get(change.name) or {}

    def parent_table(table: str, op: str) -> str | None:
        side = before if op == "drop" else after
        t = side.get("table", {}).get(table) or before.get("table", {}).get(table) or {}
        return t.get("partition_of") or t.get("inherits")

    by_address = {c.address: c for c in changes}
    drops_of_table: dict[str, list[str]] = {}
    for c in changes:
        if c.op == "drop" and c.kind == "column":
            drops_of_table.setdefault(_parent(c.name), []).append(c.address)
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
        if change.kind == "rows" and change.op == "update" and change.detail.get("lost_values") == change.detail.get(
                "count"):
            # every updated row only lost the values of a dropped column
            candidates += drops_of_table.get(change.name, [])
        if change.kind in ("column", "constraint", "trigger") and table:
            parent = parent_table(table, change.op)
            if parent:
                # the same-named part of the parent: an inherited column, a cloned check or trigger …
                candidate = f"{change.op} {change.kind} {parent}.{split_name(change.name)[-1]}"
                if change.op != "alter" or (candidate in by_address and by_address[candidate].detail == change.detail):
                    candidates.append(candidate)
        if change.op == "add":
            deps = depends_after.get(f"{change.kind} {change.name}", {}) if depends_after else {}
            candidates += [f"add {ref}" for ref, types in sorted(deps.items()) if "P" in types]
        elif change.op == "drop" and depends_before:
            deps = depends_before.get(f"{change.kind} {change.name}", {})
            candidates += [f"drop {ref}" for t in DROP_DEPENDENCIES for ref, types in sorted(deps.items()) if t in types]
        if change.kind not in ("schema", "extension") and change.op in ("add", "drop"):
            parts = split_name(change.name)
            schema = parts[0] if len(parts) > 1 else None
            if schema:
                candidates.append(f"{change.op} schema {schema}")
        for candidate in candidates:
            if candidate in by_address and not _reaches(parent_of, candidate, change.address):
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


def _reaches(parent_of: dict[str, str], start: str, target: str) -> bool:
    """Whether ``target`` is ``start`` or one of its ancestors (nesting under it would make a cycle)."""
    seen: set[str] = set()
    node: str | None = start
    while node is not None and node not in seen:
        if node == target:
            return True
        seen.add(node)
        node = parent_of.get(node)
    return False


def count_rows(
    conn_before: psycopg.Connection,
    conn_after: psycopg.Connection,
    table: str,
    before: dict[str, Any],
    after: dict[str, Any],
    before_relation: str | None = None,
) -> RowDelta:
    """Count inserted/updated/deleted rows of ``table`` between two live databases. ``before_relation``: read the
    rows before from that relation (a copy, ``pg_temp.…``) instead of ``table``."""
    with ExitStack() as stack:
        for conn in (conn_before, conn_after):
            stack.enter_context(_reading(conn))
        return _count_rows(conn_before, conn_after, table, before, after, before_relation)


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
    before_relation: str | None = None,
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
    buckets = 1
    while buckets < 4096 and buckets * 256 < total:
        buckets *= 2

    rel = relation_sql(table, bool(a_data.get("only", True)))
    rel_before = sql.SQL(before_relation) if before_relation else rel

    def select(columns: list[str], what: str, where: sql.Composable = sql.SQL(""),
               full: list[str] | None = None, source: sql.Composable = rel) -> sql.Composed:
        """``what`` over k and h; its ``{hf}`` is h, or with ``full`` the hash over those columns."""
        h = row_hash_expr(columns)
        k = _key_expr(key) if key else sql.SQL("{}::text").format(h)
        hf = sql.SQL(", {} AS hf").format(row_hash_expr(full)) if full else sql.SQL("")
        return sql.SQL("SELECT {what} FROM (SELECT {k} AS k, {h} AS h{hf} FROM {rel} t) s {where}").format(
            what=sql.SQL(what).format(hf=sql.SQL("hf" if full else "h")), k=k, h=h, hf=hf, rel=source, where=where
        )

    agg = f"(hashtext(k) & {buckets - 1}) AS b, count(*), sum({{hf}}::numeric)::text"
    full = list(b_data["columns"]) if dropped else None

    def buckets_of(conn: psycopg.Connection, columns: list[str], full: list[str] | None,
                   source: sql.Composable) -> dict[int, tuple[int, str]]:
        q = sql.SQL("{} GROUP BY 1").format(select(columns, agg, full=full, source=source))
        return {b: (n, s) for b, n, s in conn.execute(q)}

    bb, ab = buckets_of(conn_before, b_cols, full, rel_before), buckets_of(conn_after, a_cols, None, rel)
    differing = sorted(b for b in set(bb) | set(ab) if bb.get(b) != ab.get(b))
    inserted = updated = deleted = by_drop = 0
    digest = {"update": 0, "delete": 0}
    samples: dict[str, list[str]] = {"insert": [], "update": [], "delete": []}
    per_bucket = max(1, total // buckets)
    step = max(1, FETCH_BATCH_ROWS // per_bucket)
    for i in range(0, len(differing), step):
        batch = differing[i : i + step]
        where = sql.SQL("WHERE (hashtext(k) & {}) = ANY({})").format(sql.Literal(buckets - 1), sql.Literal(batch))

        def fetch(conn: psycopg.Connection, columns: list[str], full: list[str] | None,
                  source: sql.Composable) -> dict[str, Any]:
            """key → (h, hf); without a key, row hash → [count, how many lost values in dropped columns]."""
            out: dict[str, Any] = {}
            for kk, hh, hf in conn.execute(select(columns, "k, h, {hf}", where, full, source)):
                if key:
                    out[kk] = (hh, hf)
                else:  # multiset: count of identical rows
                    seen = out.setdefault(kk, [0, 0])
                    seen[0] += 1
                    seen[1] += hh != hf
            return out

        old, new = fetch(conn_before, b_cols, full, rel_before), fetch(conn_after, a_cols, None, rel)
        if key:
            for k in new.keys() - old.keys():
                inserted += 1
                _sample(samples["insert"], k)
            for k in old.keys() - new.keys():
                deleted += 1
                digest["delete"] += _key_hash(k)
                _sample(samples["delete"], k)
            for k in old.keys() & new.keys():
                if old[k][1] != new[k][0]:
                    updated += 1
                    by_drop += old[k][0] == new[k][0]
                    digest["update"] += _key_hash(k)
                    _sample(samples["update"], k)
        else:
            for k in old.keys() | new.keys():
                (was, lost), now = old.get(k, (0, 0)), new.get(k, (0, 0))[0]
                if now > was:
                    inserted += now - was
                elif now < was:
                    deleted += was - now
                    digest["delete"] += (was - now) * _key_hash(str(k))
                # of the rows kept, at least this many lost a value (which identical copies went is unknowable)
                lost_kept = max(0, lost - (was - min(was, now)))
                updated += lost_kept
                by_drop += lost_kept
                digest["update"] += lost_kept * _key_hash(str(k))
    sample_rows: dict[str, list[dict[str, Any]]] = {}
    if key:
        sample_rows = _sample_rows(conn_before, conn_after, table, (rel_before, rel), key, list(b_data["columns"]),
                                   a_cols, samples)
        if any(redact.looks_secret(c) for c in key):
            samples = {op: [redact.MARKER] * len(v) for op, v in samples.items()}
    # Which existing rows changed, not only how many: production deleting other rows than the rehearsal did must
    # diverge. (Inserted keys are left out: generated keys — UUIDs, timestamps — differ by nature.)
    return RowDelta(inserted, updated, deleted, by_key=key is not None,
                    samples={op: sorted(v) for op, v in samples.items() if v},
                    digests={op: format(v % DIGEST_MOD, "x") for op, v in digest.items() if v},
                    sample_rows=sample_rows, destroyed=_non_null_values(conn_before, rel_before, dropped),
                    updated_by_drop=by_drop)


def _non_null_values(conn: psycopg.Connection, rel: sql.Composable, columns: list[str]) -> dict[str, int]:
    """How many non-NULL values each of ``columns`` holds (raw names)."""
    if not columns:
        return {}
    counts = sql.SQL(", ").join(sql.SQL("count(t.{})").format(sql.Identifier(c)) for c in columns)
    row = conn.execute(sql.SQL("SELECT {} FROM {} t").format(counts, rel)).fetchone()
    assert row is not None
    return {c: int(n) for c, n in zip(columns, row, strict=True) if n}


def _sample_rows(conn_before: psycopg.Connection, conn_after: psycopg.Connection, table: str,
                 rels: tuple[sql.Composable, sql.Composable],
                 key: list[str], b_cols: list[str], a_cols: list[str],
                 samples: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """The sampled rows as they were and as they are (values as text, clipped; secret-looking columns redacted)."""
    wanted = sorted({k for keys in samples.values() for k in keys})
    if not wanted:
        return {}

    def fetch(conn: psycopg.Connection, columns: list[str], rel: sql.Composable) -> dict[str, dict[str, Any] | None]:
        values = sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(c)) for c in columns)
        query = sql.SQL("SELECT {k}, ARRAY[{v}]::text[] FROM {rel} t WHERE {k} = ANY({wanted})").format(
            k=_key_expr(key), v=values, rel=rel, wanted=sql.Literal(wanted))
        return {k: redact.row(table, dict(zip(columns, map(_clip, vals), strict=True)))
                for k, vals in conn.execute(query)}

    old, new = fetch(conn_before, b_cols, rels[0]), fetch(conn_after, a_cols, rels[1])
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
