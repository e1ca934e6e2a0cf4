"""The public verbs of a run — ``plan``, ``apply``, ``rollback`` — as plain functions (the CLI is a thin layer
over them); each returns a :class:`RunResult` and writes the run's report.

A run goes checkpoint → shadow → rehearse → observe/diff → judge (:mod:`shadow.rehearsal`, production only
read), then for ``apply`` drift check → apply → verify | roll back (:mod:`shadow.production`). Each phase that
ends the run returns an :class:`~shadow.outcome.Ending`, recorded once here. Shadows live in an ``ExitStack`` so
they are torn down on every path, Ctrl-C and SIGTERM included; the plumbing every run shares (journal first,
fault points, the report written in ``finally``) is :class:`shadow.session.Session`.

Approval (:mod:`shadow.approval`), recovery (:mod:`shadow.recovery`) and listing (:mod:`shadow.listing`) live in
their own modules; their verbs are importable from here too.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from adapters import Checkpoint, Endpoint, ShadowCopy, Target
from shadow.approval import (approve, binding, binding_changes, compare_with_approved, drifted_since_approval,
                             read_approval, request_approval)
from shadow.errors import BadInput, InfrastructureError, ShadowError
from shadow.findings import static_findings
from shadow import state
from shadow.guard import holder_text
from shadow.judge import Verdict
from shadow.listing import runs, show
from shadow.outcome import Ending, Outcome
from shadow.plan import Plan, load_plan, with_targets
from shadow.plan.state import with_state
from shadow.production import apply_to_production, how_applied, restore_all, restore_target
from shadow.recovery import recover
from shadow.rehearsal import (checkpoint_all, failure_reason, fidelity, open_shadows, rehearse,
                              rehearse_rollback, warm_check)
from shadow.result import RunResult, TargetResult, addresses, new_run_id
from shadow.session import DEFAULT_LOCK_TIMEOUT, Progress, Session, make_targets, quiet
from shadow.settings import Settings
from shadow.sqlsplit import Statement, load_sql_files
from shadow.undoing import undo_run, why_not
from snapshots import open_store

__all__ = ["DEFAULT_LOCK_TIMEOUT", "Outcome", "Progress", "RunResult", "TargetResult", "addresses", "apply",
           "approve", "binding", "choose_backend", "new_run_id", "plan", "read_approval", "recover",
           "restore_target", "rollback", "runs", "show"]


def choose_backend(policy: str, settings: Settings) -> tuple[str, str]:
    """The backend for this run and why; ``SHADOW_BACKEND`` overrides the plan's ``policy.backend``."""
    from adapters.docker import engine_answers

    wanted = settings.backend or policy
    origin = "SHADOW_BACKEND" if settings.backend else "policy.backend"
    if wanted not in ("auto", "local", "docker"):
        raise BadInput(f"{origin}: {wanted!r} is not one of auto, local, docker")
    if wanted == "local":
        return "local", f"{origin} is local"
    answers, why = engine_answers()
    if wanted == "docker":
        if not answers:
            raise InfrastructureError(f"{origin} is docker but {why}")
        return "docker", f"{origin} is docker; {why}"
    if answers:
        return "docker", f"auto: {why}"
    return "local", f"auto: {why}; using the local PostgreSQL binaries"


Judges = Sequence[Callable[[RunResult], list[Verdict]]]


def plan(plan_file: str | Path, settings: Settings | None = None, progress: Progress = quiet,
         judges: Judges = ()) -> RunResult:
    """Rehearse the plan on shadows and judge it. Production is only read.

    ``judges``: more rules the rehearsed result must meet (the gateway's scope and limits), judged like the plan's
    expectations — a failed one fails the run and is in its report."""
    return _execute(plan_file, settings or Settings.from_env(), "plan", progress, judges=judges)


def apply(plan_file: str | Path | None, settings: Settings | None = None, progress: Progress = quiet,
          lock_timeout: float = DEFAULT_LOCK_TIMEOUT, approved_run: str | None = None,
          judges: Judges = ()) -> RunResult:
    """Rehearse, and if the plan passes, apply to production, verify, or roll back.

    ``approved_run``: apply exactly the rehearsal approved with ``shadow approve`` — refused if the plan, the
    action's files, the expectations or production changed since, or if the new rehearsal differs from it.
    """
    settings = with_plan_state(settings or Settings.from_env(), plan_file)
    approval = None
    if approved_run is not None:
        approval = read_approval(settings, approved_run)
        plan_file = plan_file or approval["binding"]["plan_path"]
    if plan_file is None:
        raise BadInput("apply needs a plan file, or --run RUN_ID of an approved plan run")
    return _execute(plan_file, settings, "apply", progress, lock_timeout, approval, judges)


