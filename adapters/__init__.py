"""Resource kinds shadow can checkpoint, shadow, observe and restore.

Each kind is one module (or small package) exposing a :class:`Kind` as ``KIND``; :data:`REGISTRY` lists them
explicitly by name and module, refuses a duplicate name, and imports a kind only when it is first looked up.
Adding a kind means adding a module and one ``register`` line — the orchestrator (``shadow.run``) only ever
talks to these Protocols.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

# The capabilities beyond Target and ShadowCopy live in adapters.capabilities; they are adapters' too.
from adapters.capabilities import Checkable as Checkable, LockSampling as LockSampling, LockTrace as LockTrace
from adapters.capabilities import OwnEffect as OwnEffect, ServerAhead as ServerAhead, SqlTarget as SqlTarget
from adapters.capabilities import Undoable as Undoable, Warmable as Warmable

if TYPE_CHECKING:  # annotations only: importing adapters stays cheap
    from shadow.changes import Change
    from snapshots import Store


@dataclass(frozen=True)
class Endpoint:
    """How an action reaches one copy of a target: environment variables, plus a DSN for SQL actions."""

    env: Mapping[str, str]
    exclusive_env: Mapping[str, str] = field(default_factory=dict)  # only when it is the plan's one target of its kind
    dsn: str | None = None
    secrets: tuple[str, ...] = ()  # values to redact from anything shadow writes
    workdir: str | None = None  # a working directory the action runs in (a git working copy), if any

    def mounts(self) -> tuple[str, ...]:
        """Host directories an isolated action needs at the same path (a git working copy, its repository, a
        remote that is a local path); ``isolation: container`` mounts them read-write. Asked only then."""
        return ()


@dataclass
class Checkpoint:
    target: str
    kind: str
    run_id: str
    observation: dict[str, Any]
    fingerprint: str
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)  # role → {"sha256", "size"}
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "kind": self.kind, "run_id": self.run_id, "fingerprint": self.fingerprint,
            "artifacts": self.artifacts, "meta": self.meta, "observation": self.observation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(data["target"], data["kind"], data["run_id"], data["observation"], data["fingerprint"],
                   data.get("artifacts", {}), data.get("meta", {}))


class ShadowCopy(Protocol):
    """A disposable copy of one target, built from a checkpoint; it keeps a pristine copy for diffing."""

    backend: str
    endpoint: Endpoint
    warnings: list[str]  # what the report should say about this copy (a locale that differs …)
    fidelity: list[str]  # how the copy differs from the checkpoint, in change addresses; empty when faithful

    def changes(self) -> list[Change]:
        """What the action changed: pristine copy → this copy."""

    def observe(self) -> dict[str, Any]: ...

    def lost(self) -> str | None:
        """Why the copy stopped answering (its server killed, its container gone), or None while it answers."""

    def rehearse_rollback(self, undo: bool = False) -> list[str]:
        """Restore the copy from the checkpoint the way production would be; how it still differs (empty: exact).
        ``undo``: production's rollback will undo the run's own change from the record its apply keeps (an apply
        in one transaction): rehearse that undo where the kind keeps such records."""

    def watch(self, sql_text: str | None = None) -> None:
        """Called just before the action runs on the copy: from now on the copy measures what the action reads
        and writes (a kind that cannot measure it does nothing). ``sql_text``: the action's SQL when it is SQL run
        on this copy (None: a command, or SQL for another target — anything may happen)."""

    def independent(self, changes: list[Change]) -> list[Change]:
        """Of production's changes since the checkpoint (others' writes), the top-level ones the action neither
        read nor wrote on the copy: they cannot change its outcome. Empty when the kind cannot tell — every change
        then counts as one the action depends on."""

    def attach(self, network: Any) -> Endpoint:
        """Join an isolated action's network; the endpoint the action uses there (BadInput when the kind cannot)."""


