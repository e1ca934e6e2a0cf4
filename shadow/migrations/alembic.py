"""``shadow alembic``: an Alembic project's pending revisions rehearsed one by one on production's copy, then a
round trip that proves the downgrades leave no trace in the schema *or the data*.

Why a verb and not a plan recipe: a plan has one action and one change set; an upgrade of several revisions needs
one change set, one set of expectations and one lock trace *per revision*, each judged on the state the revisions
before it left — and a recipe would have the user write one plan per revision by hand.

- **Which revisions**: from production's ``alembic_version`` (read-only; none: ``base``) to ``--to`` (``head``).
- **Per revision**: a working copy of production (``pg_dump`` → ``pg_restore`` into a throwaway server) is the
  "production" of an ordinary ``shadow plan`` whose action is the revision alone — its SQL rendered by Alembic's
  offline mode, so shadow analyses and runs it statement by statement (findings, lock trace, the revision's
  name on both), or, for a revision that cannot be rendered offline (it reads data through its connection),
  ``alembic upgrade REV`` as a command on the shadow. The revision's expectations are the module variable
  ``shadow_expect`` in its file (a plan's ``expect`` for the database: ``must``, ``may``, ``rows``, ``checks``);
  without one, any change may happen and only findings and the rehearsal itself can fail it. Alembic's own
  bookkeeping (``alembic_version``) is always allowed. After its rehearsal the revision is run on the working copy
  for real, so that the next revision starts where it would in production.
- **Round trip**: one more ``shadow plan`` on production itself: ``alembic upgrade TO`` and then ``alembic
  downgrade START`` on the shadow, expecting *no* change: whatever a downgrade left behind — a column, a row
  whose values an upgrade changed and its downgrade did not restore (with the row's key and values) — is an
  unexpected change, named.

Production is only read. Cost: a dump of production, plus a checkpoint of the working copy per revision.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shadow.errors import BadInput, InfrastructureError, PlanError
from shadow.result import RunResult
from shadow.session import Progress, quiet
from shadow.settings import Settings

BOOKKEEPING = ["* rows *alembic_version", "add table *alembic_version"]
RUNNER = "shadow.migrations.alembic_run"


@dataclass
class Step:
    revision: str
    message: str
    mode: str  # "sql": rendered offline and run by shadow statement by statement · "online": `alembic upgrade`
    result: RunResult
    expect_source: str  # where its expectations came from

    @property
    def passed(self) -> bool:
        return self.result.passed and self.result.outcome.value in ("passed", "awaiting_approval")


@dataclass
class AlembicRun:
    config: str
    start: str | None
    to: str
    steps: list[Step] = field(default_factory=list)
    not_rehearsed: list[str] = field(default_factory=list)  # revisions after one that failed to run
    round_trip: RunResult | None = None

    @property
    def passed(self) -> bool:
        trip = self.round_trip is None or (self.round_trip.passed and self.round_trip.outcome.value == "passed")
        return all(s.passed for s in self.steps) and not self.not_rehearsed and trip

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config, "start": self.start, "to": self.to, "passed": self.passed,
            "revisions": [{"revision": s.revision, "message": s.message, "mode": s.mode, "passed": s.passed,
                           "expect": s.expect_source, "run": s.result.to_dict()} for s in self.steps],
            "not_rehearsed": self.not_rehearsed,
            "round_trip": self.round_trip.to_dict() if self.round_trip else None,
        }


def rehearse(config_path: str | Path, dsn: str, settings: Settings, to: str = "head", round_trip: bool = True,
             progress: Progress = quiet) -> AlembicRun:
    """Rehearse production's pending revisions one by one, then the round trip (see the module docstring)."""
    from shadow import run

    config_path = Path(config_path).absolute()
    if not config_path.is_file():
        raise BadInput(f"{config_path}: no such Alembic config file (pass -c alembic.ini)")
    script = _script(config_path)
    start = _current_revision(dsn)
    revisions = _path(script, start, to, config_path)
    out = AlembicRun(str(config_path), start, to)
    folder = settings.state_dir / "alembic" / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    progress("info", f"alembic: {len(revisions)} revision(s) from {start or 'base'} to {to}")
    if revisions:
        with _working_copy(dsn, progress) as (copy_dsn, _server):
            for i, rev in enumerate(revisions):
                step = _rehearse_one(rev, config_path, copy_dsn, settings, folder / rev.revision, progress)
                out.steps.append(step)
                progress("info", f"revision {rev.revision} ({step.message}): "
                                 f"{'passed' if step.passed else 'FAILED'}")
                moved = _alembic(config_path, copy_dsn, "upgrade", rev.revision)
                if moved.returncode != 0:
                    out.not_rehearsed = [r.revision for r in revisions[i + 1:]]
                    if out.not_rehearsed:
                        progress("warn", f"revision {rev.revision} does not run, so {', '.join(out.not_rehearsed)} "
                                         "were not rehearsed")
                    break
    if round_trip and revisions and not out.not_rehearsed:
        trip_dir = folder / "round-trip"
        trip_dir.mkdir(parents=True, exist_ok=True)
        back = start or "base"
        may = [] if start else list(BOOKKEEPING)  # from base, Alembic leaves its (empty) version table
        plan_file = _write_plan(trip_dir, dsn, {"command": _runner_command(config_path, "roundtrip", to, back),
                                                "timeout": "30m"}, {"may": may})
        progress("info", f"round trip: upgrade {to}, downgrade {back}, on a shadow of production")
        out.round_trip = run.plan(plan_file, settings)
    return out


