"""Plan files as tests (``pytest --shadow`` / ``shadow_plans``): a :class:`PlanFile` is rehearsed once, and each of
its expectations — and each error-level finding on its SQL — is a :class:`PlanItem` judged from that run's verdicts.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from shadow.pytest_plugin_common import PlanFailed, _once, _settings, _ShadowItem, target_overrides

if TYPE_CHECKING:
    from shadow.plan import Plan
    from shadow.result import RunResult

# Rules that belong to one expectation item each; every other verdict (the action, fidelity, the rehearsed
# rollback, safety …) is the plan's "rehearsal" item's.
ITEM_RULES = ("must", "unexpected", "rows", "objects", "files", "check", "finding")


class PlanFile(pytest.File):
    """A plan file: one rehearsal, shared by the items of its expectations."""

    _result: RunResult | None = None
    _error: str | None = None

    def collect(self) -> Iterator[pytest.Item]:
        from shadow.errors import ShadowError
        from shadow.plan import load_plan, with_targets

        try:
            plan = with_targets(load_plan(self.path, os.environ), target_overrides(self.config))
        except ShadowError as exc:
            yield PlanItem.from_parent(self, name="plan", check=("plan", "", str(exc)))
            return
        self._plan = plan
        self._static = _sql_findings(plan)
        yield PlanItem.from_parent(self, name="rehearsal", check=("rehearsal", "", ""))
        for target, expectation in plan.expect.items():
            for pattern in expectation.must:
                yield PlanItem.from_parent(self, name=f"{target}: must {pattern}", check=("must", target, pattern))
            yield PlanItem.from_parent(self, name=f"{target}: nothing unexpected", check=("unexpected", target, ""))
            for rule in expectation.rows:
                yield PlanItem.from_parent(self, name=f"{target}: rows {rule.table}", check=("rows", target, rule.table))
            for orule in expectation.objects:
                yield PlanItem.from_parent(self, name=f"{target}: objects {orule.pattern}",
                                           check=("objects", target, orule.pattern))
            for orule in expectation.files:
                yield PlanItem.from_parent(self, name=f"{target}: files {orule.pattern}",
                                           check=("files", target, orule.pattern))
            for check in expectation.checks:
                yield PlanItem.from_parent(self, name=f"{target}: check {_short(check.sql)}",
                                           check=("check", target, check.sql))
        target = plan.action.sql_target or ""
        for subject in self._static:
            yield PlanItem.from_parent(self, name=f"{target}: finding {subject}", check=("finding", target, subject))
        if plan.action.sql_files:
            yield PlanItem.from_parent(self, name="findings found by the rehearsal", check=("finding", target, ""))

    def result(self) -> RunResult:
        """The plan's rehearsal, run once (by the first item that needs it)."""
        if self._error is not None:
            raise PlanFailed(self._error)
        if self._result is None:
            from shadow import run

            settings = dataclasses.replace(_settings(self.config), targets=target_overrides(self.config))
            done = _once(self, lambda: run.plan(self.path, settings))
            if isinstance(done, str):
                self._error = f"the rehearsal could not run: {done}"
                raise PlanFailed(self._error)
            self._result = done
        return self._result


def _sql_findings(plan: Plan) -> dict[str, str]:
    """The error-level findings a run of ``plan`` starts with (``shadow.findings.static_findings``: the SQL linted
    before anything runs, the plan's allow list applied), by the subject their verdicts have (``ID at FILE:LINE``):
    what is wrong and what to do.

    Empty when the plan has no SQL or its SQL cannot be read: the rehearsal fails on that, and says why."""
    if not plan.action.sql_files:
        return {}
    from shadow import lint
    from shadow.errors import ShadowError
    from shadow.sqlsplit import load_sql_files

    try:
        statements = load_sql_files(list(plan.action.sql_files), list(plan.action.sql_display))
        kept, _allowed = lint.allowed(lint.lint(statements, one_session=plan.action.one_session),
                                      list(plan.policy.allow))
    except ShadowError:
        return {}
    return {f"{f.id} at {f.where}": f"{f.message} — {f.hint} (or allow it: policy.allow: [{f.id}])"
            for f in kept if f.severity == "error"}


class PlanItem(_ShadowItem):
    def __init__(self, *, check: tuple[str, str, str], **kw: Any) -> None:
        super().__init__(**kw)
        self.check = check

    def runtest(self) -> None:
        rule, target, subject = self.check
        if rule == "plan":
            raise PlanFailed(subject)
        parent = self.parent
        assert isinstance(parent, PlanFile)
        try:
            result = parent.result()
        except PlanFailed as exc:  # the rehearsal item says why; the rest were never judged
            if rule == "rehearsal":
                raise
            if rule == "finding" and subject:  # found on the SQL, before anything ran
                raise PlanFailed(f"FAILED {target}: finding {subject}: {parent._static[subject]}\n"
                                 f"(found on the SQL before the rehearsal, which did not finish: {exc})") from None
            pytest.skip(f"not judged: {exc}")
        mine = _verdicts(result, parent._plan, rule, target, subject)
        if rule == "finding" and not subject:  # the findings the collection's lint did not see
            mine = [v for v in mine if v.subject not in parent._static]
        failed = [v for v in mine if not v.ok]
        if rule == "rehearsal" and (failed or result.outcome.value not in ("passed", "awaiting_approval", "failed")):
            raise PlanFailed(result.explain(failed))
        if failed:
            raise PlanFailed(result.explain(failed, target))
        # A static finding's item is judged before anything runs; every other item only once the run got there.
        if rule != "rehearsal" and not (rule == "finding" and subject) and not _judged(result, rule, target):
            why = next((v.message for v in result.verdicts if v.rule == "action" and not v.ok), result.reason)
            pytest.skip(f"not judged: {why or 'the rehearsal failed'} (see the plan's rehearsal item)")


def _short(text: str, width: int = 60) -> str:
    one = re.sub(r"\s+", " ", text).strip()
    return one if len(one) <= width else one[: width - 1] + "…"


def _judged(result: RunResult, rule: str, target: str) -> bool:
    """Whether the run got as far as judging ``rule`` on ``target``: a target's expectations once its ``judge``
    step ran to its end; the findings the collection did not see once the rehearsal started (the run lints the SQL
    again, knowing the checkpoint, just before)."""
    if rule == "finding":
        return any(s["step"] == "rehearse" for s in result.steps)
    return any(s["step"] == "judge" and s["target"] == target and s["state"] != "failed" for s in result.steps)


def _verdicts(result: RunResult, plan: Plan, rule: str, target: str, subject: str) -> list[Any]:
    """The run's verdicts that belong to one item."""
    if rule == "rehearsal":
        return [v for v in result.verdicts if v.rule not in ITEM_RULES]
    if rule == "finding":
        return [v for v in result.verdicts if v.rule == "finding" and (not subject or v.subject == subject)]
    mine = [v for v in result.verdicts if v.rule == rule and v.target == target]
    if rule in ("must", "check"):
        return [v for v in mine if v.subject == subject]
    if rule in ("objects", "files"):
        return [v for v in mine if v.subject.startswith(subject + " ")]
    if rule == "rows":  # each table is judged by its most specific rule (shadow.judge)
        from shadow.judge import rows_rule_tables

        tables = {v.subject.rsplit(" ", 1)[0] for v in mine}
        owned = {t for r, ts in rows_rule_tables(plan.expect[target].rows, tables) if r.table == subject for t in ts}
        return [v for v in mine if v.subject.rsplit(" ", 1)[0] in owned]
    return mine

