"""The phases that write production: the drift check before it, the apply and its verification against the
rehearsal, the roll back, and the restore of a target from its checkpoint (shared by ``shadow rollback`` and
``shadow recover``). Every step here is journaled before it starts (:meth:`shadow.session.Session.step`).

A phase that ends the run returns its :class:`~shadow.outcome.Ending`; the verb records it."""

from __future__ import annotations

import time
from typing import Any

from adapters import Checkpoint, OwnEffect, ShadowCopy, SqlTarget, Target
from shadow.action import ActionResult, run_action, session_tag
from shadow.errors import ActionFailed, RestoreFailed, ShadowError, SnapshotCorrupt, SqlError
from shadow.changes import Change
from shadow.judge import compare_change_sets, judge, moved_counts
from shadow.outcome import Ending, Outcome
from shadow.plan import Plan
from shadow.result import addresses
from shadow.session import Session
from shadow.sqlsplit import Statement
from shadow.undoing import falls_back, undo_run


def drift_check(session: Session, targets: dict[str, Target], shadows: dict[str, ShadowCopy],
                checkpoints: dict[str, Checkpoint], one_transaction: bool, strict: bool = False) -> Ending | None:
    """What production did since the checkpoint the rehearsal ran on, and whether the apply may go ahead.

    Writes the action neither read nor wrote on the shadow (:meth:`ShadowCopy.independent`) cannot change its
    outcome: reported, never blocking — when the apply runs in one transaction, which a failure undoes with a
    ROLLBACK, or when every target tells the action's own writes from others' and undoes only those
    (:class:`~adapters.OwnEffect`: S3, git). Writes to what the action depends on: a one-transaction apply goes
    ahead and is judged inside its transaction; any other apply is refused — the rehearsal may not predict it
    any more. Where a failure could only be undone by restoring the checkpoint, which would lose other writers'
    changes, any write since the checkpoint refuses. ``strict``: any write since the checkpoint refuses
    (``policy.drift: strict``)."""
    undone_alone = one_transaction or all(isinstance(t, OwnEffect) for t in targets.values())
    for name, t in targets.items():
        with session.step("drift check", name) as step:
            if t.fingerprint() == checkpoints[name].fingerprint:
                continue
            changed = t.changes_since(checkpoints[name], shadows[name])
            independent = [] if strict else shadows[name].independent(changed)
            depends = [c for c in changed if c not in independent]
            tr = session.result.targets[name]
            if independent:
                tr.warnings.append(f"production also changed since the checkpoint, in what this action neither "
                                   f"read nor wrote on the shadow: {addresses(independent, counts=True)}")
            if one_transaction and not strict:
                if depends:
                    tr.warnings.append(f"production changed what this action reads or writes since the checkpoint "
                                       f"({addresses(depends, counts=True)}): applied in one transaction and judged on its own "
                                       "effect there")
                continue
            if undone_alone and not strict and not depends:
                continue
            step.found("production changed since the checkpoint")
            tr.production_changes = shown = depends if undone_alone and not strict else changed
            why = ("policy.drift is strict" if strict else
                   "it changed what the action reads or writes, and the apply cannot run in one transaction, so "
                   "the rehearsal may not predict it" if undone_alone else
                   "the apply cannot run in one transaction, so undoing it would mean restoring the checkpoint, "
                   "which would lose those writes")
            return Ending(Outcome.REFUSED, f"production {name!r} changed since the checkpoint (drift; {why}); what "
                          f"changed: {addresses(shown, counts=True)}; nothing was applied — run shadow again to rehearse "
                          "against the current state", rehearse_again=undone_alone and not strict)
    return None


def how_applied(plan_: Plan, statements: list[Statement],
                targets: dict[str, Target]) -> tuple[str | None, Statement | None, bool]:
    """(the SQL action's target, its first statement that cannot run in a transaction, whether the apply runs in
    one transaction — and so keeps a row-by-row undo record, :func:`apply_in_one_transaction`)."""
    sql_target = plan_.action.sql_target if plan_.action.sql_files else None
    sql = targets[sql_target] if sql_target else None
    blocker = sql.atomic_blocker(statements) if isinstance(sql, SqlTarget) else None
    return sql_target, blocker, bool(sql_target and len(targets) == 1 and blocker is None)


