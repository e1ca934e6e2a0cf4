"""PostgreSQL change sets: catalog changes plus row changes (counted by :mod:`adapters.postgres.rowdiff`), with
implied changes nested under their cause."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shadow.changes import Change, RowDelta, diff_objects

# A column's ordinal shifts when an earlier one is dropped: that is not a change of the column.
IGNORED_PROPERTIES = ("position",)


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
    nesting = _Nesting(before, after, depends_before, depends_after, {c.address: c for c in changes},
                       _column_drops(changes))
    parent_of: dict[str, str] = {}
    for change in changes:
        for candidate in nesting.candidates(change):
            if candidate in nesting.by_address and not _reaches(parent_of, candidate, change.address):
                parent_of[change.address] = candidate
                break
    top: list[Change] = []
    for change in changes:
        parent = parent_of.get(change.address)
        if parent:
            nesting.by_address[parent].children.append(change)
        else:
            top.append(change)
    return top


def _column_drops(changes: list[Change]) -> dict[str, list[str]]:
    """table → the addresses of its dropped columns."""
    out: dict[str, list[str]] = {}
    for c in changes:
        if c.op == "drop" and c.kind == "column":
            out.setdefault(_parent(c.name), []).append(c.address)
    return out


@dataclass(frozen=True)
class _Nesting:
    """What :func:`nest` reads to find a change's cause: both sides' objects and dependencies, every change."""

    before: dict[str, Any]
    after: dict[str, Any]
    depends_before: dict[str, dict[str, str]] | None
    depends_after: dict[str, dict[str, str]] | None
    by_address: dict[str, Change]
    drops_of_table: dict[str, list[str]]

    def candidates(self, change: Change) -> list[str]:
        """The addresses ``change`` may nest under, the likeliest cause first (the first that is a change wins)."""
        props = self.props(change)
        table = table_of(change.kind, change.name, props)
        return [*self._parts_of(change, props, table), *self._inherited(change, table), *self._dependencies(change),
                *self._schema(change)]

    def props(self, change: Change) -> dict[str, Any]:
        side = self.before if change.op == "drop" else self.after
        return side.get(change.kind, {}).get(change.name) or self.before.get(change.kind, {}).get(change.name) or {}

    def parent_table(self, table: str, op: str) -> str | None:
        side = self.before if op == "drop" else self.after
        t = side.get("table", {}).get(table) or self.before.get("table", {}).get(table) or {}
        return t.get("partition_of") or t.get("inherits")

    def _parts_of(self, change: Change, p: dict[str, Any], table: str | None) -> list[str]:
        """What ``change`` is a part or a consequence of: a constraint's index, a column's sequence, a table's
        parts and rows."""
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
            candidates += self.drops_of_table.get(change.name, [])
        return candidates

    def _inherited(self, change: Change, table: str | None) -> list[str]:
        """The same-named part of the parent table: an inherited column, a cloned check or trigger …"""
        if change.kind not in ("column", "constraint", "trigger") or not table:
            return []
        parent = self.parent_table(table, change.op)
        if not parent:
            return []
        candidate = f"{change.op} {change.kind} {parent}.{split_name(change.name)[-1]}"
        if change.op != "alter" or (candidate in self.by_address
                                    and self.by_address[candidate].detail == change.detail):
            return [candidate]
        return []

    def _dependencies(self, change: Change) -> list[str]:
        """An added partition's parent; what a dropped object depended on (:data:`DROP_DEPENDENCIES`)."""
        if change.op == "add":
            deps = self.depends_after.get(f"{change.kind} {change.name}", {}) if self.depends_after else {}
            return [f"add {ref}" for ref, types in sorted(deps.items()) if "P" in types]
        if change.op == "drop" and self.depends_before:
            deps = self.depends_before.get(f"{change.kind} {change.name}", {})
            return [f"drop {ref}" for t in DROP_DEPENDENCIES for ref, types in sorted(deps.items()) if t in types]
        return []

    @staticmethod
    def _schema(change: Change) -> list[str]:
        """The schema an added or dropped object is in, added or dropped with it."""
        if change.kind in ("schema", "extension") or change.op not in ("add", "drop"):
            return []
        parts = split_name(change.name)
        return [f"{change.op} schema {parts[0]}"] if len(parts) > 1 and parts[0] else []


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
