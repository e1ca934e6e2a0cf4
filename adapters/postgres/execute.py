"""Running an SQL action's statements on one database (a shadow or, during apply, production).

When every statement may run inside a transaction, they run in **one** transaction: a failure anywhere rolls
all of them back, so a half-applied migration cannot happen. Statements PostgreSQL refuses to run in a
transaction block (``CREATE INDEX CONCURRENTLY``, ``VACUUM`` …) or that manage transactions themselves force
statement-by-statement autocommit, like ``psql`` does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

import psycopg
from psycopg import errors as pgerrors

from adapters.postgres import dsn as dsnlib
from adapters.postgres.locks import LockTracer
from adapters.postgres.observe import read_text_as_str
from shadow.errors import ActionFailed, SqlError, TargetUnreachable, excerpt
from shadow.sqlsplit import Statement, forces_autocommit

def execute(dsn: str, statements: list[Statement], timeout: float, target: str,
            trace: list[dict[str, Any]] | None = None, tag: str = "", lock_timeout: float | None = None,
            retries: int = 0, waited: Callable[[str], None] | None = None) -> str:
    """Run ``statements``; return ``"transaction"`` or ``"autocommit"`` (how they ran). With ``trace`` (a list),
    record per statement the locks it took and the tables it rewrote (see :mod:`adapters.postgres.locks`).
    ``tag`` names the session (``application_name``) so that a killed run's statement can be found and ended.
    ``lock_timeout``: a statement waits at most that long for a lock; then it (statement by statement) or the
    whole transaction is rolled back and tried again, up to ``retries`` times, each wait told to ``waited``."""
    deadline = time.monotonic() + timeout
    one_transaction = not any(forces_autocommit(s) for s in statements)
    try:
        conn = _connect(dsn, tag)
    except psycopg.OperationalError as exc:
        raise TargetUnreachable(f"cannot connect: {_why(exc, dsn)}", target=target) from exc
    tracer = LockTracer(conn, dsn, one_transaction) if trace is not None else None
    if lock_timeout is not None:
        conn.execute(f"SET lock_timeout = {max(1, int(lock_timeout * 1000))}")

    def run_one(st: Statement) -> None:
        if tracer:
            tracer.before(st)
        _run(conn, st, deadline, target)
        if tracer:
            tracer.after()

    def all_in_one() -> None:
        with conn.transaction():
            for st in statements:
                run_one(st)
            _check_deferred(conn, statements, target)

    with conn:
        try:
            patience = (retries, lock_timeout or 0.0, target, waited)
            if one_transaction:
                _patiently(all_in_one, *patience)
            else:
                for st in statements:
                    _patiently(partial(run_one, st), *patience)
        except psycopg.OperationalError as exc:
            if isinstance(exc, pgerrors.QueryCanceled):
                raise ActionFailed(f"the SQL action timed out after {timeout:g} s", target=target) from exc
            raise TargetUnreachable(f"lost the connection during the action: {_why(exc, dsn)}", target=target) from exc
        finally:
            if tracer is not None and trace is not None:
                trace.extend(tracer.finish())
    return "transaction" if one_transaction else "autocommit"


def _patiently(step: Callable[[], None], retries: int, lock_timeout: float, target: str,
               waited: Callable[[str], None] | None) -> None:
    """``step`` (atomic: a transaction, or one autocommit statement), tried again when it gave up waiting."""
    for attempt in range(retries + 1):
        try:
            step()
            return
        except BUSY as exc:
            busy = _busy(exc, lock_timeout)
            if attempt == retries:
                raise ActionFailed(f"{busy}, {retries + 1} time(s); production is busy: retry later, or raise "
                                   "policy.lock_timeout / policy.lock_retries", target=target) from exc
            pause = min(8.0, 0.5 * 2 ** attempt)
            if waited is not None:
                waited(f"{busy}; rolled back, trying again in {pause:g} s (retry {attempt + 1} of {retries})")
            time.sleep(pause)


# A transaction that gave up waiting for a lock, or that REPEATABLE READ cannot serialise with a concurrent
# writer, changed nothing: it may simply be tried again.
BUSY = (pgerrors.LockNotAvailable, pgerrors.SerializationFailure, pgerrors.DeadlockDetected)


def execute_verified(dsn: str, statements: list[Statement], timeout: float, target: str,
                     verify: Callable[[psycopg.Connection, Any], list[str]],
                     on_begin: Callable[[int], None] | None = None, tag: str = "",
                     prepare: Callable[[psycopg.Connection], Any] | None = None, lock_timeout: float = 5.0,
                     retries: int = 3, waited: Callable[[str], None] | None = None) -> list[str]:
    """Run ``statements`` in one REPEATABLE READ transaction, then ``verify(conn, prepared)`` inside it, before
    anything is visible to anyone else: COMMIT when it returns no problems, ROLLBACK otherwise. Returns the
    problems — with a ROLLBACK, production was never changed.

    ``prepare(conn)`` runs first in the transaction and sees its snapshot (production as the statements find
    it); what it returns is handed to ``verify``, which sees the same snapshot plus the statements' own writes —
    exactly their effect, whatever other sessions commit meanwhile. ``on_begin`` gets the transaction's id
    before any statement runs, so that whoever finds the run killed can ask the server whether it committed
    (``txid_status``). A statement waits at most ``lock_timeout`` seconds for a lock (a migration queued behind
    a long read would block every query behind it); a transaction that gave up waiting, or lost a serialisation
    race with a concurrent writer, is rolled back and tried again up to ``retries`` times, each wait reported
    to ``waited``."""
    deadline = time.monotonic() + timeout
    try:
        conn = _connect(dsn, tag)
    except psycopg.OperationalError as exc:
        raise TargetUnreachable(f"cannot connect: {_why(exc, dsn)}", target=target) from exc
    with conn:
        for attempt in range(retries + 1):
            try:
                return _verified_once(conn, statements, deadline, target, verify, on_begin, prepare, lock_timeout)
            except BUSY as exc:
                busy = _busy(exc, lock_timeout)
                if attempt == retries:
                    raise ActionFailed(f"{busy}, {retries + 1} time(s); the transaction was rolled back and nothing "
                                       "was applied — production is busy: retry later, or raise "
                                       "policy.lock_timeout / policy.lock_retries", target=target) from exc
                pause = min(8.0, 0.5 * 2 ** attempt)
                if waited is not None:
                    waited(f"{busy}; rolled back, trying again in {pause:g} s (retry {attempt + 1} of {retries})")
                time.sleep(pause)
            except psycopg.OperationalError as exc:
                if isinstance(exc, pgerrors.QueryCanceled):
                    raise ActionFailed(f"the SQL action timed out after {timeout:g} s", target=target) from exc
                raise TargetUnreachable(f"lost the connection during the action: {_why(exc, dsn)}",
                                        target=target) from exc
    raise AssertionError("unreachable: the last attempt returns or raises")


def _verified_once(conn: psycopg.Connection, statements: list[Statement], deadline: float, target: str,
                   verify: Callable[[psycopg.Connection, Any], list[str]], on_begin: Callable[[int], None] | None,
                   prepare: Callable[[psycopg.Connection], Any] | None, lock_timeout: float) -> list[str]:
    problems: list[str] = []
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute(f"SET LOCAL lock_timeout = {max(1, int(lock_timeout * 1000))}")
        if on_begin is not None:
            on_begin(int(conn.execute("SELECT txid_current()").fetchone()[0]))  # type: ignore[index]
        prepared = prepare(conn) if prepare is not None else None
        for st in statements:
            _run(conn, st, deadline, target)
        conn.execute("SET LOCAL statement_timeout = 0")  # the timeout bounds the action, not the check
        _check_deferred(conn, statements, target)  # so what deferred triggers write is verified too
        problems = verify(conn, prepared)
        if problems:
            raise psycopg.Rollback()
    return problems


def _busy(exc: BaseException, lock_timeout: float) -> str:
    if isinstance(exc, pgerrors.LockNotAvailable):
        return f"a statement waited {lock_timeout:g} s for a lock another session holds"
    if isinstance(exc, pgerrors.DeadlockDetected):
        return "a statement deadlocked with another session"
    return "a concurrent write to the same rows could not be serialised with this transaction (REPEATABLE READ)"


def _connect(dsn: str, tag: str) -> psycopg.Connection:
    conn = (psycopg.connect(dsn, autocommit=True, application_name=tag[:63]) if tag
            else psycopg.connect(dsn, autocommit=True))
    read_text_as_str(conn)  # SQL_ASCII databases: text as str, like everywhere else
    return conn


def end_sessions(conn: psycopg.Connection, tag: str, wait: float = 30.0) -> int:
    """End every session of this database named ``tag`` (a killed run's statement the server still runs: it
    would commit on its own once done) and wait until they are gone; return how many there were."""
    query = ("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s "
             "AND pid <> pg_backend_pid()")
    pids = [r[0] for r in conn.execute(query, [tag[:63]])]
    for pid in pids:
        conn.execute("SELECT pg_terminate_backend(%s)", [pid])
    deadline = time.monotonic() + wait
    while conn.execute(query, [tag[:63]]).fetchone() is not None:
        if time.monotonic() > deadline:
            raise TargetUnreachable(f"sessions named {tag!r} did not end within {wait:g} s")
        time.sleep(0.1)
    return len(pids)


def _check_deferred(conn: psycopg.Connection, statements: list[Statement], target: str) -> None:
    """Fire deferred constraints and constraint triggers now, inside the transaction, instead of at COMMIT."""
    try:
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        last = statements[-1] if statements else None
        raise SqlError(f"a deferred constraint failed at the end of the transaction: "
                       f"{exc.diag.message_primary or exc}", file=last.file if last else None) from exc


def _run(conn: psycopg.Connection, st: Statement, deadline: float, target: str) -> None:
    remaining_ms = int((deadline - time.monotonic()) * 1000)
    if remaining_ms <= 0:
        raise ActionFailed("the SQL action timed out", target=target)
    conn.execute(f"SET statement_timeout = {max(remaining_ms, 1)}")
    try:
        conn.execute(st.text, prepare=False)
    except pgerrors.QueryCanceled:
        raise
    except psycopg.OperationalError as exc:
        if not _statements_fault(exc):
            raise
        _rejected(exc, st, target)
    except psycopg.Error as exc:
        _rejected(exc, st, target)


def _statements_fault(exc: psycopg.OperationalError) -> bool:
    """Whether an error psycopg files as operational is the statement's own, with the session alive: a program
    limit (class 54: an index row too big, too many columns) or an object not in the state the statement needs
    (class 55: a new enum value used in the transaction that added it, currval before nextval, a replication slot
    the server's wal_level cannot give) — but not a lock that was not available (55P03), which may be retried."""
    state = exc.sqlstate or ""
    return state.startswith("54") or (state.startswith("55") and state != "55P03")


def _rejected(exc: psycopg.Error, st: Statement, target: str) -> NoReturn:
    """The server rejected ``st``: an :class:`SqlError` naming its file and line."""
    line = st.line
    position = getattr(exc.diag, "statement_position", None)
    if position:
        line += st.text[: int(position) - 1].count("\n")
    message = excerpt(exc.diag.message_primary or _first_line(exc), 300)  # secret-looking runs masked
    if exc.diag.message_detail and st.quote:  # the detail may quote values: "Key (k)=(…) already exists"
        message += f" ({excerpt(exc.diag.message_detail, 160)})"
    raise SqlError(f"the server rejected the statement: {message}", file=st.file, line=line,
                   statement=st.text if st.quote else None, target=target) from exc


def _why(exc: BaseException, dsn: str) -> str:
    """Why the connection failed or was lost, on one line: libpq's whole message (the server's or the OS's reason
    and its hint), never only its first line, and never the password."""
    return dsnlib.connect_error(exc, dsnlib.parse(dsn).get("password"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
