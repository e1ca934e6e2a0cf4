"""Judging a change set against a target's expectations.

- every ``must`` pattern matches at least one change;
- every top-level change is covered by a ``must`` or ``may`` pattern (changes nested under a covered change are
  implied by it); anything else is *unexpected*;
- ``rows`` rules hold for the counted row changes — for each table the most specific key that names it (an exact
  name before any glob, then the glob with the most literal characters); ``objects`` (S3 keys) and ``files`` (git
  paths) count rules hold for the added / deleted / modified objects or files whose name matches the glob;
- ``checks`` queries return their expected value on the shadow. A query that fails there (a column the action never
  made) is a failed expectation; only one the server cannot parse is bad input.

A ``must`` pattern that matches nothing names the closest reported address.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from shadow.changes import DATA_MOVED, Change, canonical, is_glob, matches, walk
from shadow.errors import CheckQueryFailed
from shadow.plan import Expectation, RowRule


@dataclass(frozen=True)
class Verdict:
    target: str
    rule: str  # "must", "unexpected", "rows", "check", "action", "fidelity"
    subject: str
    ok: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "rule": self.rule, "subject": self.subject, "ok": self.ok, "message": self.message}


def judge(target: str, changes: list[Change], expectation: Expectation,
          run_check: Callable[[str], Any] | None) -> list[Verdict]:
    out: list[Verdict] = []
    all_changes = list(walk(changes))
    for pattern in expectation.must:
        hit = [c.address for c in all_changes if matches(pattern, c)]
        out.append(Verdict(target, "must", pattern, bool(hit),
                           f"happened: {', '.join(hit[:3])}" if hit else
                           "required change did not happen" + _did_you_mean(pattern, all_changes)))
    patterns = expectation.must + expectation.may
    for change in changes:
        if not any(matches(p, change) for p in patterns):
            hint = "" if expectation.declared else " (the plan has no `expect` for this target)"
            out.append(Verdict(target, "unexpected", change.address, False,
                               f"not covered by must/may{hint}{_count(change)}"))
    row_changes = {(c.op, c.name): c for c in all_changes if c.kind == "rows"}
    for rule, tables in rows_rule_tables(expectation.rows, {name for (_op, name) in row_changes}):
        for table in tables:
            for key, cmp in rule.counts.items():
                op = {"inserted": "insert", "updated": "update", "deleted": "delete"}[key]
                found = row_changes.get((op, table))
                actual = int(found.detail.get("count", 0)) if found else 0
                ok = cmp.holds(actual)
                lost = found.detail.get("lost_values") if found else None
                why = f" ({lost:,} of them lost values in dropped columns)" if lost else ""
                out.append(Verdict(target, "rows", f"{table} {key}", ok, f"{actual} {key}, expected {cmp}{why}"))
    # objects are named <bucket>/<key> and their globs are key globs; files are named by their path
    for rule_name, kind, rules, subject in (("objects", "object", expectation.objects, lambda n: n.split("/", 1)[-1]),
                                            ("files", "file", expectation.files, lambda n: n)):
        counted = [c for c in all_changes if c.kind == kind]
        for orule in rules:
            for key, cmp in orule.counts.items():
                op = {"added": "add", "deleted": "delete", "modified": "modify"}[key]
                actual = sum(1 for c in counted if c.op == op and fnmatch.fnmatchcase(subject(c.name), orule.pattern))
                out.append(Verdict(target, rule_name, f"{orule.pattern} {key}", cmp.holds(actual),
                                   f"{actual} {key}, expected {cmp}"))
    for check in expectation.checks:
        if run_check is None:
            out.append(Verdict(target, "check", check.sql, False, "checks need a shadow to run on"))
            continue
        try:
            actual = run_check(check.sql)
        except CheckQueryFailed as exc:
            out.append(Verdict(target, "check", check.sql, False, "the query failed on the shadow after the action: "
                               f"{exc.server_error}; expected {check.equals!r}"))
            continue
        ok = _same(actual, check.equals)
        out.append(Verdict(target, "check", check.sql, ok, f"returned {actual!r}, expected {check.equals!r}"))
    return out


def rows_rule_tables(rules: tuple[RowRule, ...], changed: set[str]) -> list[tuple[RowRule, list[str]]]:
    """Each ``rows`` rule with the tables it judges: every table (changed, or named exactly by a rule) goes to the
    most specific rules whose key matches it. A glob left with no table is judged once, under its own key, on 0."""
    tables = changed | {r.table for r in rules if not is_glob(r.table)}
    won: dict[int, list[str]] = {i: [] for i in range(len(rules))}
    for table in sorted(tables):
        ranked = [(_specificity(r.table), i) for i, r in enumerate(rules) if fnmatch.fnmatchcase(table, r.table)]
        best = max((rank for rank, _ in ranked), default=None)
        for rank, i in ranked:
            if rank == best:
                won[i].append(table)
    return [(r, won[i] or [r.table]) for i, r in enumerate(rules)]


def _specificity(pattern: str) -> tuple[int, int]:
    """An exact name first; then the glob with the most characters that are not wildcards."""
    if not is_glob(pattern):
        return (1, len(pattern))
    return (0, sum(1 for ch in pattern if ch not in "*?[]"))


def _did_you_mean(pattern: str, changes: list[Change]) -> str:
    """`` — did you mean <address>?`` with the reported address closest to ``pattern``, when one is close."""
    wanted = canonical(pattern)
    scored = [(SequenceMatcher(None, wanted, c.address).ratio(), c.address) for c in changes]
    if not scored:
        return ""
    score, address = max(scored)
    return f"; did you mean `{address}`?" if score >= 0.6 else ""


def _count(change: Change) -> str:
    count = change.detail.get("count")
    return f" ({count} rows)" if count is not None else ""


def _same(actual: Any, expected: Any) -> bool:
    """Compare a query's value with a YAML value: 0 equals 0, '0' and Decimal('0'); true equals 't'."""
    if actual == expected:
        return True
    if isinstance(expected, bool) or isinstance(actual, bool):
        return str(actual).lower() in ("true", "t") if expected is True else str(actual).lower() in ("false", "f")
    try:
        return float(actual) == float(expected)
    except (TypeError, ValueError):
        return str(actual) == str(expected)


