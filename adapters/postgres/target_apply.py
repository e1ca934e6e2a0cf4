"""Applying to PostgreSQL production: SQL statements (in one transaction verified before COMMIT when they allow
it, :mod:`adapters.postgres.own_effect`), an apply not in one transaction (:mod:`adapters.postgres.stepwise`), and
production's changes since the checkpoint.

The methods :class:`adapters.postgres.target.PostgresTarget` takes from :class:`ApplyMixin`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import psycopg

from adapters import Checkpoint, Endpoint, fingerprint_of
from adapters.postgres import own_effect, stepwise, undo
from adapters.postgres.compare import count_changed_rows, last_line, uncounted
from adapters.postgres.diff import diff
from adapters.postgres.execute import end_sessions, execute, execute_verified
from adapters.postgres.observe import like_checkpoint, read_text_as_str
from adapters.postgres.server import MINIMAL_WAL_MISSES
from adapters.postgres.shadowcopy import PgShadow
from shadow.changes import Change, RowDelta
from shadow.errors import InfrastructureError, ShadowError, SqlError, TargetUnreachable
from shadow.sqlsplit import Statement, forces_autocommit

# The server's words when a feature needs more WAL than wal_level = minimal writes (a replication slot, a base backup).
WAL_LEVEL_ERROR = re.compile(r"wal_level|WAL level", re.IGNORECASE)


class ApplyMixin:
    """SQL, verified and stepwise applies, and changes since the checkpoint (of
    :class:`adapters.postgres.target.PostgresTarget`)."""

    # What these methods use of the target (set in its __init__, defined there or by its other mixins).
    name: str
    dsn: str
    _rehearsal: PgShadow | None
    connect: Callable[..., psycopg.Connection]
    observe: Callable[[], dict[str, Any]]
    _observe: Callable[..., dict[str, Any]]

    # -- production ---------------------------------------------------------------------------------------
    def execute_sql(self, endpoint: Endpoint, statements: list[Statement], timeout: float,
                    trace: list[dict[str, Any]] | None = None, tag: str = "", lock_timeout: float | None = None,
                    lock_retries: int = 0, waited: Callable[[str], None] | None = None) -> str:
        assert endpoint.dsn is not None
        try:
            return execute(endpoint.dsn, statements, timeout, self.name, trace, tag, lock_timeout, lock_retries,
                           waited)
        except SqlError as exc:
            if endpoint.dsn != self.dsn and WAL_LEVEL_ERROR.search(str(exc)):  # in the shadow (SHADOW_SETTINGS)
                exc.args = (f"{exc.args[0]} — {MINIMAL_WAL_MISSES}",)
            raise

    def end_sessions(self, tag: str) -> int:
        """End production's sessions named ``tag`` (a killed run's) and wait until they are gone."""
        with self.connect() as conn:
            return end_sessions(conn, tag)

    def atomic_blocker(self, statements: list[Statement]) -> Statement | None:
        """The first statement that cannot run inside a transaction, or None when all can."""
        return next((st for st in statements if forces_autocommit(st)), None)

    @like_checkpoint
    def apply_sql_verified(self, statements: list[Statement], timeout: float, checkpoint: Checkpoint, shadow: Any,
                           judge: Callable[[list[Change]], list[str]],
                           on_begin: Callable[[int], None] | None = None, tag: str = "",
                           lock_timeout: float = 5.0, lock_retries: int = 3,
                           waited: Callable[[str], None] | None = None,
                           keep: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[str], list[Change]]:
        """Apply in one REPEATABLE READ transaction, observe production *inside* it before and after the
        statements, and COMMIT only when ``judge`` finds the statements' own change set equal to the rehearsal's;
        otherwise ROLLBACK, which costs nothing (:mod:`adapters.postgres.own_effect`)."""
        seen: list[Change] = []
        tables = {c.name for c in shadow.rehearsed if c.kind == "rows"}

        def prepare(conn: psycopg.Connection) -> own_effect.Before:
            return own_effect.prepare(conn, checkpoint.observation, tables, self._observe)

        def verify(conn: psycopg.Connection, before: own_effect.Before) -> list[str]:
            after = self._observe(conn)
            own_effect.others_positions(before.observation, after, shadow.rehearsed)
            with shadow.connect_pristine() as pristine:
                read_text_as_str(pristine)
                rows, uncounted = own_effect.rows_changed(conn, pristine, checkpoint.observation, before, after)
                seen[:] = diff(before.observation, after, rows) + uncounted
                own_effect.mark_moved(seen, before)
                problems = judge(seen)
                if not problems and keep is not None:  # still inside the transaction: kept before COMMIT
                    keep(undo.capture(conn, own_effect.rows_before(conn, pristine, before), before.observation,
                                      after, rows, seen, checkpoint.observation))
            return problems

        problems = execute_verified(self.dsn, statements, timeout, self.name, verify, on_begin, tag, prepare,
                                    lock_timeout, lock_retries, waited)
        return problems, seen

    # -- an apply not in one transaction (adapters.postgres.stepwise) --------------------------------------------
    @like_checkpoint
    def before_action(self, checkpoint: Checkpoint, shadow: Any) -> dict[str, Any]:
        """Production's tables just before an apply that cannot run in one transaction, and the rehearsal's
        footprint. Refused when undoing the rehearsed change would take the whole checkpoint and production
        moved since it: that restore would lose those writes (nothing was applied)."""
        assert isinstance(shadow, PgShadow)
        now = self.observe()
        before = stepwise.before_action(now, shadow)
        if before["fallback"] and fingerprint_of(now) != checkpoint.fingerprint:
            raise ShadowError(f"refused before applying anything: production changed since the checkpoint, and "
                              f"undoing this apply (which cannot run in one transaction) would mean restoring the "
                              f"whole checkpoint, which would lose those writes ({before['fallback']}); run shadow "
                              "again to rehearse against the current state", target=self.name)
        self._rehearsal = shadow
        return before

    @like_checkpoint
    def own_effect(self, before: dict[str, Any], checkpoint: Checkpoint,
                   strict: bool) -> tuple[list[Change], list[Change], dict[str, Any]]:
        """After an apply not in one transaction: (the action's own change set since the checkpoint — rows
        counted against the rehearsal's pristine copy while it is there —, other writers' changes during the
        apply, the undo record)."""
        try:
            now = self.observe()
            changes = self._changes(checkpoint, now, self._rehearsal)
            ours, theirs = stepwise.split(changes, before, now, strict)
            with self.connect() as conn:
                predicted = (self._rehearsal.observed_after or {}).get("data") if self._rehearsal else None
                record = stepwise.record_of(conn, ours, before, now, checkpoint.observation, predicted)
        except psycopg.OperationalError as exc:
            raise TargetUnreachable(f"lost production while reading the apply's effect: {last_line(exc)}",
                                    target=self.name) from exc
        except psycopg.Error as exc:
            raise InfrastructureError(f"reading the apply's effect failed: {last_line(exc)}",
                                      target=self.name) from exc
        return ours, theirs, record

    def transaction_outcome(self, xid: int, wait: float = 30.0) -> str:
        """Whether transaction ``xid`` committed ("committed" | "aborted" | "unknown"). One still open belongs to a killed
        shadow (nobody can send its COMMIT any more): its backend is ended first, which aborts it."""
        with self.connect() as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE backend_xid IS NOT NULL AND backend_xid::text::bigint = %s", [xid % 2**32])
            deadline = time.monotonic() + wait
            while True:
                row = conn.execute("SELECT txid_status(%s)", [xid]).fetchone()
                status = row[0] if row else None
                if status != "in progress" or time.monotonic() > deadline:
                    return str(status or "unknown")
                time.sleep(0.2)

    @like_checkpoint
    def changes_since(self, checkpoint: Checkpoint, shadow: Any | None) -> list[Change]:
        return self._changes(checkpoint, self.observe(), shadow)

    def _changes(self, checkpoint: Checkpoint, after: dict[str, Any], shadow: Any | None) -> list[Change]:
        rows: dict[str, RowDelta] = {}
        if shadow is not None:
            with self.connect() as prod, shadow.connect_pristine() as pristine:
                rows = count_changed_rows(pristine, prod, checkpoint.observation, after)
            return diff(checkpoint.observation, after, rows)
        return uncounted(checkpoint.observation, after)
