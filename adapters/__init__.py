"""Resource kinds shadow can checkpoint, shadow, observe and restore.

Each kind is one module (or small package) exposing a :class:`Kind`; :data:`REGISTRY` lists them explicitly
and refuses a duplicate name. Adding a kind means adding a module and one ``register`` line — the orchestrator
(``shadow.run``) only ever talks to these Protocols.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from shadow.changes import Change
from snapshots import Store


@dataclass(frozen=True)
class Endpoint:
    """How an action reaches one copy of a target: environment variables, plus a DSN for SQL actions."""

    env: Mapping[str, str]
    exclusive_env: Mapping[str, str] = field(default_factory=dict)  # only when it is the plan's one target of its kind
    dsn: str | None = None
    secrets: tuple[str, ...] = ()  # values to redact from anything shadow writes


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

    def changes(self) -> list[Change]:
        """What the action changed: pristine copy → this copy."""

    def check(self, query: str) -> Any:
        """Run an expectation's check query on the copy; return its single value."""

    def observe(self) -> dict[str, Any]: ...


class Target(Protocol):
    """One production resource named in a plan."""

    name: str
    kind: str

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

    def restore(self, checkpoint: Checkpoint, store: Store) -> None:
        """Put production back to the checkpoint. Callers then call :meth:`verify_restored`."""

    def verify_restored(self, checkpoint: Checkpoint) -> list[str]:
        """How production differs from the checkpoint now; empty when it observes equal."""

    def execute_sql(self, endpoint: Endpoint, statements: list[Any], timeout: float,
                    trace: list[dict[str, Any]] | None = None, tag: str = "") -> str:
        """Run an SQL action's statements on ``endpoint``; return how ("transaction" | "autocommit"). ``tag``
        names the sessions that run them, for :meth:`end_sessions`."""

    def end_sessions(self, tag: str) -> int:
        """End what the resource still runs for a killed run's action (its sessions named ``tag``) and wait until
        it has stopped; return how many there were. Kinds with nothing that outlives a client return 0."""


class Kind(Protocol):
    name: str
    change_ops: tuple[str, ...]  # the ops and kinds its change addresses use, for validating expectations
    change_kinds: tuple[str, ...]

    def validate(self, spec: Mapping[str, Any]) -> Iterator[tuple[str | None, str]]:
        """(key, problem) for every problem in a target's plan settings."""

    def target(self, name: str, spec: Mapping[str, Any], settings: Any) -> Target: ...


class Registry(dict[str, Kind]):
    def register(self, kind: Kind) -> None:
        if kind.name in self:
            raise ValueError(f"a target kind named {kind.name!r} is already registered")
        self[kind.name] = kind


REGISTRY = Registry()


def _load() -> None:
    from adapters import git, postgres, s3

    REGISTRY.register(postgres.KIND)
    REGISTRY.register(s3.KIND)
    REGISTRY.register(git.KIND)


_load()
