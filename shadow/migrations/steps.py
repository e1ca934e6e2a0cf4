"""A migration tool's pending migrations rehearsed one at a time on production's copy, then a round trip.

The tools (:mod:`shadow.migrations.alembic`, :mod:`shadow.migrations.django`) say which migrations are pending,
how to render one as SQL (when it can be: offline mode, ``sqlmigrate``), how to run one, and how to go up and
back down again; this module does the rest, the same for every tool:

- **Per migration**: a working copy of production (``pg_dump`` → ``pg_restore`` into a throwaway server, no owners
  or grants) is the "production" of an ordinary ``shadow plan`` whose action is that migration alone — its SQL,
  which shadow analyses and runs statement by statement (findings and a lock trace naming the migration's file and
  line), or, when it cannot be rendered (it runs Python against the data), the tool's own command on the shadow.
  Its expectations are the module variable ``shadow_expect`` in the migration's file (a plan's ``expect`` for the
  database: ``must``, ``may``, ``rows``, ``checks``); without one any change may happen and only findings and the
  rehearsal itself can fail it. The tool's bookkeeping table is always allowed. Then the migration runs on the
  working copy for real, so the next one starts where it would in production.
- **Round trip**: one more ``shadow plan``, on production itself: migrate up, then back down to where production
  is, on the shadow, expecting *no* change — whatever a reverse migration left behind (a column, rows whose values
  the forward one changed and the reverse did not restore, with their keys and values) is an unexpected change.

Production is only read. Cost: a dump of production, plus a checkpoint of the (small, throwaway) working copy per
migration; the working copy needs PostgreSQL's local binaries.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from shadow.errors import BadInput, InfrastructureError, PlanError
from shadow.result import RunResult
from shadow.session import Progress
from shadow.settings import Settings

TIMEOUT = "30m"
DSN_VARIABLE = "SHADOW_MIGRATIONS_DSN"


def with_database(settings: Settings, dsn: str) -> Settings:
    """``settings`` whose environment names the database the plans of :func:`write_plan` are for."""
    import dataclasses

    return dataclasses.replace(settings, environ={**settings.environ, DSN_VARIABLE: dsn})


@dataclass(frozen=True)
class Migration:
    id: str  # alembic: the revision · django: "app.name"
    message: str
    path: str  # its file
    expect: Any = None  # its ``shadow_expect``, if it has one


class Tool(Protocol):
    name: str  # "alembic" | "django"
    bookkeeping: list[str]  # change addresses of the tool's own record keeping, always allowed
    online_bookkeeping: list[str]  # and what its own command writes besides, when a migration runs as one
    project: str  # the config file / manage.py

    def pending(self, copy_dsn: str) -> tuple[str | None, list[Migration]]:
        """(where the database is — None: nothing applied yet, the pending migrations in order)."""

    def render(self, copy_dsn: str, migration: Migration, previous: str | None) -> str | None:
        """The migration's SQL, or None when it cannot be rendered without running it."""

    def command(self, migration: Migration) -> str:
        """A shell command that runs the migration on ``$DATABASE_URL``."""

    def run(self, copy_dsn: str, migration: Migration) -> subprocess.CompletedProcess[str]:
        """Run the migration on the working copy."""

    def round_trip(self, start: str | None, migrations: list[Migration]) -> tuple[str, list[str]]:
        """(a shell command that migrates up and back down to ``start`` on ``$DATABASE_URL``, what that may leave)."""


@dataclass
class Step:
    revision: str
    message: str
    mode: str  # "sql": rendered and run by shadow statement by statement · "online": the tool's own command
    result: RunResult
    expect_source: str  # where its expectations came from

    @property
    def passed(self) -> bool:
        return self.result.passed and self.result.outcome.value in ("passed", "awaiting_approval")


@dataclass
class MigrationRun:
    tool: str
    config: str
    start: str | None
    to: str
    steps: list[Step] = field(default_factory=list)
    not_rehearsed: list[str] = field(default_factory=list)  # migrations after one that failed to run
    round_trip: RunResult | None = None

    @property
    def passed(self) -> bool:
        trip = self.round_trip is None or (self.round_trip.passed and self.round_trip.outcome.value == "passed")
        return all(s.passed for s in self.steps) and not self.not_rehearsed and trip

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool, "config": self.config, "start": self.start, "to": self.to, "passed": self.passed,
            "revisions": [{"revision": s.revision, "message": s.message, "mode": s.mode, "passed": s.passed,
                           "expect": s.expect_source, "run": s.result.to_dict()} for s in self.steps],
            "not_rehearsed": self.not_rehearsed,
            "round_trip": self.round_trip.to_dict() if self.round_trip else None,
        }


def rehearse_steps(tool: Tool, dsn: str, settings: Settings, to: str, round_trip: bool,
                   progress: Progress) -> MigrationRun:
    """Rehearse production's pending migrations one by one, then the round trip (see the module docstring)."""
    from shadow import run

    folder = settings.state_dir / tool.name / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    with WorkingCopy(dsn, progress, tool.name) as copy_dsn:
        start, migrations = tool.pending(copy_dsn)
        out = MigrationRun(tool.name, tool.project, start, to)
        progress("info", f"{tool.name}: {len(migrations)} pending migration(s) from {start or 'the start'} to {to}")
        previous = start
        for i, migration in enumerate(migrations):
            step = _rehearse_one(tool, migration, previous, copy_dsn, settings, folder / _safe(migration.id),
                                 progress)
            out.steps.append(step)
            progress("info", f"{migration.id} ({step.message}): {'passed' if step.passed else 'FAILED'}")
            moved = tool.run(copy_dsn, migration)
            if moved.returncode != 0:
                out.not_rehearsed = [m.id for m in migrations[i + 1:]]
                if out.not_rehearsed:
                    progress("warn", f"{migration.id} does not run, so {', '.join(out.not_rehearsed)} were not "
                                     "rehearsed")
                break
            previous = migration.id
    if round_trip and migrations and not out.not_rehearsed:
        trip_dir = folder / "round-trip"
        trip_dir.mkdir(parents=True, exist_ok=True)
        command, may = tool.round_trip(start, migrations)
        plan_file = write_plan(trip_dir, {"command": command, "timeout": TIMEOUT}, {"may": may})
        progress("info", f"round trip: up to {migrations[-1].id}, back to {start or 'the start'}, on a shadow of "
                         "production")
        out.round_trip = run.plan(plan_file, with_database(settings, dsn))
    return out


