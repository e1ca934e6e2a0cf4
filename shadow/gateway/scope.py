"""An actor's scope and blast-radius limits, judged on the change set the rehearsal *measured* — never on the
action's text — so a drop inside a ``DO`` block, a function, a trigger or a ``command:`` counts like a plain
``DROP``. Each broken rule is a failed :class:`~shadow.judge.Verdict` naming the change address and the figure."""

from __future__ import annotations

from typing import Any

from shadow.changes import Change, matches, walk
from shadow.gateway.config import Rules
from shadow.judge import Verdict
from shadow.result import RunResult

DROP_OPS = ("drop", "delete")  # ``delete`` of an object or a file; deleted rows are counted by the rows limits


def judge_rules(rules: Rules, result: RunResult) -> list[Verdict]:
    """The verdicts of ``rules`` on every target's rehearsed change set (one passing verdict per rule that held)."""
    out: list[Verdict] = []
    rows_total = 0
    for name, tr in result.targets.items():
        scope = rules.scope.get(name)
        for change in tr.changes:  # may: the top level (what a change implies is covered by it) …
            if scope is None or not any(matches(p, change) for p in scope.may):
                why = "the actor has no scope on this target" if scope is None else \
                    f"not in the actor's scope ({', '.join(scope.may) or 'nothing'})"
                out.append(Verdict(name, "scope", change.address, False, f"{why}{_rows(change)}"))
        for change in walk(tr.changes):  # … never and drops: every level, implied changes included
            hit = [p for p in (scope.never if scope else ()) if matches(p, change)]
            if hit:
                out.append(Verdict(name, "scope", change.address, False, f"the actor may never change this "
                                   f"(never: {hit[0]}){_rows(change)}"))
        if not rules.drops:
            out += [Verdict(name, "limit", c.address, False, "limits.drops is false: no drop of any kind"
                            + (f" (and {len(list(walk(c.children)))} changes it implies)" if c.children else ""))
                    for c in _drops(tr.changes)]
        per_table: dict[str, int] = {}
        for change in walk(tr.changes):
            if change.kind == "rows":
                per_table[change.name] = per_table.get(change.name, 0) + _count(change)
        for table, n in sorted(per_table.items()):
            rows_total += n
            if rules.rows_per_table is not None and n > rules.rows_per_table:
                out.append(Verdict(name, "limit", f"rows {table}", False, f"{n} rows inserted+updated+deleted in "
                                   f"{table}; limits.rows_per_table allows {rules.rows_per_table}"))
    if rules.rows is not None and rows_total > rules.rows:
        out.append(Verdict("", "limit", "rows", False, f"{rows_total} rows inserted+updated+deleted in all; "
                           f"limits.rows allows {rules.rows}"))
    if not out:
        out.append(Verdict("", "scope", "gateway", True, f"within the actor's scope and limits ({rows_total} rows "
                           "changed)"))
    return out


def _drops(changes: list[Change]) -> list[Change]:
    """Every drop, at any level — but not again the drops a dropped object implies (its columns)."""
    out = []
    for c in changes:
        if c.kind != "rows" and c.op in DROP_OPS:
            out.append(c)
        else:
            out += _drops(c.children)
    return out


def _count(change: Change) -> int:
    detail: dict[str, Any] = change.detail or {}
    return int(detail.get("count") or 0)


def _rows(change: Change) -> str:
    return f" ({_count(change)} rows)" if change.kind == "rows" else ""
