"""Change sets: what differs between two observations, as addressed changes.

Every change has one address ``<op> <kind> <name>`` (``add column public.users.email_verified``,
``delete rows public.sessions``). Adapters turn their observations into changes with :func:`diff_objects`
(the same function for the rehearsal, the post-apply check and the rollback check) and may nest the changes
that one change implies under it (an added table's columns and indexes) — nested changes are shown, but
expectations only need to cover the top level.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


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

    def summary(self) -> str:
        """One line of plain text: the address, what it amounts to, how many changes it implies."""
        return change_summary(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Change:
        return cls(
            data["op"], data["kind"], data["name"], dict(data.get("detail") or {}),
            [cls.from_dict(c) for c in data.get("implied") or []],
        )


# A rows change's detail: others wrote to the table between the checkpoint and the apply, so its count may differ
# from the rehearsal's for that reason (shadow.judge.moved_counts).
DATA_MOVED = "data_moved"


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
    # Dropped columns: raw column name → the non-NULL values it held; ``updated_by_drop`` of the updated rows changed
    # only by losing such values (counted in ``updated``: a destroyed value is not an unchanged row).
    destroyed: dict[str, int] = field(default_factory=dict)
    updated_by_drop: int = 0
    keys: dict[str, list[str]] = field(default_factory=dict)  # op → every changed key, when asked for (an undo)

    @property
    def empty(self) -> bool:
        return not (self.inserted or self.updated or self.deleted)

    def count(self, op: str) -> int:
        return {"insert": self.inserted, "update": self.updated, "delete": self.deleted}[op]


def walk(changes: Iterable[Change]) -> Iterator[Change]:
    for change in changes:
        yield from change.walk()


def matches(pattern: str, change: Change) -> bool:
    """``pattern`` is an address whose name (and op/kind) may use shell-style globs.

    A routine's argument list is compared in one spelling on both sides (:func:`routine_name`), so
    ``public.f(int, timestamptz)`` matches the reported ``public.f(integer,timestamp with time zone)``.
    An object (``bucket/key``) may also be named by its key alone (``modify object reports/*``), as ``objects:``
    rules are: the bucket is the target's, and often only known from the environment.
    """
    parts = pattern.split(None, 2)
    if len(parts) != 3:
        return False
    op, kind, name = parts
    if not (fnmatch.fnmatchcase(change.op, op) and fnmatch.fnmatchcase(change.kind, kind)):
        return False
    if change.kind in ROUTINE_KINDS:
        name, reported = routine_name(name), routine_name(change.name)
        # ``integer[]`` is a type, not a glob character class: equal names match before globbing
        return name == reported or fnmatch.fnmatchcase(reported, name)
    if change.kind == "object" and "/" in change.name and fnmatch.fnmatchcase(change.name.split("/", 1)[1], name):
        return True
    return fnmatch.fnmatchcase(change.name, name)


def is_glob(pattern: str) -> bool:
    """Whether ``pattern`` uses shell-style wildcards."""
    return any(ch in pattern for ch in "*?[")


def canonical(pattern: str) -> str:
    """``pattern`` with a routine's argument list in :func:`routine_name`'s spelling (for showing and comparing)."""
    parts = pattern.split(None, 2)
    if len(parts) == 3 and parts[1] in ROUTINE_KINDS:
        return f"{parts[0]} {parts[1]} {routine_name(parts[2])}"
    return pattern


# -- routine signatures ----------------------------------------------------------------------------------------
# PostgreSQL names a function by its input argument types as ``regprocedure`` prints them: no spaces after commas,
# the SQL-standard type names, no typmods, no argument names, defaults or OUT arguments. A user writes the
# signature as in CREATE FUNCTION. https://www.postgresql.org/docs/current/datatype.html (the aliases table)

ROUTINE_KINDS = ("function", "procedure")

TYPE_ALIASES = {
    "int": "integer", "int4": "integer", "int2": "smallint", "int8": "bigint",
    "float4": "real", "float8": "double precision", "float": "double precision",
    "bool": "boolean", "varchar": "character varying", "char varying": "character varying",
    "char": "character", "bpchar": "character", "decimal": "numeric", "varbit": "bit varying",
    "timestamptz": "timestamp with time zone", "timestamp": "timestamp without time zone",
    "timetz": "time with time zone", "time": "time without time zone",
    "national character varying": "character varying", "national char varying": "character varying",
    "national character": "character", "national char": "character", "nchar": "character",
}
# Types spelled in more than one word (after aliases are resolved), besides ``<type> with[out] time zone``.
_MULTIWORD = {"double precision", "character varying", "bit varying", "char varying", "national character",
              "national char", "national character varying", "national char varying",
              "timestamp with time zone", "timestamp without time zone", "time with time zone",
              "time without time zone"}
_MODES = ("in", "out", "inout", "variadic")
_TOKEN = re.compile(r'\[\s*\d*\s*\]|(?:"(?:[^"]|"")*"|[^\s"\[\]])+')  # a [dim], or a word (maybe qualified)


def routine_name(name: str) -> str:
    """``schema.f(<args>)`` with its argument list in ``regprocedure``'s spelling; other names as they are."""
    start = _unquoted_paren(name)
    if start is None or not name.rstrip().endswith(")"):
        return name
    body = name[start + 1 : name.rstrip().rindex(")")]
    args = [a for a in (_argument(a) for a in _split_args(body)) if a is not None]
    return f"{name[:start].rstrip()}({','.join(args)})"


def _unquoted_paren(name: str) -> int | None:
    quoted = False
    for i, ch in enumerate(name):
        if ch == '"':
            quoted = not quoted
        elif ch == "(" and not quoted:
            return i
    return None


def _split_args(body: str) -> list[str]:
    """Split at top-level commas (not inside quotes, a default's string or parentheses)."""
    out, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(body):
        if ch in "\"'" and quote in ("", ch):
            quote = "" if quote else ch
        elif quote:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(body[start:i])
            start = i + 1
    out.append(body[start:])
    return [a for a in out if a.strip()]


def _argument(text: str) -> str | None:
    """One argument's type in ``regprocedure``'s spelling; None for an OUT argument (not part of the name)."""
    text = re.split(r"(?i)\s(?:default\s|=)|=", " " + text, maxsplit=1)[0]  # a default value
    text = _drop_typmods(text)
    tokens = [_fold(t) for t in _TOKEN.findall(text)]
    if tokens and tokens[0] in _MODES:
        if tokens[0] == "out":
            return None
        tokens = tokens[1:]
    # [name] type: a first word that does not start the type is the argument's name
    if len(tokens) > 1 and not _is_type(tokens):
        tokens = tokens[1:]
    return _type_text(tokens)


def _drop_typmods(text: str) -> str:
    """``numeric(10, 2)`` → ``numeric``: a function's arguments have no typmod (quoted names are kept)."""
    out, depth, quoted = [], 0, False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if not quoted and ch == "(":
            depth += 1
            continue
        if not quoted and ch == ")" and depth:
            depth -= 1
            continue
        if depth == 0:
            out.append(ch)
    return "".join(out)


def _split_array(tokens: list[str]) -> tuple[list[str], int]:
    """The type's words and how many array dimensions follow (``[]``, ``[3]``, ``ARRAY``)."""
    dims = 0
    while tokens and (tokens[-1].startswith("[") or tokens[-1] == "array"):
        dims += 1
        tokens = tokens[:-1]
    return tokens, dims


_INTERVAL_FIELDS = {"year", "month", "day", "hour", "minute", "second", "to"}


def _is_type(tokens: list[str]) -> bool:
    words, _ = _split_array(tokens)
    phrase = " ".join(words)
    return (len(words) == 1 or phrase in _MULTIWORD or phrase in TYPE_ALIASES
            or (words[0] == "interval" and set(words[1:]) <= _INTERVAL_FIELDS))


def _type_text(tokens: list[str]) -> str:
    words, dims = _split_array(tokens)
    if words[:1] == ["interval"]:
        words = ["interval"]  # interval's fields (YEAR TO MONTH …) are a typmod
    phrase = " ".join(words)
    if phrase.startswith("pg_catalog."):
        phrase = phrase[len("pg_catalog."):]
    phrase = TYPE_ALIASES.get(phrase, phrase)
    return phrase + "[]" * dims


def _fold(word: str) -> str:
    """A word as PostgreSQL reads it, part by part: unquoted parts in lower case; a quoted part that needs no
    quotes unquoted (``"Mood"`` stays, ``"mood"`` → ``mood``), except type names (``"char"`` is its own type)."""
    parts = re.findall(r'"(?:[^"]|"")*"|[^."]+', word)
    out = []
    for part in parts:
        if not part.startswith('"'):
            out.append(part.lower())
        elif re.fullmatch(r'"[a-z_][a-z0-9_$]*"', part) and part[1:-1] not in TYPE_ALIASES:
            out.append(part[1:-1])
        else:
            out.append(part)
    return ".".join(out)


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


def listed(lines: list[str], limit: int = 20) -> list[str]:
    """``lines`` cut to ``limit``, the rest counted (how a restore check or a fidelity check says what differs)."""
    return lines if len(lines) <= limit else lines[:limit] + [f"… and {len(lines) - limit} more"]


def change_summary(c: dict[str, Any]) -> str:
    """A change on one line of plain text: its address, what it amounts to, and how many changes it implies."""
    detail = c.get("detail") or {}
    text = c["address"]
    if "count" in detail:
        text += f" — {detail['count']:,} row{'s' if detail['count'] != 1 else ''}"
    elif "rows_before" in detail:
        text += f" — content changed (rows: {detail['rows_before']:,} → {detail['rows_after']:,})"
    elif c["op"] == "alter":
        keys = [k for k, v in detail.items() if isinstance(v, dict)]
        text += f" — {', '.join(keys)}" if keys else ""
    implied = implied_count(c)
    return text + (f" (+{implied} implied)" if implied else "")


def implied_count(c: dict[str, Any]) -> int:
    """How many changes ``c`` (a :meth:`Change.to_dict`) implies, at any depth."""
    return sum(1 + implied_count(child) for child in c.get("implied") or [])
