"""The phases that only read production: checkpoint → shadow → rehearse → observe/diff → judge, the shadow's
fidelity, and the rehearsal of the undo. Each adds what it found to the run's result (changes, verdicts,
warnings); none decides how the run ends — :mod:`shadow.run` does, from the verdicts."""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

from adapters import Checkable, Checkpoint, Endpoint, ServerAhead, ShadowCopy, Target, Warmable
from shadow.action import ActionResult, run_action
from shadow.errors import InfrastructureError, ShadowError, SqlError
from shadow.judge import Verdict, judge
from shadow.outcome import Ending, Outcome
from shadow.plan import Plan
from shadow.result import RunResult, addresses
from shadow.session import Session
from shadow.sqlsplit import Statement


def checkpoint_all(session: Session, targets: dict[str, Target], warm: float | None = None,
                   limits: Any = None, ahead: ExitStack | None = None) -> tuple[dict[str, Checkpoint], set[str]]:
    """Checkpoint every target into the store — or, with ``warm`` (``policy.warm``), reuse the checkpoint a
    target keeps warm (:class:`~adapters.Warmable`; checked against production after the rehearsal,
    :func:`warm_check`). A checkpoint's safety findings become verdicts. Returns (the checkpoints, the names of
    the targets whose checkpoint was reused). ``ahead``: shadows will follow, torn down by this stack — a target
    that can (:class:`~adapters.ServerAhead`) starts its shadow's server while its checkpoint is taken."""
    checkpoints: dict[str, Checkpoint] = {}
    reused: set[str] = set()
    for name, t in targets.items():
        with session.step("checkpoint", name):
            cp, why = None, ""
            if warm and isinstance(t, Warmable):
                cp, why = t.warm_checkpoint(session.store, session.result.backend, warm, limits)
                session.progress("info", f"{name}: rehearsing on {why}" if cp else f"{name}: no warm copy to "
                                 f"rehearse on ({why}): checkpointing, and keeping this one warm")
            if cp is None:
                if ahead is not None and isinstance(t, ServerAhead):
                    ahead.enter_context(t.shadow_server_ahead(session.result.run_id, session.result.backend, limits))
                cp = t.checkpoint(session.store, session.result.run_id)
            else:
                reused.add(name)
            session.store.write_manifest(session.result.run_id, name, cp.to_dict())
        checkpoints[name] = cp
        session.result.targets[name].checkpoint = {
            "fingerprint": cp.fingerprint, "artifacts": cp.artifacts,
            "server_version": cp.meta.get("server_version_num"),
            **{k: cp.meta[k] for k in ("mode", "objects", "copied_bytes", "hashes") if k in cp.meta},
            **({"warm": {"run_id": cp.run_id, "reused": name in reused, "why": why}} if warm else {}),
        }
        # Safety findings (an unversioned bucket …) block the plan unless the plan allows them.
        for finding in cp.meta.get("findings", []):
            allowed = bool(finding.get("allowed"))
            session.result.verdicts.append(Verdict(name, "safety", finding["id"], allowed,
                                                   finding["message"] + (" (allowed by the plan)" if allowed else
                                                                         " — add it to the target's `allow:`")))
    return checkpoints, reused


def warm_check(session: Session, targets: dict[str, Target], shadows: dict[str, ShadowCopy],
               checkpoints: dict[str, Checkpoint], reused: set[str]) -> Ending | None:
    """For each target rehearsed on a reused warm checkpoint: has production changed since in what the action
    read or wrote? Then the rehearsal may not predict production, and the run rehearses again on a fresh
    checkpoint (the warm copy is discarded). Changes elsewhere are reported, never blocking."""
    for name in sorted(reused):
        t = targets[name]
        assert isinstance(t, Warmable)
        with session.step("warm check", name) as step:
            independent, depends = t.moved_since(checkpoints[name], shadows[name])
            if depends:
                step.found("production changed what the action reads or writes since the warm checkpoint")
                return Ending(Outcome.REFUSED, f"production {name!r} changed what the action reads or writes since "
                              f"the warm checkpoint of run {checkpoints[name].run_id} ({addresses(depends)})",
                              rehearse_again=True)
        tr = session.result.targets[name]
        tr.warnings.append(f"rehearsed on the warm checkpoint of run {checkpoints[name].run_id}"
                           + (f"; production changed since only in what the action neither read nor wrote: "
                              f"{addresses(independent)}" if independent else "; production unchanged since in "
                              "what the action reads or writes"))
    return None


def open_shadows(session: Session, targets: dict[str, Target], checkpoints: dict[str, Checkpoint],
                 stack: ExitStack, backend: str, limits: Any) -> dict[str, ShadowCopy]:
    """A shadow of every target, built from its checkpoint; ``stack`` tears them down on every path."""
    shadows: dict[str, ShadowCopy] = {}
    for name, t in targets.items():
        with session.step("shadow", name):
            shadows[name] = stack.enter_context(session.timed_exit(
                t.shadow(checkpoints[name], session.store, session.result.run_id, backend, limits),
                "shadow teardown", name))
    return shadows