def _rehearse_one(tool: Tool, migration: Migration, previous: str | None, copy_dsn: str, settings: Settings,
                  folder: Path, progress: Progress) -> Step:
    from shadow import run

    folder.mkdir(parents=True, exist_ok=True)
    sql = tool.render(copy_dsn, migration, previous)
    action: dict[str, Any]
    if sql is not None and sql.strip():
        sql_file = folder / f"{_safe(migration.id)}.sql"
        sql_file.write_text(f"-- {tool.name} migration {migration.id}: {migration.message}\n"
                            + strip_transaction(sql))
        action, mode = {"sql": sql_file.name, "timeout": TIMEOUT}, "sql"
    else:
        action, mode = {"command": tool.command(migration), "timeout": TIMEOUT}, "online"
        progress("info", f"{migration.id} cannot be rendered as SQL; it runs as the tool's own command")
    expect, source = expectations(migration, tool.bookkeeping + (tool.online_bookkeeping if mode == "online" else []))
    plan_file = write_plan(folder, action, expect)
    try:
        result = run.plan(plan_file, with_database(settings, copy_dsn))
    except PlanError as exc:
        raise BadInput(f"{migration.path}: shadow_expect: {exc}") from None
    return Step(migration.id, migration.message, mode, result, source)


def expectations(migration: Migration, bookkeeping: list[str]) -> tuple[dict[str, Any], str]:
    declared = migration.expect
    if declared is None:
        return {"may": ["* * *"]}, "none (any change may happen)"
    if not isinstance(declared, dict):
        raise BadInput(f"{migration.path}: shadow_expect must be a mapping like a plan's expect for one database "
                       "({must, may, rows, checks})")
    expect = dict(declared)
    expect["may"] = list(expect.get("may") or []) + bookkeeping
    return expect, f"{Path(migration.path).name}: shadow_expect"


def write_plan(folder: Path, action: dict[str, Any], expect: dict[str, Any]) -> Path:
    """A plan for the database named by ``$SHADOW_MIGRATIONS_DSN`` (:func:`with_database`): the file, kept with the
    run, holds no password."""
    doc = {"version": 1, "targets": {"app": {"kind": "postgres", "dsn": "${" + DSN_VARIABLE + "}"}},
           "action": action, "expect": {"app": expect}}
    path = folder / "shadow.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def strip_transaction(sql: str) -> str:
    """A rendered script without its BEGIN/COMMIT: shadow runs an SQL action in one transaction itself."""
    keep = [line for line in sql.splitlines() if line.strip().upper() not in ("BEGIN;", "COMMIT;")]
    return "\n".join(keep) + "\n"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)


class WorkingCopy:
    """A throwaway server holding a copy of production (``pg_dump`` → ``pg_restore``, no owners or grants): the
    "production" each migration is rehearsed against, moved on one migration at a time."""

    def __init__(self, dsn: str, progress: Progress, label: str) -> None:
        self.dsn, self.progress, self.label = dsn, progress, label
        self.server: Any = None
        self.tmp: Path | None = None

    def __enter__(self) -> str:
        import psycopg

        from adapters import tempdirs
        from adapters.postgres import dsn as dsnlib
        from adapters.postgres.binaries import binaries_for
        from adapters.postgres.cluster import LocalCluster

        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
                major = conn.info.server_version // 10000
        except psycopg.Error as exc:
            reason = dsnlib.connect_error(exc, dsnlib.parse(self.dsn).get("password"))
            raise InfrastructureError(f"cannot connect to production at {dsnlib.redact(self.dsn)}: {reason}") from None
        tools = binaries_for(major)
        # Labelled with this process, so that `shadow gc` removes production's dump if this process is killed.
        self.tmp = tempdirs.make("dump", None, f"{self.label} working copy")
        dump = self.tmp / "production.dump"
        self.progress("info", f"{self.label}: copying production for the migration-by-migration rehearsal")
        done = subprocess.run([*tools.argv("pg_dump", [dump.parent]), "-Fc", "--no-owner", "--no-acl", "-f",
                               str(dump), self.dsn], capture_output=True, text=True)
        if done.returncode != 0:
            self.__exit__()
            raise InfrastructureError(f"pg_dump of production failed: {done.stderr.strip()[:300]}")
        self.server = LocalCluster(label=f"{self.label}-copy", binaries=tools).start()
        try:
            copy = self.server.create_database("production_copy")
            done = subprocess.run([*tools.argv("pg_restore", [dump.parent]), "--no-owner", "--no-acl", "-d", copy,
                                   str(dump)], capture_output=True, text=True)
            if done.returncode != 0:
                raise InfrastructureError(f"restoring production's copy failed: {done.stderr.strip()[:300]}")
        except BaseException:
            self.__exit__()
            raise
        return str(copy)

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
