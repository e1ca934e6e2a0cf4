"""The static findings on a run's SQL, made before anything runs, as verdicts: sqlglot's rules
(:mod:`shadow.lint`) and the one that needs the plan's expectations (a statement writing a table they do not
mention)."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from shadow.judge import Verdict
from shadow.plan import Plan
from shadow.result import RunResult
from shadow.sqlsplit import Statement

if TYPE_CHECKING:
    from shadow.lint import Finding


def static_findings(result: RunResult, plan_: Plan, statements: list[Statement],
                    facts: dict[str, Any] | None = None) -> None:
    """sqlglot's findings on the SQL, before anything runs: error-level ones fail the plan unless allowed.

    Called again once the checkpoint knows more about production than the SQL says (``facts``, the checkpoint's
    ``lint_facts``: which tables are partitioned), replacing the first findings."""
    if not statements:
        return
    from shadow import lint  # sqlglot: only for a run with SQL, not at start-up

    facts = facts or {}
    result.verdicts = [v for v in result.verdicts if v.rule != "finding"]
    findings = lint.lint(statements, one_session=plan_.action.one_session,
                         partitioned=facts.get("partitioned", ())) + unexpected_tables(plan_, statements)
    kept, allowed = lint.allowed(findings, list(plan_.policy.allow))
    result.findings = [{**f.to_dict(), "allowed": False} for f in kept] + [{**f.to_dict(), "allowed": True}
                                                                         for f in allowed]
    target = plan_.action.sql_target or ""
    for f in kept:
        if f.severity == "error":
            result.verdicts.append(Verdict(target, "finding", f"{f.id} at {f.where}", False,
                                           f"{f.message} — {f.hint} (or allow it: policy.allow: [{f.id}])"))


def unexpected_tables(plan_: Plan, statements: list[Statement]) -> list[Finding]:
    """A statement writing a table that the expectations do not mention is flagged before the rehearsal."""
    from shadow import lint

    expect = plan_.expect.get(plan_.action.sql_target or "")
    if expect is None or not expect.declared:
        return []
    patterns = [p.split(None, 2)[2] for p in expect.must + expect.may if len(p.split(None, 2)) == 3]
    patterns += [rule.table for rule in expect.rows]
    out = []
    for st in statements:
        for table in sorted(lint.touched(st)[1]):
            qualified = table if "." in table else f"public.{table}"
            if not any(fnmatch.fnmatchcase(qualified, p) or fnmatch.fnmatchcase(qualified, p.rsplit(".", 1)[0])
                       or lint.same_table(table, p) for p in patterns):
                out.append(lint.Finding("unexpected-table", "warning",
                                        f"{st.where} writes {qualified}, which the expectations do not mention",
                                        "add what should happen to it to expect.must / may / rows", st.file, st.line,
                                        st.text))
    return out