def apply_to_production(session: Session, plan_: Plan, statements: list[Statement], targets: dict[str, Target],
                        shadows: dict[str, ShadowCopy], checkpoints: dict[str, Checkpoint], sandbox: Any) -> Ending:
    """Apply the action to production and verify it changed the way the shadow did — or roll it back."""
    result = session.result
    sql_target, blocker, one_transaction = how_applied(plan_, statements, targets)
    refused = drift_check(session, targets, shadows, checkpoints, one_transaction, plan_.policy.drift == "strict")
    if refused is not None:
        return refused
    own = {} if one_transaction else _before_action(session, plan_, targets, shadows, checkpoints)
    session.phase("applying", transaction={"target": sql_target, "xid": None} if one_transaction else None)
    try:
        if one_transaction and sql_target:
            ending = apply_in_one_transaction(session, plan_, statements, targets[sql_target], shadows[sql_target],
                                              checkpoints[sql_target])
        else:
            ending = _apply_and_verify(session, plan_, statements, targets, shadows, checkpoints, sandbox, blocker,
                                       own)
        if ending is not None:
            return ending
    except RestoreFailed:
        raise
    except ShadowError as exc:
        # Lost production (or a shadow) mid-apply: production is restored and the run ends as rolled back.
        return undo_apply(session, targets, checkpoints, f"the apply did not finish ({exc})")
    except BaseException as exc:
        # Interrupted mid-apply: put production back before giving up.
        result.end(undo_apply(session, targets, checkpoints, f"apply interrupted: {exc or type(exc).__name__}"))
        raise
    _record_after_apply(session, targets)
    session.phase("applied")
    how = ("in one transaction, committed after production was verified inside it"
           if result.production and result.production.mode.startswith("one transaction")
           else "production verified against the rehearsal after the action")
    return Ending(Outcome.APPLIED, f"{how}; undo with `shadow rollback {result.run_id}`")


def _before_action(session: Session, plan_: Plan, targets: dict[str, Target], shadows: dict[str, ShadowCopy],
                   checkpoints: dict[str, Checkpoint]) -> dict[str, tuple[Any, dict[str, Any]]]:
    """When every target tells its own writes from others' (:class:`~adapters.OwnEffect`): name → (target, what it
    needs to tell them apart after the action), each kept in the store *before* the run's phase says
    ``applying`` (``recover`` finds them for any apply that may have written); else nothing — the run is undone
    by restoring every checkpoint."""
    kept = {n: t for n, t in targets.items() if isinstance(t, OwnEffect)}
    if len(kept) < len(targets):
        return {}
    own: dict[str, tuple[Any, dict[str, Any]]] = {}
    for name, t in kept.items():
        with session.step("before apply", name):
            own[name] = t, t.before_action(checkpoints[name], shadows[name])
            session.store.write_undo(session.result.run_id, name, {"pending": own[name][1],
                                                                   "strict": plan_.policy.drift == "strict"})
    return own


