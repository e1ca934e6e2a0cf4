"""Change sets: what differs between two observations, as addressed changes.

Every change has one address ``<op> <kind> <name>`` (``add column public.users.email_verified``,
``delete rows public.sessions``). Adapters turn their observations into changes with :func:`diff_objects`
(the same function for the rehearsal, the post-apply check and the rollback check) and may nest the changes
that one change implies under it (an added table's columns and indexes) — nested changes are shown, but
expectations only need to cover the top level.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from deepdiff import DeepDiff


@dataclass
class Change:
    op: str
    kind: str
    name: str
    detail: dict[str, Any] = field(default_factory=dict)
    children: list[Change] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.op} {self.kind} {self.name}"

    def walk(self) -> Iterator[Change]:
        yield self
        for child in self.children:
            yield from child.walk()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address, "op": self.op, "kind": self.kind, "name": self.name}
        if self.detail:
            out["detail"] = self.detail
        if self.children:
            out["implied"] = [c.to_dict() for c in self.children]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Change:
        return cls(
            data["op"], data["kind"], data["name"], dict(data.get("detail") or {}),
            [cls.from_dict(c) for c in data.get("implied") or []],
        )


@dataclass(frozen=True)
class RowDelta:
    """Row changes of one table between two observations."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    by_key: bool = True  # False: no primary key; compared as multisets (updates show as delete + insert)
    samples: dict[str, list[str]] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)  # op → order-independent digest of the changed keys
    sample_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # op → {key, before, after}, redacted

    @property
    def empty(self) -> bool:
        return not (self.inserted or self.updated or self.deleted)

    def count(self, op: str) -> int:
        return {"insert": self.inserted, "update": self.updated, "delete": self.deleted}[op]


def walk(changes: Iterable[Change]) -> Iterator[Change]:
    for change in changes:
        yield from change.walk()


def matches(pattern: str, change: Change) -> bool:
    """``pattern`` is an address whose name (and op/kind) may use shell-style globs."""
    parts = pattern.split(None, 2)
    if len(parts) != 3:
        return False
    op, kind, name = parts
    return (
        fnmatch.fnmatchcase(change.op, op)
        and fnmatch.fnmatchcase(change.kind, kind)
        and fnmatch.fnmatchcase(change.name, name)
    )


def diff_objects(
    before: dict[str, dict[str, dict[str, Any]]],
    after: dict[str, dict[str, dict[str, Any]]],
    ignore: Iterable[str] = (),
) -> list[Change]:
    """add/drop/alter changes per kind and name; ``alter`` details list each property's from → to."""
    ignored = set(ignore)
    changes: list[Change] = []
    for kind in sorted(set(before) | set(after)):
        b, a = before.get(kind, {}), after.get(kind, {})
        for name in sorted(set(a) - set(b)):
            changes.append(Change("add", kind, name, _interesting(a[name])))
        for name in sorted(set(b) - set(a)):
            changes.append(Change("drop", kind, name, _interesting(b[name])))
        for name in sorted(set(a) & set(b)):
            delta = {
                key: {"from": b[name].get(key), "to": a[name].get(key)}
                for key in sorted(set(a[name]) | set(b[name]))
                if key not in ignored and b[name].get(key) != a[name].get(key)
            }
            if delta:
                changes.append(Change("alter", kind, name, delta))
    return changes


def _interesting(props: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in props.items() if v not in (None, {}, [], False)}


def differences(before: Any, after: Any, limit: int = 20) -> list[str]:
    """Human-readable differences between two observations (for "restore verified?" messages)."""
    report = DeepDiff(before, after, ignore_order=False, verbose_level=2)
    lines: list[str] = []
    for category, items in report.items():
        entries = items.items() if isinstance(items, dict) else ((i, None) for i in items)
        for path, value in entries:
            text = f"{category.replace('_', ' ')}: {path}"
            if isinstance(value, dict) and "old_value" in value:
                text += f": {_short(value['old_value'])} → {_short(value['new_value'])}"
            lines.append(text)
    if len(lines) > limit:
        lines = lines[:limit] + [f"… and {len(lines) - limit} more"]
    return lines


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
