"""Rolling back only what a run did: each target's own undo (:class:`adapters.Undoable`) from the record its apply
kept, instead of restoring the whole checkpoint — so that every write other sessions made since stays.

Used by ``shadow rollback`` (unless ``--full``) and by ``shadow recover`` for a rollback that was killed. When a
target cannot undo the run this way (no record: the apply did not run in one transaction; the record says a change
cannot be undone row by row; the kind has no undo), :func:`undo_run` says why and the caller restores the
checkpoint instead."""

from __future__ import annotations

from typing import Any

from adapters import Checkpoint, Target, Undoable
from shadow.errors import SnapshotCorrupt
from shadow.outcome import Ending, Outcome
from shadow.session import Session


def why_not(session: Session, targets: dict[str, Target], run_id: str) -> tuple[str | None, dict[str, Any]]:
    """(why run ``run_id`` cannot be undone change by change — None when it can —, the targets' undo records)."""
    records: dict[str, Any] = {}
    for name, t in targets.items():
        if not isinstance(t, Undoable):
            return f"{t.kind} targets cannot undo a run's own change yet", records
        try:
            record = session.store.read_undo(run_id, name)
        except SnapshotCorrupt as exc:
            return f"the undo record of {name!r} is damaged ({exc})", records
        if record is None:
            return (f"run {run_id} kept no undo record for {name!r} (only an apply in one transaction keeps one)",
                    records)
        if record.get("fallback"):
            return f"{record['fallback']} ({name!r})", records
        records[name] = record
    return None, records


def undo_run(session: Session, targets: dict[str, Target], checkpoints: dict[str, Checkpoint],
             records: dict[str, Any], run_id: str, force: bool) -> Ending:
    """Undo run ``run_id``'s own change on every target, each in one transaction, and say how it ended."""
    result = session.result
    session.phase("restoring")
    did: list[str] = []
    for name, t in targets.items():
        assert isinstance(t, Undoable)
        tr = result.targets[name]
        with session.step("undo", name, undo=f"production {name!r} without run {run_id}'s own change") as step:
            conflicts, done, problems = t.undo(records[name], checkpoints[name], force)
            refused = bool(problems or (conflicts and not force))
            if refused:
                step.found("conflicts" if conflicts and not force else "the undo did not verify")
        tr.restore = {"needed": True, "mode": "undo", "verified": not refused, "done": done,
                      "conflicts": conflicts, "differences": problems, "untouched": refused}
        if conflicts and not force:
            return Ending(Outcome.REFUSED, f"ROLLBACK REFUSED, production untouched: {len(conflicts)} row(s) or "
                          f"object(s) run {run_id} changed were changed again since ({'; '.join(conflicts[:3])}); "
                          "--force puts them back anyway (overwriting those writes), --full restores the whole "
                          "checkpoint")
        if problems:
            return Ending(Outcome.REFUSED, f"ROLLBACK REFUSED, production untouched: undoing run {run_id} would not "
                          f"leave {name!r} as the checkpoint ({'; '.join(problems[:3])}); --full restores the "
                          "whole checkpoint")
        if conflicts:
            tr.warnings.append(f"--force overwrote what others wrote since the apply: {'; '.join(conflicts[:10])}")
        did += [f"{name}: {d}" for d in done] or [f"{name}: nothing left to undo"]
    return Ending(Outcome.RESTORED, f"undid run {run_id}'s own change ({'; '.join(did)}) and verified it; other "
                  "sessions' writes since were kept")