def with_plan_state(settings: Settings, plan_file: str | Path | None) -> Settings:
    """``settings`` with the shared state and store the plan's ``state:`` names (the environment's win): a command
    given ``-f PLAN`` finds its runs where that plan's runs are kept."""
    if plan_file is None:
        return settings
    return with_state(settings, load_plan(Path(plan_file), settings.environ).state)


def _load(plan_file: str | Path, settings: Settings, command: str,
          approval: dict[str, Any] | None) -> tuple[Plan, list[Statement]]:
    """The plan and its SQL, refused when it needs an approval it lacks or changed since the one it has."""
    loaded = with_targets(load_plan(Path(plan_file), settings.environ), settings.targets)
    statements = load_sql_files(list(loaded.action.sql_files), list(loaded.action.sql_display))
    if command == "apply" and loaded.policy.approval == "required" and approval is None:
        raise BadInput(f"{loaded.path}: policy.approval is required — run `shadow plan`, have someone run "
                       "`shadow approve RUN_ID --by NAME`, then `shadow apply --run RUN_ID`")
    if approval is not None:
        changed = binding_changes(approval["binding"], binding(loaded))
        if changed:
            raise BadInput(f"run {approval['run_id']} was approved, but since then {'; '.join(changed)} — "
                           "rehearse and approve again")
    return loaded, statements


def _execute(plan_file: str | Path, settings: Settings, command: str, progress: Progress,
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT, approval: dict[str, Any] | None = None,
             judges: Judges = ()) -> RunResult:
    loaded, statements = _load(plan_file, settings, command, approval)
    settings = with_state(settings, loaded.state)
    backend, why = choose_backend(loaded.policy.backend, settings)
    if loaded.action.isolation == "container" and backend != "docker":
        raise BadInput("action.isolation: container needs the docker backend, but this run uses "
                       f"{backend} ({why})")
    targets = make_targets(loaded, settings, progress)
    state.refuse_if_unrecovered(settings, {n: t.describe() for n, t in targets.items()})
    result = RunResult(new_run_id(), command, str(loaded.path), time.time(), backend, why,
                       action=loaded.action.describe())
    result.redact = loaded.policy.redact
    static_findings(result, loaded, statements)
    for name, t in targets.items():
        result.targets[name] = TargetResult(name, t.kind, t.describe())
    session = Session(settings, result, progress)
    session.judges = judges
    with session.running():
        with ExitStack() as stack:
            if command == "apply":
                # Held from before the checkpoint to the end: nobody else writes through shadow meanwhile.
                stack.enter_context(state.lock_targets(settings, targets,
                                                 holder_text(result.run_id, command), lock_timeout,
                                                 lambda text: progress("info", text)))
                # Checked again under the locks: a run that held them may have been killed meanwhile.
                state.refuse_if_unrecovered(settings, {n: t.describe() for n, t in targets.items()})
            session.begin(targets, str(loaded.path), loaded.sha256)
            progress("info", f"run {result.run_id}: {backend} backend ({why})")
            result.end(_run_phases(session, loaded, statements, targets, stack, approval))
    return result


def _run_phases(session: Session, plan_: Plan, statements: list[Statement], targets: dict[str, Target],
                stack: ExitStack, approval: dict[str, Any] | None) -> Ending:
    """Checkpoint, shadow, rehearse and judge; then end the run as the verdicts and the command say.

    An apply that cannot run in one transaction, refused because production changed what the action reads or
    writes since the checkpoint (so the rehearsal may no longer predict it), is rehearsed once more on a fresh
    checkpoint — and refused only if production moved again meanwhile."""
    result = session.result
    verdicts, targets_before = list(result.verdicts), copy.deepcopy(result.targets)
    with ExitStack() as attempt:
        ending = _attempt(session, plan_, statements, targets, attempt, approval)
    if not ending.rehearse_again:
        return ending
    session.progress("info", "production changed what the action reads or writes since the checkpoint: "
                             "rehearsing again on a fresh checkpoint")
    first = ending.reason
    result.verdicts, result.targets = verdicts, targets_before
    result.rehearsal = result.production = None
    result.divergence = []
    ending = _attempt(session, plan_, statements, targets, stack, approval)
    for tr in result.targets.values():
        tr.warnings.append(f"rehearsed twice: the first checkpoint was refused — {first}")
    if ending.rehearse_again:
        return Ending(Outcome.REFUSED, f"production moved again while shadow rehearsed on a fresh checkpoint: "
                      f"{ending.reason}")
    if ending.outcome is not Outcome.APPLIED:
        ending = dataclasses.replace(ending, reason=f"{ending.reason} (on a second rehearsal, from a fresh "
                                                    f"checkpoint; the first was refused: {first})")
    return ending