class Target(Protocol):
    """One production resource named in a plan."""

    name: str
    kind: str
    progress: Callable[[str], None] | None  # set by the orchestrator: long steps report lines of progress here

    def describe(self) -> str:
        """Where it is, with any password removed."""

    def endpoint(self) -> Endpoint:
        """Production's endpoint, handed to the action only during apply."""

    def checkpoint(self, store: Store, run_id: str) -> Checkpoint: ...

    def shadow(self, checkpoint: Checkpoint, store: Store, run_id: str, backend: str,
               limits: Any = None) -> AbstractContextManager[ShadowCopy]:
        """A disposable copy built from ``checkpoint`` on ``backend`` ("local" | "docker"), torn down on exit."""

    def observe(self) -> dict[str, Any]: ...

    def fingerprint(self, observation: dict[str, Any] | None = None) -> str: ...

    def changes_since(self, checkpoint: Checkpoint, shadow: ShadowCopy | None) -> list[Change]:
        """Production's changes since the checkpoint (rows counted against the shadow's pristine copy)."""

    def at_checkpoint(self, checkpoint: Checkpoint, store: Store) -> bool:
        """Production still equals the checkpoint in everything :meth:`restore` would put back (it is skipped
        then): its fingerprint, and — for a kind whose checkpoint records less than a restore puts back — what an
        apply of the checkpoint's run recorded in ``store`` just before its action."""

    def restore(self, checkpoint: Checkpoint, store: Store) -> None:
        """Put production back to the checkpoint. Callers then call :meth:`verify_restored`."""

    def verify_restored(self, checkpoint: Checkpoint) -> list[str]:
        """How production differs from the checkpoint now; empty when it observes equal."""

    def end_sessions(self, tag: str) -> int:
        """End what the resource still runs for a killed run's action (its sessions named ``tag``) and wait until
        it has stopped; return how many there were. Kinds with nothing that outlives a client return 0."""

    def lock(self, holder: str, timeout: float, wait: Callable[[str], None]) -> AbstractContextManager[None]:
        """Held while a run writes: the kind's own lock on the resource (a database advisory lock, a lock file in
        the repository), so that runs from other state dirs or machines exclude each other; :func:`no_lock` when
        the resource has none."""

    def lock_identity(self) -> str:
        """What the resource lock is taken on: two targets with the same identity share one lock."""



class Kind(Protocol):
    name: str
    change_ops: tuple[str, ...]  # the ops and kinds its change addresses use, for validating expectations
    change_kinds: tuple[str, ...]

    def validate(self, spec: Mapping[str, Any]) -> Iterator[tuple[str | None, str]]:
        """(key, problem) for every problem in a target's plan settings."""

    runs_sql: bool  # an SQL action may name its targets; their copies answer `checks:`

    def resolve_paths(self, spec: Mapping[str, Any], folder: Path) -> dict[str, Any]:
        """The target's settings with paths relative to the plan's ``folder`` made absolute (most kinds: as given)."""

    def target(self, name: str, spec: Mapping[str, Any], settings: Any) -> Target: ...

    def point_at(self, spec: Mapping[str, Any], address: str) -> dict[str, Any]:
        """The target's settings pointed at another ``address`` (``pytest --shadow-target NAME=ADDRESS``): what
        names the resource — a PostgreSQL DSN, a bucket, a repository's path or URL."""

    def clear_leftovers(self, root: Path) -> list[str]:
        """Before ``shadow gc`` removes a dead run's temp dir ``root``: stop whatever of this kind still runs inside
        it (a database server that a shadow, or an action in its HOME, started there); say what was done, a line
        each. :func:`nothing_runs` for kinds that leave no process behind."""

    def prune(self, checkpoint: Checkpoint) -> str:
        """When ``shadow gc --checkpoints-older-than`` removes ``checkpoint``: drop what it keeps alive outside
        shadow's store (a git checkpoint's refs in its repository); say what went, "" when nothing did.
        :func:`nothing_kept` for kinds whose checkpoints live in the store alone."""

    def reap_warm(self, settings: Any, everything: bool, dry_run: bool,
                  runs: set[str] | None = None) -> list[tuple[str, str | None, str]]:
        """For ``shadow gc`` and ``recover``: remove this kind's warm copies kept for ``settings``' state dir
        (:class:`Warmable`) that expired, or were made by one of ``runs`` (killed runs ``recover`` settled) —
        ``everything``: all — and no run uses (none, when ``dry_run``); (what it was, the run that made it, what
        was done) for each. :func:`nothing_warm` for kinds that keep none."""

    def prepare_warm(self, settings: Any, interrupt: Interrupt) -> int:
        """Between runs, in a long-lived process: make this kind's idle warm copies for ``settings``' state dir
        quicker to lend (PostgreSQL: clones of the golden database made ahead); how many things were made. Stops
        as soon as ``interrupt`` is set (a run wants the copies), leaving nothing half made.
        :func:`nothing_to_prepare` for kinds that keep none."""


