"""An apply that cannot run in one transaction (``CREATE INDEX CONCURRENTLY``, ``VACUUM``, a command action): which
of production's changes are the action's own, and an undo record for them — so that its undo puts back the tables
and objects it changed, not the whole database.

There is no transaction to read the rows' pre-images in, so the record cannot hold rows. The rehearsal's measured
footprint tells the action's changes from other writers' (:mod:`adapters.postgres.footprint`): a row change of a
table the action neither read nor wrote on the shadow is another writer's — reported, never undone. Everything
else is the action's; the record then says, as :mod:`adapters.postgres.undo` does for a table whose rows were not
counted one by one: each table whose rows it changed is **put back whole from the checkpoint's data**
(``restore_tables``, :mod:`adapters.postgres.undo_tables`: in the undo's one transaction, same OIDs, others'
writes to that table since the apply a conflict), and each object it added (an index built ``CONCURRENTLY``, a
column …) is dropped. A changed definition is put back on its own table
(:mod:`adapters.postgres.undo_definitions`); one no record can undo (a function, a type …) makes the record say
``fallback``: the whole checkpoint is restored then, as before.

Just before the action (:func:`before_action`, kept in the store before the run says ``applying``), production's
per-table state is kept: a table already written to by others between the checkpoint and the apply cannot be put
back from the checkpoint without losing that write (a conflict the undo reports).
"""

from __future__ import annotations

from typing import Any

import psycopg

from adapters.postgres import footprint, undo, undo_definitions
from adapters.postgres.shadowcopy import PgShadow
from shadow.changes import Change

VERSION = 1


def before_action(now: dict[str, Any], shadow: PgShadow) -> dict[str, Any]:
    """What the target's ``own_effect`` needs, taken just before the action: production's tables now, the tables the
    rehearsal read or wrote (None: not known), and — when the rehearsal itself holds a change no record can undo —
    why the whole checkpoint would have to be restored."""
    touched = shadow.footprint_tables
    return {"version": VERSION, "kind": "postgres", "data": now["data"],
            "footprint": None if touched is None else sorted(touched),
            "fallback": needs_checkpoint(shadow.rehearsed, shadow.checkpoint.observation["objects"],
                                         (shadow.observed_after or {}).get("objects") or {})}


def needs_checkpoint(changes: list[Change], then: dict[str, Any], left: dict[str, Any]) -> str | None:
    """Why undoing ``changes`` takes the whole checkpoint (a change of a definition that is neither an added object
    the undo can drop nor one put back on its own table, :mod:`adapters.postgres.undo_definitions`), or None.
    ``then``, ``left``: the objects of the checkpoint and of the rehearsal's outcome."""
    for change in changes:
        if change.kind == "rows" or undo_definitions.place(change, then, left):
            continue
        if change.kind == "sequence" and change.op == "alter" and set(change.detail) <= undo.SEQUENCE_POSITION:
            continue
        if change.op != "add" or change.kind not in undo.DROP_ORDER:
            return (f"`{change.address}` cannot be undone object by object, nor by putting back one table "
                    "(re-creating it would drop what others build on it)")
    return None


def split(changes: list[Change], before: dict[str, Any], now: dict[str, Any],
          strict: bool) -> tuple[list[Change], list[Change]]:
    """(the action's own changes, other writers' changes during the apply) of ``changes``, production's since the
    checkpoint. Outside the footprint: another writer's (reported only when the table moved during the apply —
    earlier ones the drift check already reported)."""
    touched = before.get("footprint")
    if strict or touched is None:
        return changes, []
    theirs = footprint.independent(changes, set(touched), [], now["objects"].get("sequence", {}))
    ours = [c for c in changes if c not in theirs]
    during = [c for c in theirs if c.kind != "rows" or before["data"].get(c.name) != now["data"].get(c.name)]
    return ours, during


def record_of(conn: psycopg.Connection, ours: list[Change], before: dict[str, Any], now: dict[str, Any],
              checkpoint: dict[str, Any], predicted: dict[str, Any] | None = None) -> dict[str, Any]:
    """The undo record of the action's own changes ``ours``: every table whose rows it changed put back whole from
    the checkpoint, every object it added dropped.

    ``predicted``: the rehearsal's tables after the action (rows and content hash). A table that was as the
    checkpoint just before the action but not as the rehearsal left it afterwards was written to by someone else
    during the apply — or the action is not deterministic (``now()``): the apply cannot tell which, so the
    rollback's report says that putting it back whole may have overwritten another session's write (``during``)."""
    why = "the apply did not run in one transaction: its rows were not kept one by one"
    record = undo.capture(conn, None, {"data": before["data"]}, now, {}, ours, checkpoint, unkept=why)
    record["statement_by_statement"] = True
    for table, entry in (record.get("restore_tables") or {}).items():
        rehearsed = (predicted or {}).get(table)
        if rehearsed is not None and not entry.get("moved") and [rehearsed["rows"], rehearsed["hash"]] != entry["left"]:
            entry["during"] = True
    return record