def moved_counts(expected: list[Change], actual: list[Change]) -> list[str]:
    """Both figures of every row change whose count differs from the rehearsal's because the data moved on
    since the checkpoint (production flagged it ``data_moved``): such a change is judged against the plan's
    expectations instead of the rehearsal's exact count."""
    rehearsed = {c.address: c for c in walk(expected) if c.kind == "rows"}
    out = []
    for c in walk(actual):
        was = rehearsed.get(c.address)
        if c.kind == "rows" and c.detail.get(DATA_MOVED) and was is not None and \
                was.detail.get("count") != c.detail.get("count"):
            out.append(f"{c.address}: rehearsal {was.detail.get('count')}, production {c.detail.get('count')} "
                       "(others wrote to the table since the checkpoint)")
    return out


def compare_change_sets(expected: list[Change], actual: list[Change]) -> list[str]:
    """How ``actual`` (production after apply) diverges from ``expected`` (the shadow's change set). A row change
    production flags ``data_moved`` must happen in both, but its count and rows may differ (:func:`moved_counts`)."""
    def index(changes: list[Change]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c in walk(changes):
            if c.kind == "rows":
                # the count, and which existing rows (a digest of their keys) for updates and deletes
                out[c.address] = c.detail.get("count") if "keys_digest" not in c.detail else (
                    c.detail.get("count"), c.detail["keys_digest"])
            elif c.kind == "file":
                # the content and mode a file ended with (commit ids differ between runs; file contents do not)
                out[c.address] = {k: v["to"] if isinstance(v, dict) else v for k, v in c.detail.items()
                                  if k in ("blob", "mode")}
            elif c.kind == "ref":
                # the tree a moved ref's commit holds (commit ids differ between runs; what they hold does not)
                out[c.address] = c.detail.get("tree")
            elif c.op == "alter":
                # what changed and to what, but not sequence positions (other sessions move them)
                out[c.address] = {k: v["to"] for k, v in c.detail.items() if k not in ("last_value", "is_called")}
            else:
                out[c.address] = None
        return out

    exp, act = index(expected), index(actual)
    for c in walk(actual):
        if c.kind == "rows" and c.detail.get(DATA_MOVED) and c.address in exp:
            act[c.address] = exp[c.address]  # judged against the expectations instead (moved_counts)
    problems: list[str] = []
    for address in sorted(set(exp) - set(act)):
        problems.append(f"rehearsed but not in production: {address}")
    for address in sorted(set(act) - set(exp)):
        problems.append(f"in production but not rehearsed: {address}")
    for address in sorted(set(exp) & set(act)):
        e, a = exp[address], act[address]
        if e != a:
            if isinstance(e, tuple) and isinstance(a, tuple) and e[0] == a[0]:
                problems.append(f"{address}: {e[0]} in both, but not the same rows")
            else:
                e, a = (v[0] if isinstance(v, tuple) else v for v in (e, a))
                problems.append(f"{address}: rehearsal {e!r}, production {a!r}")
    return problems