def pending(config_path: str | Path, dsn: str, to: str = "head") -> list[str]:
    """The revisions :func:`rehearse` would rehearse, oldest first (production only read)."""
    config_path = Path(config_path).absolute()
    if not config_path.is_file():
        raise BadInput(f"{config_path}: no such Alembic config file")
    return [r.revision for r in _path(_script(config_path), _current_revision(dsn), to, config_path)]


def _rehearse_one(rev: Any, config_path: Path, copy_dsn: str, settings: Settings, folder: Path,
                  progress: Progress) -> Step:
    from shadow import run

    folder.mkdir(parents=True, exist_ok=True)
    base = rev.down_revision if isinstance(rev.down_revision, str) else None
    rendered = _alembic(config_path, copy_dsn, "sql", f"{base or 'base'}:{rev.revision}" if base else rev.revision)
    action: dict[str, Any]
    if rendered.returncode == 0 and rendered.stdout.strip():
        sql_file = folder / f"{rev.revision}.sql"
        sql_file.write_text(f"-- alembic revision {rev.revision}: {_message(rev)}\n" + _strip_transaction(rendered.stdout))
        action, mode = {"sql": sql_file.name, "timeout": "30m"}, "sql"
    else:
        action = {"command": _runner_command(config_path, "upgrade", rev.revision), "timeout": "30m"}
        mode = "online"
        progress("info", f"revision {rev.revision} cannot be rendered as SQL offline; it runs as `alembic upgrade`")
    expect, source = _expectations(rev)
    plan_file = _write_plan(folder, copy_dsn, action, expect)
    try:
        result = run.plan(plan_file, settings)
    except PlanError as exc:
        raise BadInput(f"{rev.path}: shadow_expect: {exc}") from None
    return Step(rev.revision, _message(rev), mode, result, source)


def _expectations(rev: Any) -> tuple[dict[str, Any], str]:
    declared = getattr(rev.module, "shadow_expect", None)
    if declared is None:
        return {"may": ["* * *"]}, "none (any change may happen)"
    if not isinstance(declared, dict):
        raise BadInput(f"{rev.path}: shadow_expect must be a mapping like a plan's expect for one database "
                       "({must, may, rows, checks})")
    expect = dict(declared)
    expect["may"] = list(expect.get("may") or []) + BOOKKEEPING
    return expect, f"{Path(rev.path).name}: shadow_expect"


def _write_plan(folder: Path, dsn: str, action: dict[str, Any], expect: dict[str, Any]) -> Path:
    doc = {"version": 1, "targets": {"app": {"kind": "postgres", "dsn": dsn}}, "action": action,
           "expect": {"app": expect}}
    path = folder / "shadow.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def _runner_command(config_path: Path, verb: str, *revisions: str) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in (sys.executable, "-m", RUNNER, "-c", str(config_path), verb, *revisions))


def _alembic(config_path: Path, dsn: str, verb: str, *revisions: str) -> subprocess.CompletedProcess[str]:
    import os

    env = {**os.environ, "DATABASE_URL": dsn}
    return subprocess.run([sys.executable, "-m", RUNNER, "-c", str(config_path), verb, *revisions],
                          capture_output=True, text=True, env=env, cwd=config_path.parent)