def _apply_and_verify(session: Session, plan_: Plan, statements: list[Statement], targets: dict[str, Target],
                      shadows: dict[str, ShadowCopy], checkpoints: dict[str, Checkpoint], sandbox: Any,
                      blocker: Any, own: dict[str, tuple[Any, dict[str, Any]]]) -> Ending | None:
    """Run the action on production, then compare production's change set with the rehearsal's (only the
    action's own, for the targets in ``own``); undo it on a failure or a divergence. ``None``: production
    changed as rehearsed."""
    result = session.result
    endpoints = {n: t.endpoint() for n, t in targets.items()}
    strict = plan_.policy.drift == "strict"
    sql_tr = result.targets.get(plan_.action.sql_target or "")
    waited = (lambda text: _waited(session, sql_tr, text)) if sql_tr is not None else None
    undo = (f"undo run {result.run_id}'s own change from the records kept before it" if own else
            f"restore every target from the checkpoints of run {result.run_id}") + f" (shadow rollback {result.run_id})"
    with session.step("apply", undo=undo) as step:
        start = time.monotonic()
        try:
            result.production = run_action(plan_, statements, endpoints, targets, session.settings.environ,
                                           session.dir / "action-apply.log", session.launch(), sandbox,
                                           production=True, waited=waited)
        except SqlError as exc:
            result.production = ActionResult(False, time.monotonic() - start, "sql", str(exc))
        if not result.production.ok:
            step.found("the action failed on production")
    if blocker is not None:
        result.production.mode += (f" — {blocker.where} cannot run in a transaction "
                                   f"({' '.join(blocker.text.split()[:4])} …), so a failure is undone "
                                   + ("from the undo record kept before the action" if own
                                      else "by restoring the checkpoint"))
    if not result.production.ok:
        return undo_apply(session, targets, checkpoints, f"the action failed on production: "
                                                         f"{result.production.error}")
    for name, t in targets.items():
        with session.step("verify", name) as step:
            if name in own:
                target, before = own[name]
                prod_changes, others, record = target.own_effect(before, checkpoints[name], strict)
                session.store.write_undo(result.run_id, name, record)
                if others:
                    result.targets[name].warnings.append(
                        f"production also changed during the apply, in what the action neither read nor wrote in "
                        f"its rehearsal (another writer's, not counted as this run's): {addresses(others)}")
            else:
                prod_changes = t.changes_since(checkpoints[name], shadows[name])
            result.targets[name].production_changes = prod_changes
            diverged = compare_change_sets(result.targets[name].changes, prod_changes)
            result.divergence += [f"{name}: {d}" for d in diverged]
            if diverged:
                step.found("production did not change the way the shadow did")
    if result.divergence:
        return undo_apply(session, targets, checkpoints, "production did not change the way the shadow did")
    return None


def undo_apply(session: Session, targets: dict[str, Target], checkpoints: dict[str, Checkpoint], reason: str,
               run_id: str | None = None) -> Ending:
    """Undo the apply of ``run_id`` (by default this run) that did not run in one transaction: only what it
    wrote itself, from the records it kept (:class:`~adapters.OwnEffect`), keeping every other writer's change —
    or, where a target kept none, by restoring every checkpoint (:func:`roll_back`). A key or ref the run wrote
    that changed again in the moments since is put back too (the run was writing it): the report says so."""
    run_id = run_id or session.result.run_id
    records = {n: session.store.read_undo(run_id, n) for n in targets}
    for record in records.values():  # "left otherwise than the rehearsal": what a failed apply does by itself
        for entry in ((record or {}).get("restore_tables") or {}).values():
            entry.pop("during", None)
    if not all(isinstance(t, OwnEffect) and records[n] and not falls_back(records[n] or {})
               for n, t in targets.items()):
        return roll_back(session, targets, checkpoints, reason)
    session.progress("info", f"rolling back: {reason}")
    ending = undo_run(session, targets, checkpoints, records, run_id, force=True)
    if ending.outcome is Outcome.RESTORED:
        return Ending(Outcome.ROLLED_BACK, f"{reason}; {ending.reason}")
    error = RestoreFailed(f"{reason}; UNDO FAILED: {ending.reason}; production was left as it is — retry with "
                          "`shadow recover` once the cause is fixed (new work on these targets is refused until "
                          "then)", run_id=run_id)
    return Ending(Outcome.RESTORE_FAILED, str(error), error)


def _record_after_apply(session: Session, targets: dict[str, Target]) -> None:
    """What production observed after the verified apply: ``shadow rollback`` refuses if it changed since."""
    for name, t in targets.items():
        with session.step("record applied", name):
            after = t.observe()
            session.store.write_applied(session.result.run_id, name, {"fingerprint": t.fingerprint(after),
                                                                      "observation": after})


