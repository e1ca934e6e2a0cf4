"""Approval of a rehearsal: ``shadow approve RUN_ID --by NAME`` records who approved what, and ``shadow apply
--run RUN_ID`` applies exactly that — refused when the plan, the action's files, the expectations or production
changed since, or when the new rehearsal differs from the approved one.

What an approval binds (:func:`binding`) is written beside a passed plan run that needs approval
(``approval-request.json``) and copied into ``approval.json`` when it is given."""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import ExitStack
from typing import Any

from adapters import Checkpoint, ShadowCopy, Target
from shadow.changes import Change
from shadow.errors import BadInput
from shadow import state
from shadow.judge import Verdict, compare_change_sets
from shadow.outcome import Ending, Outcome
from shadow.plan import Plan
from shadow.result import RunResult, addresses, new_run_id
from shadow.session import Session
from shadow.settings import Settings
from snapshots import sha256_file


def _action_files(plan_: Plan) -> dict[str, str]:
    """The action's files: its SQL files, and any word of its command naming a file beside the plan."""
    files = {str(f): sha256_file(f) for f in plan_.action.sql_files}
    for word in (plan_.action.command or "").split():
        candidate = plan_.folder / word
        if candidate.is_file():
            files[str(candidate)] = sha256_file(candidate)
    return files


def binding(plan_: Plan, checkpoints: dict[str, Checkpoint] | None = None,
            result: RunResult | None = None) -> dict[str, Any]:
    """What an approval binds: the plan file, the action's files, the expectations, and (when rehearsed) the
    checkpoints and the rehearsed change sets."""
    out: dict[str, Any] = {
        "plan_path": str(plan_.path), "plan_sha256": plan_.sha256, "action_files": _action_files(plan_),
        "expectations_sha256": hashlib.sha256(repr(sorted(plan_.expect.items())).encode()).hexdigest(),
    }
    if checkpoints is not None:
        out["checkpoints"] = {n: cp.fingerprint for n, cp in checkpoints.items()}
    if result is not None:
        # As the report shows them: redacted (policy.redact and secret-looking columns, content diffs).
        model = result.to_dict()
        out["changes"] = {t["name"]: t["changes"] for t in model["targets"]}
    return out


def binding_changes(approved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What changed in the plan, its expectations or the action's files since the approval."""
    out = []
    if approved["plan_sha256"] != now["plan_sha256"]:
        out.append(f"the plan file {now['plan_path']} changed")
    if approved["expectations_sha256"] != now["expectations_sha256"]:
        out.append("the expectations changed")
    for path in sorted(set(approved["action_files"]) | set(now["action_files"])):
        if approved["action_files"].get(path) != now["action_files"].get(path):
            out.append(f"the action's file {path} changed")
    return out


def request_approval(session: Session, plan_: Plan, checkpoints: dict[str, Checkpoint]) -> Ending:
    """A passed plan run that needs approval: leave what an approval would bind, and say how to give it."""
    run_id = session.result.run_id
    state.write_run_file(session.settings, run_id, "approval-request.json", json.dumps(
        {"run_id": run_id, "binding": binding(plan_, checkpoints, session.result)}, indent=1).encode(), session.db)
    return Ending(Outcome.AWAITING_APPROVAL, f"passed; awaiting approval: `shadow approve {run_id} --by NAME`, "
                  f"then `shadow apply --run {run_id}`")


def drifted_since_approval(session: Session, targets: dict[str, Target], checkpoints: dict[str, Checkpoint],
                           approval: dict[str, Any], stack: ExitStack, backend: str, limits: Any,
                           shadows: dict[str, ShadowCopy], strict: bool = False) -> Ending | None:
    """Refused when production changed since the approved rehearsal's checkpoint in what the action reads or
    writes (on this run's shadows, :meth:`ShadowCopy.independent`) — or at all, with ``strict``
    (``policy.drift: strict``). What changed is counted against a copy of that checkpoint — the same change-set
    code as the plain apply's drift check; others' writes elsewhere are reported, never blocking."""
    result = session.result
    drifted = [n for n, cp in checkpoints.items() if approval["binding"]["checkpoints"].get(n) != cp.fingerprint]
    blocking: list[str] = []
    for name in drifted:
        with session.step("drift check", name) as step:
            approved_cp = Checkpoint.from_dict(session.store.read_manifest(approval["run_id"], name))
            copy = stack.enter_context(targets[name].shadow(approved_cp, session.store, result.run_id, backend,
                                                            limits))
            changed = targets[name].changes_since(approved_cp, copy)
            independent = [] if strict else shadows[name].independent(changed)
            depends = [c for c in changed if c not in independent]
            tr = result.targets[name]
            if independent:
                tr.warnings.append(f"production also changed since run {approval['run_id']} was approved, in what "
                                   f"this action neither read nor wrote: {addresses(independent)}")
            if depends:
                step.found(f"production changed since run {approval['run_id']} was approved")
                tr.production_changes = depends
                blocking.append(name)
    if not blocking:
        return None
    changed = [c for n in blocking for c in result.targets[n].production_changes or []]
    return Ending(Outcome.REFUSED, f"production {', '.join(blocking)} changed since run {approval['run_id']} was "
                  f"rehearsed and approved (drift{', policy.drift is strict' if strict else ''}, in what the action "
                  f"reads or writes); what changed: {addresses(changed)}; nothing was applied — rehearse and approve "
                  "again")


def compare_with_approved(result: RunResult, approval: dict[str, Any]) -> None:
    """A verdict per target: whether the new rehearsal changed what the approved one did."""
    for name, tr in result.targets.items():
        approved = [Change.from_dict(c) for c in approval["binding"]["changes"].get(name, [])]
        problems = compare_change_sets(approved, tr.changes)
        result.verdicts.append(Verdict(name, "approval", f"run {approval['run_id']}", not problems,
                                       f"the rehearsal matches the one {approval['by']} approved" if not problems else
                                       "the rehearsal differs from the approved one: " + "; ".join(problems[:5])))


def approve(run_id: str, by: str, comment: str = "", settings: Settings | None = None) -> dict[str, Any]:
    """Record who approved which rehearsal; ``shadow apply --run RUN_ID`` then applies exactly that."""
    settings = settings or Settings.from_env()
    if not by.strip():
        raise BadInput("--by must name who approves")
    request = state.local_path(settings, run_id, "approval-request.json")
    if not request.exists():
        raise BadInput(f"run {run_id!r} is not awaiting approval (only a passed `shadow plan` of a plan with "
                       "policy.approval: required is; see `shadow runs`)")
    data = json.loads(request.read_text())
    approval = {"run_id": run_id, "by": by.strip(), "comment": comment, "at": time.time(),
                "binding": data["binding"]}
    state.write_run_file(settings, run_id, "approval.json", json.dumps(approval, indent=1).encode())
    journal = state.open_journal(settings)
    try:
        record_id = new_run_id()
        journal.start_run(record_id, "approve", data["binding"]["plan_path"], data["binding"]["plan_sha256"])
        journal.finish_run(record_id, Outcome.APPROVED.value, f"approved run {run_id} by {by.strip()}"
                           + (f": {comment}" if comment else ""))
    finally:
        journal.close()
    return approval


def read_approval(settings: Settings, run_id: str) -> dict[str, Any]:
    """The approval recorded for ``run_id``; bad input when there is none."""
    path = state.local_path(settings, run_id, "approval.json")
    if not path.exists():
        raise BadInput(f"run {run_id!r} has not been approved (`shadow approve {run_id} --by NAME`)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data