def _strip_transaction(sql: str) -> str:
    """Alembic's offline script without its BEGIN/COMMIT: shadow runs an SQL action in one transaction itself."""
    keep = [line for line in sql.splitlines() if line.strip().upper() not in ("BEGIN;", "COMMIT;")]
    return "\n".join(keep) + "\n"


def _message(rev: Any) -> str:
    return str(rev.doc or "").strip().splitlines()[0] if rev.doc else ""


def _script(config_path: Path) -> Any:
    try:
        from alembic.config import Config
        from alembic.script import ScriptDirectory
    except ImportError as exc:
        raise BadInput("shadow alembic needs Alembic installed (pip install alembic)") from exc
    if str(config_path.parent) not in sys.path:  # prepend_sys_path of the project, for its revisions' imports
        sys.path.insert(0, str(config_path.parent))
    try:
        return ScriptDirectory.from_config(Config(str(config_path)))
    except Exception as exc:  # noqa: BLE001 - alembic's own errors (no script_location, bad files)
        raise BadInput(f"{config_path}: Alembic cannot read this project: {exc}") from None


def _path(script: Any, start: str | None, to: str, config_path: Path) -> list[Any]:
    """The revisions from ``start`` (exclusive) up to ``to``, oldest first; one line of history only."""
    heads = script.get_heads()
    if to == "head" and len(heads) != 1:
        raise BadInput(f"{config_path}: {len(heads)} heads ({', '.join(heads)}): name one with --to")
    try:
        revisions = list(script.iterate_revisions(to, start or "base"))
    except Exception as exc:  # noqa: BLE001 - alembic.util.CommandError and friends
        raise BadInput(f"{config_path}: cannot go from {start or 'base'} to {to}: {exc}") from None
    revisions.reverse()
    if any(isinstance(r.down_revision, tuple) for r in revisions):
        raise BadInput(f"{config_path}: merge revisions are not rehearsed one by one yet")
    return revisions


def _current_revision(dsn: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SET default_transaction_read_only = on")
            found = conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()
            if not found or not found[0]:
                return None
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except psycopg.Error as exc:
        from adapters.postgres import dsn as dsnlib

        raise InfrastructureError(f"cannot read production's alembic_version at {dsnlib.redact(dsn)}: "
                                  f"{str(exc).strip().splitlines()[0]}") from None
    if len(rows) > 1:
        raise BadInput(f"production is at {len(rows)} Alembic heads at once; rehearse one line of history")
    return str(rows[0][0]) if rows else None


class _working_copy:
    """A throwaway server holding a copy of production (``pg_dump`` → ``pg_restore``, no owners or grants):
    the "production" each revision is rehearsed against, moved on one revision at a time."""

    def __init__(self, dsn: str, progress: Progress) -> None:
        self.dsn, self.progress = dsn, progress
        self.server: Any = None
        self.tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> tuple[str, Any]:
        import psycopg

        from adapters.postgres.binaries import binaries_for
        from adapters.postgres.cluster import LocalCluster

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            major = conn.info.server_version // 10000
        tools = binaries_for(major)
        self.tmp = tempfile.TemporaryDirectory(prefix="shadow-alembic-")
        dump = Path(self.tmp.name) / "production.dump"
        self.progress("info", "alembic: copying production for the revision-by-revision rehearsal")
        done = subprocess.run([*tools.argv("pg_dump", [dump.parent]), "-Fc", "--no-owner", "--no-acl", "-f",
                               str(dump), self.dsn], capture_output=True, text=True)
        if done.returncode != 0:
            raise InfrastructureError(f"pg_dump of production failed: {done.stderr.strip()[:300]}")
        self.server = LocalCluster(label="alembic-copy", binaries=tools).start()
        try:
            copy = self.server.create_database("production_copy")
            done = subprocess.run([*tools.argv("pg_restore", [dump.parent]), "--no-owner", "--no-acl", "-d", copy,
                                   str(dump)], capture_output=True, text=True)
            if done.returncode != 0:
                raise InfrastructureError(f"restoring production's copy failed: {done.stderr.strip()[:300]}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return copy, self.server

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()
        if self.tmp is not None:
            self.tmp.cleanup()
