"""The capabilities a kind may have beyond the base :class:`~adapters.Target` and :class:`~adapters.ShadowCopy`:
each a Protocol the orchestrator checks by type (``isinstance`` on the runtime-checkable ones), never by probing
attributes — SQL (:class:`SqlTarget`, :class:`Checkable`), undoing a run's own change (:class:`Undoable`,
:class:`OwnEffect`), warm checkpoints (:class:`Warmable`), a server started ahead (:class:`ServerAhead`) and a
command's locks sampled (:class:`LockSampling`). ``adapters`` re-exports every one."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: nothing here imports adapters at run time
    from adapters import Checkpoint, Endpoint, ShadowCopy
    from shadow.changes import Change
    from snapshots import Store


@runtime_checkable
class Checkable(Protocol):
    """A copy that answers ``checks:`` queries (SQL)."""

    def check(self, query: str) -> Any:
        """Run an expectation's check query on the copy; return its single value."""



@runtime_checkable
class SqlTarget(Protocol):
    """A target an SQL action runs on: statements, in one transaction verified before COMMIT when they allow it."""

    def execute_sql(self, endpoint: Endpoint, statements: list[Any], timeout: float,
                    trace: list[dict[str, Any]] | None = None, tag: str = "", lock_timeout: float | None = None,
                    lock_retries: int = 0, waited: Callable[[str], None] | None = None) -> str:
        """Run an SQL action's statements on ``endpoint``; return how ("transaction" | "autocommit"). ``tag``
        names the sessions that run them, for :meth:`Target.end_sessions`. ``lock_timeout``: a statement waits
        at most that long for a lock, then is tried again up to ``lock_retries`` times, each wait told to
        ``waited``."""

    def atomic_blocker(self, statements: list[Any]) -> Any:
        """The first statement that cannot run inside a transaction, or None when all can."""

    def apply_sql_verified(self, statements: list[Any], timeout: float, checkpoint: Checkpoint, shadow: Any,
                           judge: Callable[[list[Change]], list[str]], on_begin: Callable[[int], None] | None = None,
                           tag: str = "", lock_timeout: float = 5.0, lock_retries: int = 3,
                           waited: Callable[[str], None] | None = None,
                           keep: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[str], list[Change]]:
        """Apply in one transaction, COMMIT only when ``judge`` finds the statements' own change set (not what
        other sessions commit meanwhile) right inside it. A statement waits at most ``lock_timeout`` seconds for a
        lock; a transaction that gave up waiting or lost a serialisation race is tried again up to
        ``lock_retries`` times, each wait told to ``waited``. ``keep`` gets, inside the transaction and before
        COMMIT, what undoing exactly this change needs (for :class:`Undoable`)."""

    def transaction_outcome(self, xid: int) -> str:
        """Whether transaction ``xid`` committed: "committed", "aborted" or "unknown"."""


@runtime_checkable
class Undoable(Protocol):
    """A target that can undo one run's own change and keep every write other sessions made since."""

    def undo(self, record: dict[str, Any], checkpoint: Checkpoint, force: bool) -> tuple[list[str], list[str], list[str]]:
        """Undo what ``record`` (kept by the apply) says the run did, in one transaction: (conflicts — rows or
        objects someone changed since, refused unless ``force`` —, what was done, how production still differs
        after it; with conflicts or differences nothing was changed)."""


@runtime_checkable
class OwnEffect(Protocol):
    """A target whose apply cannot run in one transaction but can still tell the action's own writes from other
    writers' (by the footprint the rehearsal measured), and undo only its own."""

    def before_action(self, checkpoint: Checkpoint, shadow: ShadowCopy) -> dict[str, Any]:
        """Taken just before the action runs on production: what :meth:`own_effect` needs (JSON; kept in the
        store, so that a killed apply is settled the same way)."""

    def own_effect(self, before: dict[str, Any], checkpoint: Checkpoint,
                   strict: bool) -> tuple[list[Change], list[Change], dict[str, Any]]:
        """After the action: (production's change set since the checkpoint for what the action did, what other
        writers changed meanwhile, the record :meth:`Undoable.undo` takes). ``strict``: every change is the
        action's."""

    def undo(self, record: dict[str, Any], checkpoint: Checkpoint, force: bool) -> tuple[list[str], list[str], list[str]]:
        """As :meth:`Undoable.undo`."""


@runtime_checkable
class Warmable(Protocol):
    """A target whose checkpoint can stay restored between runs (``policy.warm``), each run's shadow a clone of it."""

    def warm_checkpoint(self, store: Store, backend: str, keep: float, limits: Any = None) -> tuple[Checkpoint | None, str]:
        """(the kept checkpoint this run rehearses on instead of taking a new one, leased to it until its shadow
        is torn down — or None, and why not). Either way the shadow this run builds is kept ``keep`` seconds
        after its last use."""

    def moved_since(self, checkpoint: Checkpoint, shadow: ShadowCopy) -> tuple[list[Change], list[Change]]:
        """Production since the kept ``checkpoint``: (changes the rehearsal on ``shadow`` cannot depend on, changes
        it may — then the kept copy is discarded and the run must rehearse again on a new checkpoint). Costs what
        the action touched, not the database."""


class LockTrace(Protocol):
    """A sampler of the locks a command's sessions hold: a context around the command, then its lock-trace step
    (the shape of a SQL action's)."""

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: Any) -> None: ...

    def trace(self) -> dict[str, Any]: ...


@runtime_checkable
class LockSampling(Protocol):
    """A kind whose copies can show which locks a command's sessions hold while it runs: shadow cannot see a
    command's statements, so it samples what they hold (``policy.max_lock`` judges the trace)."""

    def lock_sampler(self, endpoint: Endpoint, label: str, secrets: tuple[str, ...], where: str) -> LockTrace | None:
        """A sampler of the copy at ``endpoint`` for the command ``label`` (``where``: how the trace names it), or
        None when that endpoint cannot be sampled."""


@runtime_checkable
class ServerAhead(Protocol):
    """A target whose shadow needs a server of its own, which can come up while the checkpoint is taken."""

    def shadow_server_ahead(self, run_id: str, backend: str, limits: Any = None) -> AbstractContextManager[None]:
        """Start, in the background, the server the next :meth:`Target.shadow` of ``run_id`` on ``backend`` will
        restore into. Leaving the context stops it unless a shadow took it (and then owns it)."""
