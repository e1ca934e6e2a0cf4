"""``shadow recover``: settle every run whose process died before it finished, so that production is in a known
state again and new work on its targets is allowed.

- a ``plan``, or an ``apply`` killed before it touched production: closed, production untouched;
- an ``apply`` in one transaction: the server says whether the transaction committed (it only commits after
  production was verified inside it); if it did not, production was never changed and nothing is restored;
- any other ``apply`` killed while applying: every target restored to the checkpoint and verified;
- an ``apply`` killed after production was verified: production checked against what was verified;
- a ``rollback`` killed while restoring: the restore is run again (it is idempotent) and verified.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from adapters import Checkpoint, OwnEffect, SqlTarget, Target
from shadow.action import session_tag
from shadow.errors import BadInput, InfrastructureError
from shadow import state
from shadow.guard import RunRecord, holder_text
from shadow.outcome import Ending, Outcome
from shadow.plan import Plan, load_plan
from shadow.plan.state import with_state
from shadow.production import restore_all, undo_apply
from shadow.result import RunResult, TargetResult, new_run_id
from shadow.session import DEFAULT_LOCK_TIMEOUT, Progress, Session, make_targets, quiet
from shadow.settings import Settings
from shadow.undoing import undo_run, why_not


def recover(settings: Settings | None = None, progress: Progress = quiet,
            lock_timeout: float = DEFAULT_LOCK_TIMEOUT, plan_file: str | Path | None = None,
            hosts_gone: Collection[str] = ()) -> list[dict[str, Any]]:
    """Settle every run whose process died before it finished; one line of what was done for each (see the
    module's docstring for what settling means for each kind of run).

    ``plan_file``: the plan, if it moved since the run (its targets must still point where the run worked).
    ``hosts_gone``: hosts the operator says are down for good — a run whose action ran there is settled from here
    (nothing there can write any more), where otherwise recover refuses because it cannot stop that action.
    """
    settings = settings or Settings.from_env()
    if plan_file is not None:  # its `state:` names where its runs are kept
        settings = with_state(settings, load_plan(Path(plan_file), settings.environ).state)
    out = []
    for stale in state.unfinished(settings):
        folder = settings.runs_dir / stale.run_id
        db = state.shared(settings)  # shared state: this connection holds the dead run's lock while settling it
        try:
            try:
                hold = state.Liveness(settings, stale.run_id, db)  # a second `shadow recover` waits here
            except OSError as exc:
                raise InfrastructureError(f"cannot take over run {stale.run_id}: {exc}") from exc
            try:
                state.pull_run(settings, stale.run_id, db)
                record = RunRecord.load(folder / "run.json")  # as the other recover, if any, left it
                if record.phase == "finished":
                    continue
                was = record.phase
                outcome, text = _recover_one(settings, record, progress, lock_timeout, plan_file, hosts_gone)
                journal = state.open_journal(settings, db)
                try:
                    journal.finish_run(record.run_id, outcome.value, f"recovered: {text}")
                finally:
                    journal.close()
                record.phase = "finished"
                state.save_record(settings, record, db)
            finally:
                hold.release()
        finally:
            if db is not None:
                db.close()
        out.append({"run": record.run_id, "command": record.command, "was": was, "outcome": outcome.value,
                    "summary": text})
        progress("info", f"run {record.run_id} ({record.command}): {outcome.value} — {text}")
    if out:
        _clear_leftovers({entry["run"] for entry in out}, settings, progress)
    _clear_expired_warm(settings, progress)
    return out


def _clear_expired_warm(settings: Settings, progress: Progress) -> None:
    """Warm servers whose entry expired go too (``policy.warm``; a live run's lease keeps its own)."""
    from shadow import gc

    result = gc.GcResult(dry_run=False)
    gc.collect_warm(result, settings)
    if result.removed:
        progress("info", f"removed {len(result.removed)} expired warm server(s)")


def _clear_leftovers(runs: set[str], settings: Settings, progress: Progress) -> None:
    """The shadows a killed run left running (its clusters, containers, networks) go once it is settled."""
    from shadow import gc

    try:
        result = gc.gc(runs=runs, settings=settings)
    except InfrastructureError as exc:  # production is settled; a leftover is for `shadow gc` to retry
        progress("info", f"leftover shadows not removed: {exc}")
        return
    if result.removed:
        progress("info", f"removed {len(result.removed)} leftover shadow(s) of the settled run(s)")
    for item, why in result.failed:
        progress("info", f"could not remove leftover {item.kind} {item.id}: {why} (retry with `shadow gc`)")


def _stop_action(record: RunRecord, progress: Progress, hosts_gone: Collection[str] = ()) -> str:
    """Nothing of a killed run's action may still run when production is settled: its processes (the recorded
    warden session, everything carrying the run's mark) and its containers are killed, and confirmed gone —
    or recover refuses, and production is left as it is. An action on another host can only be stopped there,
    unless the operator says that host is gone for good (``hosts_gone``): then what the journal says of it."""
    from shadow import warden

    here = socket.gethostname()
    elsewhere = sorted({a["host"] for a in record.actions if a.get("host") and a["host"] != here})
    if still := [host for host in elsewhere if host not in hosts_gone]:
        raise InfrastructureError(
            f"cannot settle run {record.run_id}: its action ran on {', '.join(still)}, and from {here} shadow "
            "cannot make sure it stopped; run `shadow recover` there, or — only once that host is down for good "
            f"and can write nothing any more — `shadow recover --host-gone {still[0]}` (production was left as "
            "it is)", run_id=record.run_id)
    gone = (f" (its action ran on {', '.join(elsewhere)}, which the operator declared gone for good with "
            "--host-gone; settled from here)") if elsewhere else ""
    if gone:
        progress("info", f"run {record.run_id}:{gone}")
    local = [a for a in record.actions if a.get("host") in (None, here)]
    sessions: list[dict[str, Any] | None] = [a for a in local if a.get("session")] or [None]
    for recorded in sessions:
        alive = warden.stop_run_processes(record.run_id, recorded)
        if alive:
            raise InfrastructureError(f"cannot settle run {record.run_id}: processes "
                                      f"{', '.join(map(str, alive[:10]))} would not stop (SIGKILL), or may be its "
                                      "action's but carry nothing that says so (its recorded session, whose warden "
                                      "is gone); production was left as it is — stop them, then run `shadow "
                                      "recover` again", run_id=record.run_id)
    if any(a.get("container") for a in record.actions):
        _remove_action_containers(record)
    if record.actions and not gone:
        progress("info", f"run {record.run_id}: its action is confirmed stopped")
    return gone


def _remove_action_containers(record: RunRecord) -> None:
    from adapters.docker import remove_containers

    try:
        left = remove_containers(record.run_id, "action")
    except InfrastructureError as exc:
        raise InfrastructureError(f"cannot settle run {record.run_id}: its action ran in a container, and "
                                  f"shadow cannot make sure it stopped ({exc}); production was left as it is",
                                  run_id=record.run_id) from exc
    if left:
        raise InfrastructureError(f"cannot settle run {record.run_id}: its action's container "
                                  f"{left[0][:12]} would not go away; production was left as it is",
                                  run_id=record.run_id)


def _recorded_targets(settings: Settings, record: RunRecord, plan_file: str | Path | None,
                      progress: Progress) -> tuple[Plan, dict[str, Target]]:
    """The killed run's plan and targets — refused unless each still points where the run worked."""
    loaded = load_plan(Path(plan_file or record.plan_path), settings.environ)
    all_targets = make_targets(loaded, settings, progress)
    missing = sorted(set(record.targets) - set(all_targets))
    if missing:
        raise BadInput(f"cannot recover run {record.run_id}: {loaded.path} has no target named "
                       f"{', '.join(missing)} any more (give the run's plan with -f)")
    targets = {n: all_targets[n] for n in record.targets}
    for name, t in targets.items():
        if t.describe() != record.targets[name]:
            raise BadInput(f"cannot recover run {record.run_id}: target {name!r} now points at {t.describe()}, but "
                           f"the run worked on {record.targets[name]} (fix the plan or its environment)")
    return loaded, targets


def _recover_one(settings: Settings, record: RunRecord, progress: Progress, lock_timeout: float,
                 plan_file: str | Path | None, hosts_gone: Collection[str] = ()) -> tuple[Outcome, str]:
    """Settle one killed run: the outcome it ends with, and why."""
    gone = _stop_action(record, progress, hosts_gone)
    if record.command not in ("apply", "rollback") or record.phase == "rehearsing":
        return Outcome.INTERRUPTED, "killed before it touched production; production was not changed by it" + gone
    loaded, targets = _recorded_targets(settings, record, plan_file, progress)
    result = RunResult(new_run_id(), "recover", str(loaded.path), time.time(), of_run=record.run_id,
                       action=f"settle run {record.run_id} ({record.command}, killed while {record.phase})")
    for name, t in targets.items():
        result.targets[name] = TargetResult(name, t.kind, t.describe())
    session = Session(settings, result, progress)
    with session.running():
        with state.lock_targets(settings, targets, holder_text(result.run_id, "recover"),
                          lock_timeout, lambda text: progress("info", text)):
            session.begin(targets, str(loaded.path), loaded.sha256)
            settled, ending = _settle(session, record, targets)
            result.end(ending)
            return settled, ending.reason + gone


def _settle(session: Session, record: RunRecord, targets: dict[str, Target]) -> tuple[Outcome, Ending]:
    """The outcome the killed run ends with, and how this recover run ends."""
    source = record.of_run if record.command == "rollback" else record.run_id
    assert source is not None
    if record.command == "apply":
        for name, t in targets.items():  # a statement the server still runs for the killed client
            with session.step("end sessions", name):
                if ended := t.end_sessions(session_tag(record.run_id)):
                    session.progress("info", f"{name}: ended {ended} session(s) the killed run left running")
    if record.command == "apply" and record.phase == "applied":
        drifted = []
        for name, t in targets.items():
            after = session.store.read_applied(source, name) or {}
            if t.fingerprint() != after.get("fingerprint"):
                drifted.append(name)
        return Outcome.APPLIED, Ending(Outcome.RECOVERED, "applied and verified before it was killed" if not drifted
                                       else f"applied and verified before it was killed; {', '.join(drifted)} "
                                       "changed since (someone else wrote) — left alone")
    if record.command == "apply" and record.transaction:
        settled = _settle_transaction(session, targets[record.transaction["target"]], record)
        if settled is not None:
            return settled
    checkpoints = {n: Checkpoint.from_dict(session.store.read_manifest(source, n)) for n in targets}
    if record.command == "apply" and all(isinstance(t, OwnEffect) for t in targets.values()):
        settled = _undo_own_writes(session, targets, checkpoints, source)
        if settled is not None:
            return settled
    if record.command == "rollback":
        undone = _undo_again(session, targets, checkpoints, source)
        if undone is not None:
            return undone
    failures = restore_all(session, targets, checkpoints)
    if failures:
        return Outcome.RESTORE_FAILED, Ending(Outcome.RESTORE_FAILED, "RECOVERY FAILED: " + " | ".join(
            str(f) for f in failures), failures[0])
    return (Outcome.ROLLED_BACK if record.command == "apply" else Outcome.RESTORED,
            Ending(Outcome.RECOVERED, f"production restored to the checkpoint of run {source} and verified"))


def _undo_own_writes(session: Session, targets: dict[str, Target], checkpoints: dict[str, Checkpoint],
                     source: str) -> tuple[Outcome, Ending] | None:
    """A killed apply whose targets tell its own writes from other writers' (S3, git): undo only its own, from the
    records it kept before its phase said ``applying``. No record for a target that has others: the action never
    started. None (no record at all: an apply that kept none): restore the checkpoints instead."""
    kept = {n for n in targets if session.store.read_undo(source, n) is not None}
    if not kept:
        return None
    if kept != set(targets):
        return Outcome.ROLLED_BACK, Ending(Outcome.RECOVERED, "killed before its action started; production was not "
                                           "changed by it, and nothing was restored (other writers' changes are kept)")
    ending = undo_apply(session, targets, checkpoints, f"run {source} was killed while applying", run_id=source)
    if ending.outcome is Outcome.ROLLED_BACK:
        return Outcome.ROLLED_BACK, Ending(Outcome.RECOVERED, ending.reason)
    return Outcome.RESTORE_FAILED, Ending(Outcome.RESTORE_FAILED, f"RECOVERY FAILED: {ending.reason}", ending.error)


def _undo_again(session: Session, targets: dict[str, Target], checkpoints: dict[str, Checkpoint],
                source: str) -> tuple[Outcome, Ending] | None:
    """A killed rollback of a run that can be undone change by change is undone again (the undo is one
    transaction and idempotent: what it already put back is left alone); None: restore the checkpoint instead."""
    why, records = why_not(session, targets, source)
    if why is not None:
        return None
    ending = undo_run(session, targets, checkpoints, records, source, force=False)
    if ending.outcome is Outcome.RESTORED:
        return Outcome.RESTORED, Ending(Outcome.RECOVERED, ending.reason)
    return Outcome.REFUSED, Ending(Outcome.RECOVERED, f"the killed rollback changed nothing (its undo is one "
                                   f"transaction); undoing run {source} now was refused — {ending.reason}; run "
                                   f"`shadow rollback {source}` again")


def _settle_transaction(session: Session, t: Target, record: RunRecord) -> tuple[Outcome, Ending] | None:
    """An apply in one transaction never needs a restore: its transaction committed (after production was
    verified inside it) or it did not (and changed nothing). Restoring would delete other sessions' writes."""
    assert record.transaction is not None
    xid = record.transaction.get("xid")
    with session.step("transaction outcome", t.name):
        if xid is None:
            status = "never began"
        elif isinstance(t, SqlTarget):
            status = t.transaction_outcome(int(xid))
        else:  # a transaction is recorded only for a target that runs SQL; a record saying otherwise is not ours
            status = "unknown"
    if status == "committed":
        return Outcome.APPLIED, Ending(Outcome.RECOVERED, f"its transaction {xid} committed — only after production "
                                       "was verified inside it: production has the rehearsed change")
    if status in ("aborted", "never began"):
        return Outcome.ROLLED_BACK, Ending(Outcome.RECOVERED, "its transaction "
                                           f"{'never began' if xid is None else f'{xid} did not commit'}: production "
                                           "was never changed by it, and nothing was restored (other sessions' "
                                           "writes are kept)")
    return None  # the server no longer knows: fall back to restoring the checkpoint