def _attempt(session: Session, plan_: Plan, statements: list[Statement], targets: dict[str, Target],
             stack: ExitStack, approval: dict[str, Any] | None) -> Ending:
    """One checkpoint, rehearsal and judgement — and, for ``apply``, the apply; ``stack`` holds the shadows."""
    result = session.result
    warm = keep_warm(plan_, session.settings)
    checkpoints, reused = checkpoint_all(session, targets, warm, plan_.policy.limits, ahead=stack)
    sql_target = plan_.action.sql_target if statements else None
    facts = checkpoints[sql_target].meta.get("lint_facts") if sql_target else None
    if facts and any(facts.values()):  # lint again only when the checkpoint knows something the SQL does not
        static_findings(result, plan_, statements, facts)
    shadows = open_shadows(session, targets, checkpoints, stack, result.backend, plan_.policy.limits)
    endpoints, sandbox = _endpoints(session, plan_, shadows, stack)
    rehearse(session, plan_, statements, targets, shadows, endpoints, sandbox)
    stale = warm_check(session, targets, shadows, checkpoints, reused)
    if stale is not None:
        return stale
    if approval is not None:  # after the rehearsal: its shadows know what the action reads and writes
        refused = drifted_since_approval(session, targets, checkpoints, approval, stack, result.backend,
                                         plan_.policy.limits, shadows, plan_.policy.drift == "strict")
        if refused is not None:
            return refused
    for name in targets:  # read after the rehearsal: the pristine copy is observed while the action runs
        fidelity(session, name, shadows[name], checkpoints[name])
    for more in session.judges:
        result.verdicts += more(result)
    if result.passed and plan_.policy.rehearse_rollback:
        sql_target, _, one_transaction = how_applied(plan_, statements, targets)
        rehearse_rollback(session, shadows, {sql_target} if one_transaction and sql_target else set())
    elif not plan_.policy.rehearse_rollback:
        for tr in result.targets.values():
            tr.warnings.append("the rollback is unrehearsed (policy.rehearse_rollback: false)")
    if approval is not None and result.passed:
        compare_with_approved(result, approval)
    if not result.passed:
        return Ending(Outcome.FAILED if result.command == "plan" else Outcome.REFUSED, failure_reason(result))
    if result.command == "plan" and plan_.policy.approval == "required":
        return request_approval(session, plan_, checkpoints)
    if result.command == "plan":
        return Ending(Outcome.PASSED)
    return apply_to_production(session, plan_, statements, targets, shadows, checkpoints, sandbox)


def keep_warm(plan_: Plan, settings: Settings) -> float | None:
    """How long to keep checkpoints warm: ``SHADOW_WARM`` (a duration, or off), else ``policy.warm``; never for
    ``isolation: container`` (the shadow joins the run's own network)."""
    from shadow.plan.document import duration

    if plan_.action.isolation == "container":
        return None
    if settings.warm is not None:
        if settings.warm.strip().lower() in ("off", "0", "false", "no"):
            return None
        seconds = duration(settings.warm)
        if seconds is None:
            raise BadInput(f"SHADOW_WARM: {settings.warm!r} is not a duration like 10m, 1h (or off)")
        return seconds
    return plan_.policy.warm


def _endpoints(session: Session, plan_: Plan, shadows: dict[str, ShadowCopy],
               stack: ExitStack) -> tuple[dict[str, Endpoint], Any]:
    """Where the action reaches the shadows — through the sandbox's network when it runs in a container."""
    endpoints: dict[str, Endpoint] = {n: s.endpoint for n, s in shadows.items()}
    if plan_.action.isolation != "container":
        return endpoints, None
    from shadow.sandbox import Sandbox

    sandbox = stack.enter_context(Sandbox(session.result.run_id, plan_.action.image or session.settings.action_image,
                                          plan_.action.limits))
    return {n: s.attach(sandbox.network) for n, s in shadows.items()}, sandbox


