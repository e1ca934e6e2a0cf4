"""``shadow alembic``: an Alembic project's pending revisions rehearsed one by one on production's copy, then a
round trip that proves the downgrades leave no trace in the schema *or the data*.

Why a verb and not a plan recipe: a plan has one action and one change set; an upgrade of several revisions needs
one change set, one set of expectations and one lock trace *per revision*, each judged on the state the revisions
before it left — and a recipe would have the user write one plan per revision by hand.

- **Which revisions**: from production's ``alembic_version`` (read-only; none: ``base``) to ``--to`` (``head``).
- **Per revision** (:mod:`shadow.migrations.steps`): its SQL rendered by Alembic's offline mode (``alembic
  upgrade PREV:REV --sql``), or — for a revision that cannot be rendered offline (it reads data through its
  connection) — ``alembic upgrade REV`` as a command; expectations from ``shadow_expect`` in the revision file;
  ``alembic_version`` always allowed.
- **Round trip**: ``alembic upgrade TO`` then ``alembic downgrade START`` on a shadow of production, expecting no
  change.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from shadow.errors import BadInput, InfrastructureError
from shadow.migrations.steps import Migration, MigrationRun, rehearse_steps
from shadow.session import Progress, quiet
from shadow.settings import Settings

RUNNER = "shadow.migrations.alembic_run"
BOOKKEEPING = ["* rows *alembic_version", "add table *alembic_version"]


class AlembicTool:
    name = "alembic"
    bookkeeping = BOOKKEEPING
    online_bookkeeping: list[str] = []

    def __init__(self, config_path: Path, to: str) -> None:
        self.config_path, self.to = config_path, to
        self.project = str(config_path)
        self.script = _script(config_path)

    def pending(self, copy_dsn: str) -> tuple[str | None, list[Migration]]:
        start = _current_revision(copy_dsn)
        return start, [_migration(r) for r in _path(self.script, start, self.to, self.config_path)]

    def render(self, copy_dsn: str, migration: Migration, previous: str | None) -> str | None:
        done = self._alembic(copy_dsn, "sql", f"{previous}:{migration.id}" if previous else migration.id)
        return done.stdout if done.returncode == 0 else None

    def command(self, migration: Migration) -> str:
        return _runner_command(self.config_path, "upgrade", migration.id)

    def run(self, copy_dsn: str, migration: Migration) -> subprocess.CompletedProcess[str]:
        return self._alembic(copy_dsn, "upgrade", migration.id)

    def round_trip(self, start: str | None, migrations: list[Migration]) -> tuple[str, list[str]]:
        # from base, Alembic leaves its (empty) version table behind
        return (_runner_command(self.config_path, "roundtrip", migrations[-1].id, start or "base"),
                [] if start else list(BOOKKEEPING))

    def _alembic(self, dsn: str, verb: str, *revisions: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DATABASE_URL": dsn}
        return subprocess.run([sys.executable, "-m", RUNNER, "-c", str(self.config_path), verb, *revisions],
                              capture_output=True, text=True, env=env, cwd=self.config_path.parent)


def rehearse(config_path: str | Path, dsn: str, settings: Settings, to: str = "head", round_trip: bool = True,
             progress: Progress = quiet) -> MigrationRun:
    """Rehearse production's pending revisions one by one, then the round trip (see the module docstring)."""
    path = Path(config_path).absolute()
    if not path.is_file():
        raise BadInput(f"{path}: no such Alembic config file (pass -c alembic.ini)")
    return rehearse_steps(AlembicTool(path, to), dsn, settings, to, round_trip, progress)


def pending(config_path: str | Path, dsn: str, to: str = "head") -> list[str]:
    """The revisions :func:`rehearse` would rehearse, oldest first (production only read)."""
    path = Path(config_path).absolute()
    if not path.is_file():
        raise BadInput(f"{path}: no such Alembic config file")
    return [m.id for m in AlembicTool(path, to).pending(dsn)[1]]


def _migration(rev: Any) -> Migration:
    message = str(rev.doc or "").strip().splitlines()[0] if rev.doc else ""
    return Migration(rev.revision, message, str(rev.path), getattr(rev.module, "shadow_expect", None))


def _runner_command(config_path: Path, verb: str, *revisions: str) -> str:
    return " ".join(shlex.quote(a) for a in (sys.executable, "-m", RUNNER, "-c", str(config_path), verb, *revisions))


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

        raise InfrastructureError(f"cannot read alembic_version at {dsnlib.redact(dsn)}: "
                                  f"{str(exc).strip().splitlines()[0]}") from None
    if len(rows) > 1:
        raise BadInput(f"the database is at {len(rows)} Alembic heads at once; rehearse one line of history")
    return str(rows[0][0]) if rows else None