def apply_in_one_transaction(session: Session, plan_: Plan, statements: list[Statement], t: Target,
                             shadow: ShadowCopy, checkpoint: Checkpoint) -> Ending | None:
    """Every statement is transactional: apply in one transaction, compare the statements' own change set with
    the rehearsal's *inside* it, and COMMIT only on a match — otherwise ROLLBACK: production is never changed by
    shadow, and never restored either (other sessions' writes since the checkpoint stay). ``None``: committed."""
    result = session.result
    tr = result.targets[t.name]
    start = time.monotonic()
    problems: list[str] | None = None
    began: list[int] = []
    assert isinstance(t, SqlTarget), "one transaction is chosen only for a target that runs SQL"

    def on_begin(xid: int) -> None:
        began.append(xid)
        session.phase("applying", transaction={"target": t.name, "xid": xid})

    with session.step("apply", t.name, undo="none: one transaction, committed only after verification") as step:
        try:
            problems, tr.production_changes = t.apply_sql_verified(
                statements, plan_.action.timeout, checkpoint, shadow,
                lambda changes: _judge_in_transaction(session, plan_, t.name, changes), on_begin,
                tag=session_tag(result.run_id), lock_timeout=plan_.policy.lock_timeout,
                lock_retries=plan_.policy.lock_retries, waited=lambda text: _waited(session, tr, text),
                keep=lambda record: session.store.write_undo(result.run_id, t.name, record))
            result.production = ActionResult(True, time.monotonic() - start, "one transaction, verified before COMMIT")
        except (SqlError, ActionFailed) as exc:
            result.production = ActionResult(False, time.monotonic() - start, "one transaction", str(exc))
        except ShadowError as exc:  # lost production or the shadow mid-transaction: did the COMMIT happen?
            result.production = _settled_by_the_server(t, began, exc, time.monotonic() - start)
        if problems:
            step.found("production diverged from the rehearsal inside the transaction; rolled back")
        elif not result.production.ok:
            step.found("the action failed on production; the transaction was rolled back")
    if problems:
        result.divergence += [f"{t.name}: {d}" for d in problems]
    if not problems and result.production.ok:
        return None
    cause = ("production diverged from the rehearsal inside the transaction" if problems
             else f"the action failed on production: {result.production.error}")
    # ROLLBACK undid everything shadow did. Never restore here: if production differs from the checkpoint
    # now, other sessions committed meanwhile, and restoring would delete their writes.
    tr.restore = {"needed": False, "verified": True, "note": "the transaction was rolled back; other sessions' "
                  "writes since the checkpoint were not touched", "transaction": "rolled back"}
    return Ending(Outcome.ROLLED_BACK, f"{cause}; the transaction was rolled back — production was never changed by "
                  "this run")


def _judge_in_transaction(session: Session, plan_: Plan, name: str, changes: list[Change]) -> list[str]:
    """Inside the apply's transaction: production's own change set against the rehearsal's — and, where the
    data moved on since the checkpoint (a backfill now touching rows others added), against the plan's
    expectations, with both figures in the report."""
    tr = session.result.targets[name]
    problems = compare_change_sets(tr.changes, changes)
    moved = moved_counts(tr.changes, changes)
    if moved and not problems:
        failing = [v for v in judge(name, changes, plan_.expect[name], None) if not v.ok and v.rule != "check"]
        problems = [f"{v.subject}: {v.message} (the data moved on since the checkpoint)" for v in failing]
        if not problems:
            tr.warnings += [f"judged against the plan's expectations, not the rehearsal's count: {m}" for m in moved]
    return problems


def _settled_by_the_server(t: SqlTarget, began: list[int], exc: ShadowError, seconds: float) -> ActionResult:
    """The transaction's fate when the connection to it was lost, from the server itself (``txid_status``).
    Re-raises when it cannot be known: the run then stays unfinished and ``shadow recover`` asks again —
    restoring the checkpoint instead would delete every write other sessions made since."""
    if not began:
        return ActionResult(False, seconds, "one transaction", f"{exc} (the transaction never began)")
    try:
        status = t.transaction_outcome(began[-1])
    except ShadowError:
        raise exc from None
    if status == "committed":  # COMMIT is sent only after the verification inside the transaction passed
        return ActionResult(True, seconds, "one transaction, verified before COMMIT (the connection was lost "
                            "after COMMIT reached production)")
    if status == "aborted":
        return ActionResult(False, seconds, "one transaction", f"{exc} (the transaction did not commit)")
    raise exc


