"""A sampled lock trace for a command action on a Postgres shadow (an Alembic revision or a Django ``RunPython``
migration run by the tool itself, any script): which relations the command's sessions locked, in which mode, for
about how long, and which session held it.

Shadow does not see a command's statements, so it cannot trace them one by one as it traces SQL actions
(:mod:`adapters.postgres.locks`). Instead a session of its own on the shadow's server reads ``pg_locks`` joined
with ``pg_stat_activity`` while the command runs — every :data:`BUSY_INTERVAL` seconds while one of its sessions
is connected to the shadow's database, every :data:`INTERVAL` before — and records per relation the strongest
mode granted to any other backend there, when it was first and last seen in that mode, and who held it. A lock
held for less than the interval can be missed, and a hold time is a lower bound (last seen − first seen).

The sampler never stands in the action's way: ``pg_locks`` and ``pg_stat_activity`` take no heavyweight lock
(reading ``pg_locks`` holds the lock manager's partition latches for microseconds), and the names come from
``pg_class`` / ``pg_namespace`` (an AccessShare lock on those catalogs, which no DDL conflicts with), under a short
``lock_timeout`` that drops a sample rather than wait. It stops when the command ends, however it ends (the
``with`` block's exit), and its session closes with it. It connects as the action does (the endpoint's DSN), so it
sees the statements of the action's sessions; a session of another role shows ``<insufficient privilege>``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import psycopg

from adapters.postgres.locks import mode_name
from adapters.postgres.observe import read_text_as_str
from shadow.redact import mask_dsn_passwords, mask_output, mask_secrets

INTERVAL = 0.025  # seconds between two samples while no other session is connected to the shadow's database
# … and while one is: a migration tool's transaction can take and release an ACCESS EXCLUSIVE lock within
# 10 ms (examples/django's RunPython migration adds its column in about that).
BUSY_INTERVAL = 0.004
APPLICATION = "shadow lock sampler"
# shadow's own sessions in a shadow database while the action runs (adapters.postgres.held): not the action's
OWN_SESSIONS = [APPLICATION, "shadow pristine snapshot", "shadow pristine reader"]
EXCERPT = 120
# Relation lock modes, weakest first (https://www.postgresql.org/docs/current/explicit-locking.html).
MODES = ["AccessShareLock", "RowShareLock", "RowExclusiveLock", "ShareUpdateExclusiveLock", "ShareLock",
         "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]
# One row per lock of every other session in the shadow's database, and one with no relation for a session
# holding none (so the sampler knows the command is connected). A relation created by the command and not
# committed yet has no pg_class row visible here: it shows as its OID.
Q_SAMPLE = """
SELECT coalesce(quote_ident(n.nspname) || '.' || quote_ident(c.relname), l.relation::oid::text), l.mode,
       a.application_name, a.query
FROM pg_stat_activity a
LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'relation' AND l.granted AND l.relation >= 16384
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
LEFT JOIN pg_class c ON c.oid = l.relation LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.datname = current_database() AND a.pid <> pg_backend_pid() AND NOT a.application_name = ANY(%s)
  AND coalesce(n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast'), true)
  AND coalesce(c.relkind IN ('r', 'p', 'm', 'i', 'S', 'v'), true)
"""


@dataclass
class Held:
    """The strongest mode seen on one relation: first and last seen (monotonic), and by whom."""

    mode: str
    first: float
    last: float
    holder: str


class LockSampler:
    """``with LockSampler(dsn, label, secrets):`` samples the locks other sessions hold in ``dsn``'s database
    until the block ends; :meth:`trace` is then the lock-trace step (the shape of a SQL action's)."""

    def __init__(self, dsn: str, label: str, secrets: tuple[str, ...] = (), where: str = "command",
                 interval: float = INTERVAL, busy_interval: float = BUSY_INTERVAL) -> None:
        self.dsn, self.label, self.secrets, self.where = dsn, label, secrets, where
        self.interval, self.busy_interval = interval, busy_interval
        self.held: dict[str, Held] = {}
        self.samples = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="lock-sampler-command")
        self._started = self._ended = 0.0

    def __enter__(self) -> LockSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._ended = time.monotonic()
        self._stop.set()
        self._thread.join(5)  # a sample in flight ends within its statement_timeout

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name=APPLICATION, connect_timeout=5) as conn:
                read_text_as_str(conn)
                # a sample that would wait for a catalog lock is dropped rather than queued
                conn.execute("SET lock_timeout = '50ms'")
                conn.execute("SET statement_timeout = '2s'")
                while not self._stop.is_set():
                    try:
                        rows = conn.execute(Q_SAMPLE, (OWN_SESSIONS,)).fetchall()
                    except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled):
                        rows = None
                    if rows is not None:
                        self._record([row for row in rows if row[1] is not None], time.monotonic())
                    self._stop.wait(self.busy_interval if rows else self.interval)
        except psycopg.Error as exc:  # tracing is best effort: the command's own result decides
            self.error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

    def _record(self, rows: list[tuple[Any, ...]], now: float) -> None:
        self.samples += 1
        for relation, mode, application, query in rows:
            seen = self.held.get(relation)
            if seen is None or MODES.index(mode) > MODES.index(seen.mode):
                self.held[relation] = Held(mode, now, now, self._holder(application, query))
            elif mode == seen.mode:
                seen.last = now

    def _holder(self, application: str | None, query: str | None) -> str:
        """Who held a lock: the session's name and its (last) statement, which may carry data: secret-looking
        values are masked."""
        text = " ".join((query or "").split())[:EXCERPT]
        who = f"{application}: {text}" if application else text
        return mask_output(mask_secrets(who, self.secrets))

    def trace(self) -> dict[str, Any]:
        """The command as one step of a lock trace, marked ``sampled`` (locks shorter than the interval can be
        missed; a hold time is at least the figure given)."""
        end = self._ended or time.monotonic()
        return {
            "statement": self.where,
            "text": _excerpt(mask_dsn_passwords(mask_secrets(" ".join(self.label.split()), self.secrets))),
            "seconds": round(end - self._started, 3),
            "sampled": {"interval": self.busy_interval, "idle_interval": self.interval, "samples": self.samples,
                        "error": self.error},
            "locks": [{"relation": rel, "mode": mode_name(h.mode), "seconds": round(h.last - h.first, 3),
                       "first": round(h.first - self._started, 3), "last": round(h.last - self._started, 3),
                       "held_by": h.holder}
                      for rel, h in sorted(self.held.items())],
            "rewrote": [],
        }


def _excerpt(command: str) -> str:
    """A long command cut in the middle: its end names what it runs (a migration tool's revision)."""
    if len(command) <= EXCERPT:
        return command
    return command[: EXCERPT // 3] + " … " + command[-(EXCERPT - EXCERPT // 3 - 3):]