class Interrupt:
    """Stops work another thread does between runs: :meth:`set` ends the step under way (through the cancel
    function the worker registered with :meth:`cancelling`) and every later one."""

    def __init__(self, by_signal: bool = False) -> None:
        self.by_signal = by_signal  # the work runs in a process of its own that a run may stop with SIGTERM
        self._set = False
        self._cancel: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def set(self) -> None:
        with self._lock:
            self._set = True
            if self._cancel is not None:
                try:
                    self._cancel()
                except Exception:  # noqa: BLE001 - the step ends by itself then; nothing later starts
                    pass

    def is_set(self) -> bool:
        return self._set

    @contextmanager
    def cancelling(self, cancel: Callable[[], None]) -> Iterator[bool]:
        """Around one step: yields False when already set (skip the step); else ``cancel`` ends it on :meth:`set`."""
        with self._lock:
            go = not self._set
            if go:
                self._cancel = cancel
        if not go:
            yield False
            return
        try:
            yield True
        finally:
            with self._lock:
                self._cancel = None


@contextmanager
def no_lock(holder: str, timeout: float, wait: Callable[[str], None]) -> Iterator[None]:
    """The resource lock of a kind whose resource has none (shadow's own lock file still excludes other runs)."""
    yield


def nothing_warm(settings: Any, everything: bool, dry_run: bool,
                 runs: set[str] | None = None) -> list[tuple[str, str | None, str]]:
    """:meth:`Kind.reap_warm` of a kind that keeps no warm copies."""
    return []


def nothing_to_prepare(settings: Any, interrupt: Interrupt) -> int:
    """:meth:`Kind.prepare_warm` of a kind that keeps no warm copies."""
    return 0


def paths_as_given(spec: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """``resolve_paths`` of a kind whose settings hold no paths."""
    return dict(spec)


def env_name(target: str) -> str:
    """What a target's name becomes in the variables an action gets (``SHADOW_<NAME>_URL``…): upper case, every
    character but A-Z and 0-9 an underscore."""
    return re.sub(r"[^A-Z0-9]", "_", target.upper())


def fingerprint_unchanged(target: Target, checkpoint: Checkpoint, store: Store) -> bool:
    """:meth:`Target.at_checkpoint` of a kind whose checkpoint records all that a restore puts back."""
    return target.fingerprint() == checkpoint.fingerprint


def fingerprint_of(observation: Mapping[str, Any]) -> str:
    """A checkpoint's fingerprint: the sha256 of an observation's ``objects`` and ``data`` (where the resource is
    stays out, so a copy elsewhere fingerprints the same)."""
    return json_sha256({"objects": observation["objects"], "data": observation["data"]})


def json_sha256(value: Any) -> str:
    """The sha256 of ``value`` as JSON with sorted keys (a value JSON cannot hold, as its ``str``)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def sort_undo(entries: Mapping[str, Mapping[str, Any]], back: Callable[[str], bool], as_left: Callable[[str], bool],
              conflict: Callable[[str], str], force: bool) -> tuple[list[str], list[str]]:
    """(what an undo must put back, its conflicts) of an undo record's ``entries`` (each a key, ref … the run
    changed): one already ``back`` at the checkpoint is skipped (a killed undo run again), one still ``as_left``
    by the run is put back, any other was changed since — a conflict, put back only when ``force``."""
    todo, conflicts = [], []
    for name in entries:
        if back(name):
            continue
        if not as_left(name):
            conflicts.append(conflict(name))
            if not force:
                continue
        todo.append(name)
    return todo, conflicts


def nothing_runs(root: Path) -> list[str]:
    """``clear_leftovers`` of a kind that runs nothing inside shadow's temp dirs (its servers end with their run)."""
    return []


def nothing_kept(checkpoint: Checkpoint) -> str:
    """``prune`` of a kind whose checkpoints keep nothing outside shadow's store."""
    return ""


class Registry(Mapping[str, Kind]):
    """Kinds by name. A kind is registered by the module that defines it (its ``KIND``) and imported only when
    first looked up, so a front end pays for psycopg, boto3 or GitPython only when a plan names that kind."""

    def __init__(self) -> None:
        self._modules: dict[str, str] = {}
        self._loaded: dict[str, Kind] = {}

    def register(self, name: str, module: str) -> None:
        if name in self._modules:
            raise ValueError(f"a target kind named {name!r} is already registered")
        self._modules[name] = module

    def __getitem__(self, name: str) -> Kind:
        if name not in self._loaded:
            kind: Kind = import_module(self._modules[name]).KIND  # KeyError for an unknown name, as a dict's
            if kind.name != name:
                raise ValueError(f"{self._modules[name]}.KIND is named {kind.name!r}, registered as {name!r}")
            self._loaded[name] = kind
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def __len__(self) -> int:
        return len(self._modules)


REGISTRY = Registry()
REGISTRY.register("postgres", "adapters.postgres")
REGISTRY.register("s3", "adapters.s3")
REGISTRY.register("git", "adapters.git")
