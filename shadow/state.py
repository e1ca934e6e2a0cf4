"""Where a runner's state lives: the local state dir (the default, embedded), or — with ``SHADOW_STATE_URL`` — a
PostgreSQL schema every runner shares (:mod:`shadow.statedb`), with the state dir as this runner's working copy.

Everything that reads or writes the journal, run records, approvals, liveness or run-level locks goes through
here, so that the two places answer the same questions the same way:

- :func:`open_journal` — the hash-chained journal;
- :func:`write_run_file` / :func:`pull_run` — a run folder's shared files (``run.json``, the approval request and
  approval, ``report.json``): written locally and, when shared, to the state database; pulled into the local
  folder before a command reads a run that another runner may have written;
- :func:`run_records`, :func:`is_alive`, :func:`unfinished`, :func:`refuse_if_unrecovered` — which runs exist,
  which are running (anywhere), which were killed;
- :class:`Liveness` — held by a run for its whole life;
- :func:`lock_targets` — run-level target locks: the machine's flock, each kind's own lock on the resource, and,
  when shared, an advisory lock on the state database, so runs on two runners exclude each other whatever kind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from shadow import guard
from shadow.errors import InfrastructureError
from shadow.guard import RunRecord, Unrecovered
from shadow.journal import Journal
from shadow.settings import Settings
from snapshots import atomic_write_bytes, make_private_dir

SHARED_FILES = ("run.json", "approval-request.json", "approval.json", "report.json")


def shared(settings: Settings) -> Any:
    """A new connection to the shared state (a :class:`shadow.statedb.StateDB`), or None for the local state dir."""
    if not settings.state_url:
        return None
    from shadow.statedb import StateDB

    return StateDB(settings.state_url, settings.environ)


def open_journal(settings: Settings, db: Any = None) -> Any:
    """The journal: ``journal.sqlite`` in the state dir, or the state database's (on ``db`` when given — it is
    then not closed with the journal)."""
    if not settings.state_url:
        return Journal(settings.journal_path)
    from shadow.statedb import PgJournal

    return PgJournal(db, owned=False) if db is not None else PgJournal(shared(settings))


def has_journal(settings: Settings) -> bool:
    return bool(settings.state_url) or settings.journal_path.exists()


def write_run_file(settings: Settings, run_id: str, name: str, body: bytes, db: Any = None) -> None:
    """Write ``runs/<run_id>/<name>`` — and, when state is shared, the same bytes to the state database first, so
    that no other runner can see a local-only phase."""
    if settings.state_url and name in SHARED_FILES:
        _with_db(settings, db, lambda d: d.put_file(run_id, name, body))
    folder = settings.runs_dir / run_id
    make_private_dir(folder)
    atomic_write_bytes(folder / name, body)


def save_record(settings: Settings, record: RunRecord, db: Any = None) -> None:
    write_run_file(settings, record.run_id, "run.json", record.to_bytes(), db)


def pull_run(settings: Settings, run_id: str, db: Any = None) -> None:
    """Bring a run's shared files into the local run folder (no-op for local state)."""
    if not settings.state_url:
        return
    files = _with_db(settings, db, lambda d: d.files(run_id))
    if not files:
        return
    folder = settings.runs_dir / run_id
    make_private_dir(folder)
    for name, body in files.items():
        if name in SHARED_FILES:
            atomic_write_bytes(folder / name, body)


def running_elsewhere(settings: Settings) -> list[str]:
    """Runs alive on any runner (shared state; none for the local state dir, whose runs hold local flocks)."""
    return list(_with_db(settings, None, lambda d: d.running())) if settings.state_url else []


def pull_records(settings: Settings) -> None:
    """Every run's shared record into the local state dir (what ``shadow gc`` reads), when state is shared."""
    if not settings.state_url:
        return
    for run_id, body in _with_db(settings, None, lambda d: d.all_named("run.json")).items():
        folder = settings.runs_dir / run_id
        make_private_dir(folder)
        atomic_write_bytes(folder / "run.json", body)


def run_records(settings: Settings, db: Any = None) -> list[RunRecord]:
    """Every run's record, by run id; unreadable ones are skipped."""
    if settings.state_url:
        bodies = _with_db(settings, db, lambda d: d.all_named("run.json"))
    else:
        bodies = {}
        for path in sorted(settings.runs_dir.glob("*/run.json")):
            try:
                bodies[path.parent.name] = path.read_bytes()
            except OSError:
                continue
    out = []
    for body in bodies.values():
        try:
            data = json.loads(body)
            out.append(RunRecord(**{k: data[k] for k in RunRecord.__dataclass_fields__ if k in data}))
        except (ValueError, TypeError, KeyError):
            continue
    return out