def _waited(session: Session, tr: Any, text: str) -> None:
    """An apply that waited for production (a lock, a serialisation race): on the terminal and in the report."""
    tr.warnings.append(f"apply: {text}")
    session.progress("info", f"{tr.name}: {text}")


def roll_back(session: Session, targets: dict[str, Target], checkpoints: dict[str, Checkpoint],
              reason: str) -> Ending:
    """Restore every target (each one is tried even when another fails), then verify."""
    result = session.result
    session.progress("info", f"rolling back: {reason}")
    failures = restore_all(session, targets, checkpoints)
    if failures:
        return Ending(Outcome.RESTORE_FAILED, f"{reason}; ROLLBACK FAILED: " + " | ".join(str(f) for f in failures),
                      failures[0])
    if any((tr.restore or {}).get("needed") for tr in result.targets.values()):
        return Ending(Outcome.ROLLED_BACK, reason + "; production was restored to the checkpoint and verified")
    return Ending(Outcome.ROLLED_BACK,
                  reason + "; production still equals the checkpoint (verified), nothing needed restoring")


def restore_all(session: Session, targets: dict[str, Target],
                checkpoints: dict[str, Checkpoint]) -> list[RestoreFailed]:
    """Restore every target from its checkpoint; the failures, each target tried whatever the others did."""
    failures: list[RestoreFailed] = []
    for name, t in targets.items():
        try:
            restore_target(session, t, checkpoints[name])
        except RestoreFailed as exc:
            failures.append(exc)
        finally:
            restore = session.result.targets[name].restore
            if restore is not None:
                restore.setdefault("mode", "full")
    return failures


def restore_target(session: Session, t: Target, cp: Checkpoint) -> None:
    """Restore one target from its checkpoint and verify; raise RestoreFailed unless it observes equal."""
    tr = session.result.targets[t.name]
    again = "`shadow recover` (new work on this target is refused until then)"
    rerun = f"`shadow rollback {session.result.of_run}` again"
    retry = f"the checkpoint is intact; retry with {again} once the cause is fixed"
    try:
        if t.at_checkpoint(cp, session.store):
            tr.restore = {"needed": False, "verified": True, "note": "production still equals the checkpoint"}
            return
        with session.step("restore", t.name, undo=f"production {t.name!r} must equal checkpoint of run {cp.run_id}"):
            t.restore(cp, session.store)
        with session.step("verify restore", t.name) as step:
            problems = t.verify_restored(cp)
            if problems:
                step.found("production does not observe equal to the checkpoint")
    except SnapshotCorrupt as exc:
        tr.restore = {"needed": True, "verified": False, "error": str(exc), "untouched": True}
        raise RestoreFailed(f"refused to restore production from a damaged checkpoint: {exc}; production was left as "
                            f"it is — put the artifact back (from a backup of the store), then run "
                            f"{rerun if session.result.command == 'rollback' else again}",
                            target=t.name, run_id=cp.run_id) from exc
    except RestoreFailed as exc:
        tr.restore = {"needed": True, "verified": False, "error": str(exc)}
        raise RestoreFailed(f"could NOT restore production: {exc}; {retry}", target=t.name, run_id=cp.run_id) from exc
    except ShadowError as exc:
        tr.restore = {"needed": True, "verified": False, "error": str(exc)}
        raise RestoreFailed(f"could NOT restore production ({exc}); {retry}", target=t.name, run_id=cp.run_id) from exc
    tr.restore = {"needed": True, "verified": not problems, "differences": problems}
    if problems:
        raise RestoreFailed(f"restored, but production does not observe equal to the checkpoint: "
                            f"{'; '.join(problems[:5])}", target=t.name, run_id=cp.run_id)
