"""Rolling back only what a run did: each target's own undo (:class:`adapters.Undoable`) from the record its apply
kept, instead of restoring the whole checkpoint — so that every write other sessions made since stays.

Used by ``shadow rollback`` (unless ``--full``) and by ``shadow recover`` for a rollback that was killed. Three
modes, which the report names (``restore.mode``, ``restore.why``):

- ``undo``: every row and object the run changed is put back one by one;
- ``tables``: the same, except for tables whose rows cannot be put back one by one (no primary key, not counted
  one by one, a SQL_ASCII database): their data is put back whole from the checkpoint, in the same transaction —
  every other table keeps everyone's writes;
- ``full``: the caller restores the whole checkpoint — when :func:`why_not` says why (no record: the apply did not
  run in one transaction and a target cannot tell its own writes from others'; a change to a definition that
  cannot be undone object by object; the kind has no undo), or with ``--full``.

A PostgreSQL apply that could not run in one transaction keeps a record too
(:mod:`adapters.postgres.stepwise`): every table whose rows it changed is put back whole from the checkpoint
(``tables``), every object it added is dropped.
"""

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
            return (f"run {run_id} kept no undo record for {name!r} (an apply keeps one in one transaction, or "
                    "when every target tells its own writes from others')", records)
        fallback = falls_back(record)
        if fallback:
            return f"{fallback} ({name!r})", records
        records[name] = record
    return None, records


def falls_back(record: dict[str, Any]) -> str | None:
    """Why undo record ``record`` (or the ``pending`` one an apply kept before its action) can only be undone by
    restoring the whole checkpoint; None when it can be undone change by change."""
    pending = record.get("pending")
    return record.get("fallback") or (pending.get("fallback") if isinstance(pending, dict) else None)


def mode_of(records: dict[str, Any], name: str) -> tuple[str, str]:
    """(``undo`` | ``tables``, why) for target ``name``'s undo record."""
    whole = (records[name].get("restore_tables") or {}) if name in records else {}
    recreate = (records[name].get("recreate") or {}) if name in records else {}
    if not whole and not recreate:
        return "undo", "the apply kept what it changed, one row, object, key or ref at a time"
    return "tables", "; ".join([f"{table} is put back whole from the checkpoint because {entry['why']}"
                                for table, entry in sorted(whole.items())]
                               + [f"{table} is re-created from the checkpoint because {entry['why']}"
                                  for table, entry in sorted(recreate.items())])


def undo_run(session: Session, targets: dict[str, Target], checkpoints: dict[str, Checkpoint],
             records: dict[str, Any], run_id: str, force: bool) -> Ending:
    """Undo run ``run_id``'s own change on every target, each in one transaction, and say how it ended."""
    result = session.result
    if result.command != "recover":  # a recover's undo: the run it settles stays unfinished until that is done
        session.phase("restoring")
    did: list[str] = []
    overwritten = 0
    for name, t in targets.items():
        assert isinstance(t, Undoable)
        tr = result.targets[name]
        mode, why = mode_of(records, name)
        with session.step("undo", name, undo=f"production {name!r} without run {run_id}'s own change") as step:
            conflicts, done, problems = t.undo(records[name], checkpoints[name], force)
            refused = bool(problems or (conflicts and not force))
            if refused:
                step.found("conflicts" if conflicts and not force else "the undo did not verify")
        tr.restore = {"needed": True, "mode": mode, "why": why, "verified": not refused, "done": done,
                      "conflicts": conflicts, "differences": problems, "untouched": refused}
        if mode == "tables":
            tr.warnings.append(f"not every table could be undone row by row: {why}; every other table was undone row "
                               "by row (others' writes kept)")
        tr.warnings += [f"{table}: the apply left it otherwise than the rehearsal did — another session wrote to it "
                        "during the apply, or the action is not deterministic (now(), random()); putting it back whole "
                        "from the checkpoint may have overwritten such a write"
                        for table, entry in sorted((records[name].get("restore_tables") or {}).items())
                        if entry.get("during") and not refused]
        if conflicts and not force:
            return Ending(Outcome.REFUSED, f"ROLLBACK REFUSED, production untouched: {len(conflicts)} row(s), "
                          f"table(s) or object(s) run {run_id} changed were changed again since "
                          f"({'; '.join(conflicts[:3])}); --force puts them back anyway (overwriting those writes), "
                          "--full restores the whole checkpoint")
        if problems:
            return Ending(Outcome.REFUSED, f"ROLLBACK REFUSED, production untouched: undoing run {run_id} would not "
                          f"leave {name!r} as the checkpoint ({'; '.join(problems[:3])}); --full restores the "
                          "whole checkpoint")
        if conflicts:
            tr.warnings.append(f"--force overwrote what others wrote since the apply: {'; '.join(conflicts[:10])}")
            overwritten += len(conflicts)
        did += [f"{name}: {d}" for d in done] or [f"{name}: nothing left to undo"]
    kept = (f"other sessions' later writes to {overwritten} row(s), table(s) or object(s) the run had changed were "
            "overwritten; every other write was kept") if overwritten else "other sessions' writes since were kept"
    return Ending(Outcome.RESTORED, f"undid run {run_id}'s own change ({'; '.join(did)}) and verified it; {kept}")
