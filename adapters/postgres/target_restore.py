"""Putting PostgreSQL production back: the whole checkpoint (:func:`adapters.postgres.restore.restore_over`) or
one run's own change (:mod:`adapters.postgres.undo`), and verifying the result.

The methods :class:`adapters.postgres.target.PostgresTarget` takes from :class:`RestoreMixin`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from adapters import Checkpoint, fingerprint_of
from adapters import tempdirs
from adapters.postgres import archive_entries, undo, undo_tables
from adapters.postgres.binaries import ClientTools
from adapters.postgres.compare import how_they_differ, last_line, settle_settings
from adapters.postgres.observe import like_checkpoint, read_text_as_str
from adapters.postgres.restore import restore_over, table_data_files
from adapters.postgres.target_checkpoint import _artifact
from shadow.changes import Change
from shadow.errors import RestoreFailed, SnapshotCorrupt, TargetUnreachable
from snapshots import Store, open_store


class RestoreMixin:
    """Restore, undo and their verification (of :class:`adapters.postgres.target.PostgresTarget`)."""

    # What these methods use of the target (set in its __init__, defined there or by its other mixins).
    name: str
    dsn: str
    settings: Any
    connect: Callable[..., psycopg.Connection]
    observe: Callable[[], dict[str, Any]]
    binaries: Callable[[int], ClientTools]
    own_effect: Callable[[dict[str, Any], Checkpoint, bool], tuple[list[Change], list[Change], dict[str, Any]]]
    transaction_outcome: Callable[..., str]

    @like_checkpoint
    def undo(self, record: dict[str, Any], checkpoint: Checkpoint, force: bool) -> tuple[list[str], list[str], list[str]]:
        """Undo one run's own change (:mod:`adapters.postgres.undo`); a table it puts back whole from the
        checkpoint (:mod:`adapters.postgres.undo_tables`) is read from the checkpoint's archive (in the store the
        settings name, the one the run's session uses) first, before the undo's transaction begins.

        A ``pending`` record (kept before the action of an apply not in one transaction that failed or was killed
        before its effect was read) is completed first; one whose change no record can undo restores the whole
        checkpoint, as an apply without a record would."""
        store = open_store(self.settings)
        if "pending" in record:
            record = self.own_effect(record["pending"], checkpoint, bool(record.get("strict")))[2]
            for entry in (record.get("restore_tables") or {}).values():
                entry.pop("during", None)  # an apply that did not finish is no rehearsal's outcome: no evidence
            if record.get("fallback"):
                self.restore(checkpoint, store)
                return [], [f"restored the whole checkpoint: {record['fallback']}"], self.verify_restored(checkpoint)
        began = store.read_undone(checkpoint.run_id, self.name) if record.get("multisets") else None
        if began is not None and self.transaction_outcome(began) == "committed":
            # Rows matched by value (adapters.postgres.undo_multiset) must not be taken out twice: an undo of this
            # run committed already (a killed rollback's recover, or a second rollback), so nothing is done again.
            return [], [f"already undone by transaction {began}, which committed"], []
        oids = undo_tables.archive_oids(record)
        recreate = record.get("recreate") or {}
        try:
            with tempdirs.tempdir("restore", checkpoint.run_id) as folder:
                files, scripts = {}, {}
                if oids or recreate:
                    try:
                        archive = store.open_verified(_artifact(checkpoint))
                    except SnapshotCorrupt as exc:
                        return [], [], [f"{', '.join([*record['restore_tables'], *recreate])} would be put back from "
                                        f"the checkpoint, but its archive is unusable: {exc}"]
                    tools = self.binaries(int(checkpoint.meta["major"]))
                    files = table_data_files(tools, archive, oids, folder) if oids else {}
                    scripts = archive_entries.scripts_for(tools, archive, recreate, folder)
                with self.connect() as conn:
                    read_text_as_str(conn)
                    # Kept before it commits, where an undo must never run twice (rows matched by value).
                    keep = ((lambda xid: store.write_undone(checkpoint.run_id, self.name, xid))
                            if record.get("multisets") else None)
                    return undo.undo(conn, record, force, files=files, on_begin=keep, scripts=scripts)
        except psycopg.OperationalError as exc:
            raise TargetUnreachable(f"lost production during the undo: {last_line(exc)}", target=self.name) from exc
        except psycopg.Error as exc:
            raise RestoreFailed(f"the undo failed and was rolled back: {last_line(exc)}", target=self.name) from exc

    @like_checkpoint
    def restore(self, checkpoint: Checkpoint, store: Store) -> None:
        archive = store.open_verified(_artifact(checkpoint))
        restore_over(self.binaries(int(checkpoint.meta["major"])), self.dsn, archive,
                     observation=checkpoint.observation, run_id=checkpoint.run_id)
        with self.connect() as conn:
            settle_settings(conn, str(checkpoint.meta["database"]), checkpoint)

    @like_checkpoint
    def verify_restored(self, checkpoint: Checkpoint) -> list[str]:
        """Differences between production now and the checkpoint; empty when the restore is exact."""
        now = self.observe()
        if fingerprint_of(now) == checkpoint.fingerprint:
            return []
        return how_they_differ(checkpoint.observation, now)
