"""Lock tracing in the rehearsal: which locks each statement took on which relations, for how long, and whether
it rewrote a table.

Inside one transaction every lock a statement takes is held until COMMIT, so the executing connection itself
lists them exactly after each statement. Statements that run in autocommit release their locks when they end;
a second connection samples ``pg_locks`` for the executing backend meanwhile. A table whose ``relfilenode``
changed across a statement was rewritten (``ALTER COLUMN TYPE``, ``VACUUM FULL``, a volatile default …).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from adapters.postgres.observe import read_text_as_str
from shadow.sqlsplit import Statement

SAMPLE_SECONDS = 0.01
Q_HELD = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), l.mode
FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE l.pid = %s AND l.locktype = 'relation' AND l.granted
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND c.relkind IN ('r', 'p', 'm', 'i', 'S', 'v')
"""
Q_FILENODES = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relfilenode FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
"""


def mode_name(mode: str) -> str:
    """``AccessExclusiveLock`` → ``ACCESS EXCLUSIVE`` (the names of the LOCK statement and the docs)."""
    return " ".join(re.findall(r"[A-Z][a-z]*", mode.removesuffix("Lock"))).upper()


@dataclass
class StatementTrace:
    statement: Statement
    started: float
    ended: float = 0.0
    locks: dict[tuple[str, str], float] = field(default_factory=dict)  # (relation, mode) → first seen
    rewrote: list[str] = field(default_factory=list)


class LockTracer:
    def __init__(self, conn: psycopg.Connection, dsn: str, in_transaction: bool) -> None:
        self.conn = conn
        self.pid = conn.info.backend_pid
        self.in_transaction = in_transaction
        self.traces: list[StatementTrace] = []
        self._current: StatementTrace | None = None
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        self._filenodes: dict[str, int] = {}
        if not in_transaction:
            self._sampler = threading.Thread(target=self._sample, args=(dsn,), daemon=True, name="lock-sampler")
            self._sampler.start()

    def _sample(self, dsn: str) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as watcher:
                read_text_as_str(watcher)
                while not self._stop.is_set():
                    current = self._current
                    if current is not None:
                        for rel, mode in watcher.execute(Q_HELD, (self.pid,)):
                            current.locks.setdefault((rel, mode), time.monotonic())
                    time.sleep(SAMPLE_SECONDS)
        except psycopg.Error:
            pass  # tracing is best effort; the statement's own result decides

    def before(self, statement: Statement) -> None:
        self._filenodes = dict(self.conn.execute(Q_FILENODES).fetchall())
        self._current = StatementTrace(statement, time.monotonic())
        self.traces.append(self._current)

    def after(self) -> None:
        trace = self._current
        if trace is None:
            return
        trace.ended = time.monotonic()
        if self.in_transaction:
            earlier = {key for t in self.traces[:-1] for key in t.locks}
            for rel, mode in self.conn.execute(Q_HELD, (self.pid,)):
                if (rel, mode) not in earlier:
                    trace.locks.setdefault((rel, mode), trace.started)
        now: dict[str, int] = dict(self.conn.execute(Q_FILENODES).fetchall())
        trace.rewrote = sorted(rel for rel, node in now.items() if rel in self._filenodes and self._filenodes[rel] != node)
        self._current = None

    def finish(self) -> list[dict[str, Any]]:
        """Per statement: locks with how long they were held (until COMMIT inside a transaction)."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(2)
        end = time.monotonic()
        out = []
        for t in self.traces:
            held_until = end if self.in_transaction else (t.ended or end)
            out.append({
                "statement": t.statement.where,
                "text": " ".join(t.statement.text.split())[:120],
                "seconds": round((t.ended or end) - t.started, 3),
                "locks": [{"relation": rel, "mode": mode_name(mode), "seconds": round(held_until - first, 3)}
                          for (rel, mode), first in sorted(t.locks.items())],
                "rewrote": t.rewrote,
            })
        return out