def rehearse(session: Session, plan_: Plan, statements: list[Statement], targets: dict[str, Target],
             shadows: dict[str, ShadowCopy], endpoints: dict[str, Endpoint], sandbox: Any) -> None:
    """Run the action on the shadows; when it ran, observe what it changed and judge that."""
    result = session.result
    rehearsal = _run_on_shadows(session, plan_, statements, targets, shadows, endpoints, sandbox)
    for traced in rehearsal.locks or []:
        for lock in traced["locks"]:
            limit = plan_.policy.max_lock.get(lock["mode"])
            if limit is not None and lock["seconds"] > limit:
                result.verdicts.append(Verdict(
                    plan_.action.sql_target or "", "max_lock", f"{lock['mode']} on {lock['relation']}", False,
                    f"held {lock['seconds']:.2f} s from {traced['statement']} ({traced['text'][:60]}), "
                    f"policy.max_lock allows {limit:g} s"))
    if not rehearsal.ok:
        result.verdicts.append(Verdict("", "action", "rehearsal", False,
                                       f"the action failed on the shadow: {rehearsal.error}"))
        return
    for name, shadow in shadows.items():
        with session.step("observe", name):
            result.targets[name].changes = shadow.changes()
        with session.step("judge", name) as step:
            verdicts = judge(name, result.targets[name].changes, plan_.expect[name],
                             shadow.check if isinstance(shadow, Checkable) else None)
            failed = sum(not v.ok for v in verdicts)
            if failed:
                step.found(f"{failed} expectation(s) do not hold")
            result.verdicts += verdicts


def _run_on_shadows(session: Session, plan_: Plan, statements: list[Statement], targets: dict[str, Target],
                    shadows: dict[str, ShadowCopy], endpoints: dict[str, Endpoint], sandbox: Any) -> ActionResult:
    result = session.result
    with session.step("rehearse") as step:
        start = time.monotonic()
        sql_text = "\n".join(s.text for s in statements) if plan_.action.kind == "sql" else None
        for name, shadow in shadows.items():  # from here on each copy measures what the action reads and writes
            shadow.watch(sql_text if name == plan_.action.sql_target else None)
        try:
            result.rehearsal = run_action(plan_, statements, endpoints, targets, session.settings.environ,
                                          session.dir / "action-rehearsal.log", session.launch(), sandbox)
        except SqlError as exc:  # bad input: the run ends as an error, with the statement's failure on record
            result.rehearsal = ActionResult(False, time.monotonic() - start, "sql", str(exc))
            result.verdicts.append(Verdict(plan_.action.sql_target or "", "action", "rehearsal", False, str(exc)))
            raise
        except ShadowError:
            raise_if_a_shadow_died(result, shadows)
            raise
        if not result.rehearsal.ok:
            raise_if_a_shadow_died(result, shadows)
            step.found("the action failed on the shadow")
    return result.rehearsal


def raise_if_a_shadow_died(result: RunResult, shadows: dict[str, ShadowCopy]) -> None:
    """A rehearsal that failed because its shadow's server died (killed, container gone) failed for want of
    infrastructure, not because of the action: say so instead of blaming the action."""
    for name, shadow in shadows.items():
        why = shadow.lost()
        if why:
            raise InfrastructureError(f"the shadow's server ({result.backend} backend) died during the rehearsal "
                                      f"({why}); production was not touched", target=name)


def fidelity(session: Session, name: str, shadow: ShadowCopy, checkpoint: Checkpoint) -> None:
    """Whether the shadow was a faithful copy of the checkpoint (read after the rehearsal: the pristine copy is
    observed while the action runs)."""
    result = session.result
    tr = result.targets[name]
    tr.warnings += shadow.warnings
    with session.step("fidelity check", name) as step:
        problems = list(shadow.fidelity)
        if problems:
            step.found("the shadow is not a faithful copy of the checkpoint")
    result.verdicts.append(Verdict(
        name, "fidelity", "shadow equals checkpoint", not problems,
        "the shadow observes equal to the checkpoint" if not problems
        else "the shadow is not a faithful copy of the checkpoint: " + "; ".join(problems[:5]),
    ))


def rehearse_rollback(session: Session, shadows: dict[str, ShadowCopy], undone: set[str]) -> None:
    """Prove the undo on each shadow: undo the rehearsal's own change (the targets in ``undone``, whose apply keeps
    an undo record) or restore it from the checkpoint, and verify it observes equal again."""
    result = session.result
    for name, shadow in shadows.items():
        with session.step("rehearse rollback", name) as step:
            try:
                problems = shadow.rehearse_rollback(undo=name in undone)
            except ShadowError as exc:
                problems = [str(exc)]
            except Exception as exc:  # noqa: BLE001 - a failed undo is a verdict on the plan, not a crash
                problems = [f"{type(exc).__name__}: {exc}"]
            if problems:
                step.found("the undo did not bring the shadow back to the checkpoint")
        how = ("undoing the rehearsal's own change on the shadow, as `shadow rollback` undoes the apply's (or "
               "restoring the checkpoint where that change needs it)" if name in undone else
               "restoring the shadow from the checkpoint after the rehearsal")
        result.verdicts.append(Verdict(
            name, "rollback", "the undo restores the checkpoint", not problems,
            f"{how}: it observes equal to the checkpoint" if not problems else f"{how} did NOT bring it back: "
            + "; ".join(problems[:5])))


def failure_reason(result: RunResult) -> str:
    """The reason of a run whose verdicts do not all hold: the unexpected changes, then the rest."""
    failed = [v for v in result.verdicts if not v.ok]
    unexpected = [v for v in failed if v.rule == "unexpected"]
    parts = []
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected change(s): " + ", ".join(v.subject for v in unexpected[:5]))
    others = [v for v in failed if v.rule != "unexpected"]
    if others:
        parts.append("; ".join(f"{v.rule} {v.subject}: {v.message}" for v in others[:5]))
    return "expectations failed — " + "; ".join(parts)