def rollback(run_id: str, settings: Settings | None = None, plan_file: str | Path | None = None,
             force: bool = False, progress: Progress = quiet,
             lock_timeout: float = DEFAULT_LOCK_TIMEOUT, full: bool = False) -> RunResult:
    """Undo an applied run and verify it: only the run's own change when its apply kept an undo record (other
    sessions' writes since are kept), else — or with ``full`` — by restoring the whole checkpoint."""
    settings = with_plan_state(settings or Settings.from_env(), plan_file)
    journal = state.open_journal(settings)
    try:
        original = journal.run(run_id)
    finally:
        journal.close()
    if original.command != "apply" or original.outcome != Outcome.APPLIED:
        if not force:
            raise BadInput(f"run {run_id} was not applied (it was a `{original.command}`, outcome "
                           f"{original.outcome}); nothing to roll back (use --force to restore its checkpoint anyway)")
    earlier = None if force else _rolled_back_by(settings, run_id)
    if earlier is not None:
        raise BadInput(f"run {run_id} was already rolled back by run {earlier} (production was restored to its "
                       "checkpoint and verified then); nothing to do (use --force to restore it again)")
    open_store(settings).refuse_if_pruned(run_id)  # before its plan, which may have gone with it
    loaded = load_plan(Path(plan_file or original.plan_path), settings.environ)
    targets = make_targets(loaded, settings, progress)
    result = RunResult(new_run_id(), "rollback", str(loaded.path), time.time(), of_run=run_id,
                       action=f"restore the checkpoints of run {run_id}")
    result.redact = loaded.policy.redact
    for name, t in targets.items():
        result.targets[name] = TargetResult(name, t.kind, t.describe())
    state.refuse_if_unrecovered(settings, {n: t.describe() for n, t in targets.items()})
    session = Session(settings, result, progress)
    with session.running():
        with state.lock_targets(settings, targets, holder_text(result.run_id, "rollback"),
                          lock_timeout, lambda text: progress("info", text)):
            state.refuse_if_unrecovered(settings, {n: t.describe() for n, t in targets.items()})
            session.begin(targets, str(loaded.path), loaded.sha256)
            result.end(_restore_run(session, targets, run_id, force, full))
    return result


def _restore_run(session: Session, targets: dict[str, Target], run_id: str, force: bool, full: bool) -> Ending:
    """Restore every target to run ``run_id``'s checkpoint — refused when production changed since that run
    applied (unless ``force``), or when a checkpoint is damaged (production untouched)."""
    checkpoints = {n: Checkpoint.from_dict(session.store.read_manifest(run_id, n)) for n in targets}
    for name, t in targets.items():
        recorded = checkpoints[name].meta.get("endpoint")
        if recorded and recorded != t.describe():
            raise BadInput(f"target {name!r} now points at {t.describe()}, but run {run_id} "
                           f"checkpointed {recorded}; restoring one over the other is refused (fix the plan "
                           "or its environment)")
    why, records = ("--full", {}) if full else why_not(session, targets, run_id)
    if why is None:
        return undo_run(session, targets, checkpoints, records, run_id, force)
    for tr in session.result.targets.values():
        tr.warnings.append(f"the whole checkpoint is restored: {why}")
    refused = _drifted_since_apply(session, targets, run_id, force)
    if refused is not None:
        return refused
    session.phase("restoring")
    failures = restore_all(session, targets, checkpoints)
    for tr in session.result.targets.values():
        if tr.restore is not None:
            tr.restore["why"] = why
    if failures:
        restores = [tr.restore or {} for tr in session.result.targets.values()]
        if all(r.get("untouched") or not r.get("needed") for r in restores):
            # Refused before anything was written (a damaged checkpoint): production is as it was.
            return Ending(Outcome.REFUSED, "ROLLBACK REFUSED, production untouched: "
                          + " | ".join(str(f) for f in failures), failures[0])
        return Ending(Outcome.RESTORE_FAILED, "ROLLBACK FAILED: " + " | ".join(str(f) for f in failures),
                      failures[0])
    return Ending(Outcome.RESTORED, f"production restored to the checkpoint of run {run_id} and verified")


def _drifted_since_apply(session: Session, targets: dict[str, Target], run_id: str, force: bool) -> Ending | None:
    """Refused when production changed since run ``run_id`` applied: restoring would lose those writes."""
    applied = {n: session.store.read_applied(run_id, n) for n in targets}
    for name, t in targets.items():
        after = applied[name]
        with session.step("drift check", name) as step:
            if not after or force or t.fingerprint() == after["fingerprint"]:
                continue
            step.found(f"production changed since run {run_id} was applied")
            # Production as the apply left it, compared by the same change-set code as every other check.
            as_applied = Checkpoint(name, t.kind, run_id, after["observation"], after["fingerprint"])
            changes = t.changes_since(as_applied, None)
        session.result.targets[name].production_changes = changes
        return Ending(Outcome.REFUSED, f"production {name!r} changed since run {run_id} was applied; restoring would "
                      f"lose those writes ({addresses(changes)}). Use --force to restore anyway.")
    return None


def _rolled_back_by(settings: Settings, run_id: str) -> str | None:
    """The latest rollback run that restored ``run_id``'s checkpoint, if any."""
    done = []
    journal = state.open_journal(settings)
    try:
        for record in state.run_records(settings):
            try:
                if record.command == "rollback" and record.of_run == run_id:
                    row = journal.run(record.run_id)
                    if row.outcome == Outcome.RESTORED:
                        done.append((row.started_at, record.run_id))
            except (OSError, ValueError, TypeError, ShadowError):
                continue  # an unreadable record is not a rollback we can vouch for
    finally:
        journal.close()
    return max(done)[1] if done else None
