"""``expect:`` — per target, the change addresses that must / may appear, row and object counts, and checks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shadow.changes import is_glob
from shadow.plan.document import Doc, known
from shadow.plan.model import Check, Comparison, Expectation, ObjectRule, RowRule

CMP = re.compile(r"^\s*(==|=|<=|>=|<|>|!=)?\s*(\d+)\s*$")
ROW_KEYS = ("inserted", "updated", "deleted")
OBJECT_KEYS = ("added", "deleted", "modified")


def parse_comparison(value: Any) -> Comparison | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return Comparison("==", value)
    if isinstance(value, str):
        m = CMP.match(value)
        if m:
            op = m.group(1) or "=="
            return Comparison("==" if op == "=" else op, int(m.group(2)))
    return None


def _address_problem(address: Any, kind: Any) -> str | None:
    """Why ``address`` is not a change address the target's kind can produce (None when it is fine)."""
    parts = address.split(None, 2) if isinstance(address, str) else []
    if len(parts) != 3:
        return f"{address!r} is not a change address `<op> <kind> <name>`"
    op, change_kind, _name = parts
    if not is_glob(op) and op not in kind.change_ops:
        return f"{address!r}: unknown operation {op!r} (one of: {', '.join(kind.change_ops)})"
    if not is_glob(change_kind) and change_kind not in kind.change_kinds:
        return f"{address!r}: unknown kind {change_kind!r} (one of: {', '.join(kind.change_kinds)})"
    return None


def load_expectations(doc: Doc, raw: Any, target_kinds: Mapping[str, Any]) -> dict[str, Expectation]:
    names = list(target_kinds)
    if not isinstance(raw, dict):
        doc.problem(("expect",), "must map target names to their expectations")
        return {}
    out: dict[str, Expectation] = {}
    for name, spec in raw.items():
        where = ("expect", name)
        if name not in names:
            if name not in doc.broken_targets:  # a target with a problem of its own is not loaded
                doc.problem(where, f"no target named {name!r} in `targets`")
            continue
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            doc.problem(where, "must be a mapping with must / may / rows / checks")
            continue
        known(doc, spec, where, ("must", "may", "rows", "checks", "objects", "files"))
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("must", "may"):
            items = spec.get(key) or []
            if not isinstance(items, list):
                doc.problem(where + (key,), "must be a list of change addresses like `add column public.users.email`")
                items = []
            for i, item in enumerate(items):
                problem = _address_problem(item, target_kinds[name])
                if problem:
                    doc.problem(where + (key, i), problem)
            lists[key] = tuple(i for i in items if isinstance(i, str))
        rows = [RowRule(table, counts, line) for table, counts, line in
                _count_rules(doc, spec.get("rows"), where + ("rows",), ROW_KEYS, "table names")]
        checks: list[Check] = []
        raw_checks = spec.get("checks") or []
        if not isinstance(raw_checks, list):
            doc.problem(where + ("checks",), "must be a list of {sql, equals}")
            raw_checks = []
        elif raw_checks and name in target_kinds and not target_kinds[name].runs_sql:
            doc.problem(where + ("checks",), f"checks run SQL on the shadow; {name!r} is a "
                                             f"{target_kinds[name].name} target, which has none")
            raw_checks = []
        for i, check in enumerate(raw_checks):
            cwhere = where + ("checks", i)
            if not isinstance(check, dict) or not isinstance(check.get("sql"), str) or "equals" not in check:
                doc.problem(cwhere, "a check needs `sql:` (a query returning one value) and `equals:`")
                continue
            known(doc, check, cwhere, ("sql", "equals"))
            checks.append(Check(check["sql"], check["equals"], doc.line(cwhere)))
        objects = [ObjectRule(pattern, counts, line) for pattern, counts, line in
                   _count_rules(doc, spec.get("objects"), where + ("objects",), OBJECT_KEYS, "key globs")]
        files = [ObjectRule(pattern, counts, line) for pattern, counts, line in
                 _count_rules(doc, spec.get("files"), where + ("files",), OBJECT_KEYS, "path globs")]
        out[name] = Expectation(lists["must"], lists["may"], tuple(rows), tuple(checks), tuple(objects),
                                declared=True, files=tuple(files))
    return out


def _count_rules(doc: Doc, raw: Any, where: tuple[Any, ...], keys: tuple[str, ...],
                 subjects: str) -> list[tuple[str, dict[str, Comparison], int]]:
    """``rows:`` / ``objects:`` — each subject maps to `unchanged` or {key: count or comparison}."""
    if raw is None:
        return []
    example = f'{{{keys[0]}: 0, {keys[-1]}: "<= 10"}}'
    if not isinstance(raw, dict):
        doc.problem(where, f"must map {subjects} to `unchanged` or a mapping like {example}")
        return []
    out: list[tuple[str, dict[str, Comparison], int]] = []
    for subject, rule in raw.items():
        swhere = where + (subject,)
        if rule == "unchanged":
            rule = {k: 0 for k in keys}
        if not isinstance(rule, dict):
            doc.problem(swhere, f"must be `unchanged` or a mapping like {example}")
            continue
        counts: dict[str, Comparison] = {}
        for key, value in rule.items():
            cmp = parse_comparison(value)
            if key not in keys:
                doc.problem(swhere + (key,), f"unknown key (expected one of: {', '.join(keys)})")
            elif cmp is None:
                doc.problem(swhere + (key,), f"{value!r} is not a count or a comparison like \"<= 10\"")
            else:
                counts[key] = cmp
        out.append((str(subject), counts, doc.line(swhere)))
    return out