def is_alive(settings: Settings, run_id: str, db: Any = None) -> bool:
    """Whether a process (on any runner, when state is shared) still runs ``run_id``."""
    if guard.is_alive(settings.runs_dir / run_id):
        return True
    if not settings.state_url:
        return False
    from shadow.statedb import RUN_LOCK

    return bool(_with_db(settings, db, lambda d: d.is_locked(RUN_LOCK, run_id)))


def unfinished(settings: Settings, db: Any = None) -> list[RunRecord]:
    """Runs whose process died before they finished, oldest first."""
    def find(d: Any) -> list[RunRecord]:
        return [r for r in run_records(settings, d) if r.phase != "finished" and not is_alive(settings, r.run_id, d)]

    if not settings.state_url:
        return find(None)
    return list(_with_db(settings, db, find))


def refuse_if_unrecovered(settings: Settings, identities: Mapping[str, str]) -> None:
    """Refuse new work on a target that a killed run (on any runner) left unfinished."""
    wanted = set(identities.values())
    for record in unfinished(settings):
        touched = sorted(name for name, ident in record.targets.items() if ident in wanted)
        if touched and record.command in ("apply", "rollback", "recover"):
            where = f" on {record.host}" if record.host else ""
            raise Unrecovered(f"run {record.run_id} (`shadow {record.command}`, pid {record.pid}{where}) was killed "
                              f"while {record.phase} on {', '.join(touched)}; run `shadow recover` to settle it "
                              "before starting new work on that target")


class Liveness:
    """Held by a run for its whole life: the flock on ``runs/<id>/alive`` and, when state is shared, a session
    advisory lock on the state database (on ``db``: the connection the run journals on, so that a run whose
    connection died cannot journal another step). ``wait``: block until a dead run's lock is free (recover)."""

    def __init__(self, settings: Settings, run_id: str, db: Any = None, wait: bool = True) -> None:
        folder = settings.runs_dir / run_id
        make_private_dir(folder)
        self.local = guard.Liveness(folder)
        self.db, self.run_id = db, run_id
        if db is not None:
            from shadow.statedb import RUN_LOCK

            try:
                if not db.try_lock(RUN_LOCK, run_id):
                    if not wait:
                        raise InfrastructureError(f"run {run_id} is running on another runner")
                    db.wait_lock(RUN_LOCK, run_id, 24 * 3600.0, lambda: f"run {run_id}", lambda _t: None)
            except BaseException:
                self.local.release()
                raise

    def release(self) -> None:
        self.local.release()
        if self.db is not None:
            from shadow.statedb import RUN_LOCK

            try:
                self.db.unlock(RUN_LOCK, self.run_id)
            except InfrastructureError:
                pass  # the connection is gone, and the server dropped the lock with it
            self.db = None


@contextmanager
def lock_targets(settings: Settings, targets: Mapping[str, Any], holder: str, timeout: float,
                 wait: Callable[[str], None]) -> Iterator[None]:
    """The run-level locks on every target: this machine's, each kind's own, and the shared state's."""
    with ExitStack() as stack:
        stack.enter_context(guard.lock_targets(settings.state_dir / "locks", targets, holder, timeout, wait))
        if settings.state_url:
            from shadow.statedb import TARGET_LOCK

            db = shared(settings)
            stack.callback(db.close)  # closing the session drops its advisory locks
            for name, t in sorted(targets.items(), key=lambda item: guard.identity_key(item[1].describe())):
                key = guard.identity_key(t.describe())
                db.wait_lock(TARGET_LOCK, key, timeout, lambda: _holder_of(settings, key),
                             lambda text, name=name: wait(f"{name}: {text}"))
                db.put_file("locks", key, holder.encode())
        yield


def _holder_of(settings: Settings, key: str) -> str:
    db = shared(settings)
    try:
        body = db.get_file("locks", key)
    finally:
        db.close()
    return body.decode(errors="replace") if body else "another shadow run"


def _with_db(settings: Settings, db: Any, use: Callable[[Any], Any]) -> Any:
    if db is not None:
        return use(db)
    own = shared(settings)
    try:
        return use(own)
    finally:
        own.close()


def local_path(settings: Settings, run_id: str, name: str) -> Path:
    """``runs/<run_id>/<name>`` after pulling the run's shared files (when state is shared)."""
    pull_run(settings, run_id)
    return settings.runs_dir / run_id / name
