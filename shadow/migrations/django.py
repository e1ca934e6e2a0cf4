"""``shadow django``: a Django project's unapplied migrations rehearsed one by one on production's copy, then a
round trip (:mod:`shadow.migrations.steps`).

- **Which migrations**: ``manage.py showmigrations --plan`` on the working copy (production's state, never
  production): the unapplied ones, in the order ``migrate`` would apply them, across apps.
- **Per migration**: its SQL from ``manage.py sqlmigrate APP NAME`` — unless it has a ``RunPython`` operation,
  which only running can show: then ``manage.py migrate APP NAME`` as a command on the shadow. Expectations from
  ``shadow_expect`` in the migration file (read with :mod:`ast`, never imported by shadow); ``django_migrations``
  always allowed.
- **Round trip**: ``manage.py migrate`` up to the last one, then ``manage.py migrate APP START`` (``zero`` for an
  app with nothing applied) for each app, last migrated first — on a shadow of production, expecting no change.

The project's settings must read the database from ``$DATABASE_URL`` (shadow points it at the working copy and at
the shadow); commands run with the Python running shadow.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from shadow.errors import BadInput, InfrastructureError
from shadow.migrations.steps import Migration, MigrationRun, rehearse_steps
from shadow.session import Progress, quiet
from shadow.settings import Settings

BOOKKEEPING = ["* rows *django_migrations", "add table *django_migrations", "alter sequence *django_migrations*"]
# What `migrate` itself writes after every run (the post_migrate signal of django.contrib.contenttypes and .auth):
# content types and permissions of the models it saw, never removed by migrating back. Not the project's data.
POST_MIGRATE = ["* rows *django_content_type", "alter sequence *django_content_type*",
                "* rows *auth_permission", "alter sequence *auth_permission*"]
PLAN_LINE = re.compile(r"^\[(?P<done>[ X])\]\s+(?P<app>[\w]+)\.(?P<name>\S+)")


class DjangoTool:
    name = "django"
    bookkeeping = BOOKKEEPING
    online_bookkeeping = POST_MIGRATE  # what `manage.py migrate` writes besides the migration

    def __init__(self, manage: Path) -> None:
        self.manage = manage
        self.project = str(manage)
        self.starts: dict[str, str] = {}  # app → its last applied migration ("zero": none)

    def pending(self, copy_dsn: str) -> tuple[str | None, list[Migration]]:
        done = self._manage(copy_dsn, "showmigrations", "--plan")
        if done.returncode != 0:
            raise BadInput(f"{self.manage}: `manage.py showmigrations --plan` failed: {_last_line(done.stderr)}")
        applied: dict[str, str] = {}
        out: list[Migration] = []
        for line in done.stdout.splitlines():
            found = PLAN_LINE.match(line.strip())
            if not found:
                continue
            app, name = found["app"], found["name"]
            if found["done"] == "X":
                applied[app] = name
            else:
                out.append(self._migration(app, name))
        apps = {m.id.split(".", 1)[0] for m in out}
        self.starts = {app: applied.get(app, "zero") for app in apps}
        start = ", ".join(f"{app}.{self.starts[app]}" for app in sorted(apps)) or None
        return start, out

    def render(self, copy_dsn: str, migration: Migration, previous: str | None) -> str | None:
        app, name = migration.id.split(".", 1)
        done = self._manage(copy_dsn, "sqlmigrate", app, name)
        if done.returncode != 0 or "Raw Python operation" in done.stdout:
            return None  # RunPython: only running it shows what it does
        return done.stdout

    def command(self, migration: Migration) -> str:
        return self._command("migrate", *migration.id.split(".", 1))


    def run(self, copy_dsn: str, migration: Migration) -> subprocess.CompletedProcess[str]:
        return self._manage(copy_dsn, "migrate", *migration.id.split(".", 1))

    def round_trip(self, start: str | None, migrations: list[Migration]) -> tuple[str, list[str]]:
        last_first = list(dict.fromkeys(m.id.split(".", 1)[0] for m in reversed(migrations)))
        steps = [self._command("migrate")] + [self._command("migrate", app, self.starts[app]) for app in last_first]
        # Django's bookkeeping is not the project's data: its id sequence moves on (and from nothing, its emptied
        # table stays); any trace in the project's own tables fails the round trip
        return " && ".join(steps), BOOKKEEPING + POST_MIGRATE

    def _migration(self, app: str, name: str) -> Migration:
        path = self.manage.parent / app / "migrations" / f"{name}.py"
        expect, message = _read_migration(path) if path.is_file() else (None, "")
        return Migration(f"{app}.{name}", message or name, str(path), expect)

    def _command(self, *args: str) -> str:
        return " ".join(shlex.quote(a) for a in (sys.executable, str(self.manage), *args, "--no-color", "-v", "1"))

    def _manage(self, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DATABASE_URL": dsn}
        return subprocess.run([sys.executable, str(self.manage), *args, "--no-color"], capture_output=True, text=True,
                              env=env, cwd=self.manage.parent)


def pending(manage: str | Path, dsn: str) -> list[str]:
    """The migrations :func:`rehearse` would rehearse, in order (``showmigrations`` on production: it only reads)."""
    path = Path(manage).absolute()
    if not path.is_file():
        raise BadInput(f"{path}: no such manage.py")
    return [m.id for m in DjangoTool(path).pending(dsn)[1]]


def _read_migration(path: Path) -> tuple[Any, str]:
    """(``shadow_expect``, the first line of the docstring) of a migration file, without importing it."""
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError) as exc:
        raise BadInput(f"{path}: cannot read this migration: {exc}") from None
    expect = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "shadow_expect"
                                                for t in node.targets):
            try:
                expect = ast.literal_eval(node.value)
            except ValueError:
                raise BadInput(f"{path}:{node.lineno}: shadow_expect must be a literal (a dict of lists, "
                               "strings and numbers)") from None
    doc = ast.get_docstring(tree) or ""
    return expect, doc.strip().splitlines()[0] if doc.strip() else ""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def rehearse(manage: str | Path, dsn: str, settings: Settings, round_trip: bool = True,
             progress: Progress = quiet) -> MigrationRun:
    """Rehearse production's unapplied migrations one by one, then the round trip (see the module docstring)."""
    path = Path(manage).absolute()
    if not path.is_file():
        raise BadInput(f"{path}: no such manage.py (pass --manage path/to/manage.py)")
    try:
        import django  # noqa: F401 - the project's commands need it where shadow runs
    except ImportError:
        raise InfrastructureError("shadow django needs Django installed in the Python that runs shadow") from None
    return rehearse_steps(DjangoTool(path), dsn, settings, "the last migration", round_trip, progress)
