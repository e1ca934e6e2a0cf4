"""A loaded plan: frozen objects, built only from a file every problem of which was reported first."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 30 * 60.0


@dataclass(frozen=True)
class Comparison:
    op: str
    value: int

    def holds(self, actual: int) -> bool:
        return {
            "==": actual == self.value, "!=": actual != self.value, "<=": actual <= self.value,
            ">=": actual >= self.value, "<": actual < self.value, ">": actual > self.value,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.op} {self.value}" if self.op != "==" else str(self.value)


@dataclass(frozen=True)
class RowRule:
    table: str
    counts: Mapping[str, Comparison]  # inserted/updated/deleted → comparison; "unchanged" is all == 0
    line: int


@dataclass(frozen=True)
class Check:
    sql: str
    equals: Any
    line: int


@dataclass(frozen=True)
class ObjectRule:
    pattern: str  # a key glob within the target's bucket, e.g. "invoices/2026/*"
    counts: Mapping[str, Comparison]  # added/deleted/modified → comparison
    line: int


@dataclass(frozen=True)
class Expectation:
    must: tuple[str, ...] = ()
    may: tuple[str, ...] = ()
    rows: tuple[RowRule, ...] = ()
    checks: tuple[Check, ...] = ()
    objects: tuple[ObjectRule, ...] = ()
    declared: bool = False  # False: the plan says nothing about this target, so every change is unexpected
    files: tuple[ObjectRule, ...] = ()  # git targets: path globs ("k8s/**") with added/deleted/modified counts


@dataclass(frozen=True)
class TargetSpec:
    name: str
    kind: str
    options: Mapping[str, Any]
    line: int


@dataclass(frozen=True)
class Limits:
    """Resource limits of a container: the shadows' (``policy.limits``) or an isolated action's (``action.limits``)."""

    memory: str | None = None
    cpus: float | None = None
    pids: int | None = None


@dataclass(frozen=True)
class Action:
    sql_files: tuple[Path, ...] = ()  # each as the plan names it, from the plan's (resolved) folder: not resolved
    sql_display: tuple[str, ...] = ()
    outside_files: tuple[Path, ...] = ()  # the real paths of the SQL files that lie outside the plan's folder
    sql_target: str | None = None
    command: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    isolation: str = "process"  # process | container (the command runs in a container on an internal network)
    image: str | None = None  # the container image for isolation: container
    one_session: bool = False  # the SQL files run in one session (a SET in one holds in the next); lint reads so
    limits: Limits = field(default_factory=Limits)  # bounds of the isolated action's container (memory, cpus, pids)

    @property
    def kind(self) -> str:
        return "sql" if self.sql_files else "command"

    def describe(self) -> str:
        if not self.sql_files:
            return f"command: {self.command}"
        outside = ", ".join(map(str, self.outside_files))
        return "sql: " + ", ".join(self.sql_display) + (f" (outside the plan's folder: {outside})" if outside else "")


@dataclass(frozen=True)
class Policy:
    backend: str = "auto"
    limits: Limits = field(default_factory=Limits)
    max_lock: Mapping[str, float] = field(default_factory=dict)  # "ACCESS EXCLUSIVE" → seconds
    allow: tuple[Any, ...] = ()  # finding ids, or {id, file} to allow one only in matching files
    redact: tuple[str, ...] = ()  # column globs (`col`, `table.col`, `schema.table.col`) never shown in reports
    approval: str = "none"  # "required": `shadow plan` stops awaiting `shadow approve`; apply needs --run
    rehearse_rollback: bool = True  # restore each shadow from its checkpoint after the rehearsal and verify it
    drift: str = "scoped"  # "strict": any write to production since the checkpoint refuses the apply
    lock_timeout: float = 5.0  # how long an apply's statement waits for a lock before it gives up and retries
    lock_retries: int = 3  # how many times an apply that gave up waiting for a lock is tried again
    warm: float | None = None  # seconds a checkpoint's restored copy is kept after its last use (adapters.postgres.warm)


@dataclass(frozen=True)
class Plan:
    path: Path
    sha256: str
    targets: tuple[TargetSpec, ...]
    action: Action
    expect: Mapping[str, Expectation]
    policy: Policy
    state: Mapping[str, str] = field(default_factory=dict)  # `state: {url, store}` (shadow.plan.state)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def target(self, name: str) -> TargetSpec:
        return next(t for t in self.targets if t.name == name)
