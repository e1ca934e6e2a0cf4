"""The verbs beside a plan: ``lint`` (static findings on SQL files), ``demo``, and the migration tools' rehearsals
``alembic`` and ``django``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from shadow.cli_context import JSON_OPTION, QUIET_OPTION, Ctx, _guard, _progress
from shadow.cli_output import print_lint, print_migrations


@click.command("demo")
@click.option("--keep", is_flag=True, help="Leave the demo's production cluster running until Enter is pressed.")
@click.pass_obj
def demo_cmd(ctx: Ctx, keep: bool) -> None:
    """Run the demo: a throwaway local "production" database gets a safe migration applied and a destructive one
    refused. Needs PostgreSQL server binaries (or `pip install 'shadow[embedded]'`), no Docker."""
    from shadow import demo

    code = _guard(ctx, lambda: demo.run(ctx.settings, ctx.out, ctx.err, keep))
    sys.exit(code)


@click.command("lint")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--allow", "allow", multiple=True, metavar="ID",
              help="Allow a finding id (repeatable, or comma-separated).")
@JSON_OPTION
@click.pass_obj
def lint_cmd(ctx: Ctx, files: tuple[Path, ...], allow: tuple[str, ...], as_json: bool) -> None:
    """Static findings on SQL files, before anything runs (linted together, in the order given, like one SQL
    action's files).

    Exit 0 when no error-level finding remains after --allow, 1 when one does, 2 when the SQL does not parse.
    """
    from shadow import lint

    ids = [i.strip() for a in allow for i in a.split(",") if i.strip()]
    findings = _guard(ctx, lambda: lint.lint_files(list(files)))
    kept, allowed = _guard(ctx, lambda: lint.allowed(findings, ids))
    allowed_ids = {id(f) for f in allowed}
    if as_json:
        click.echo(json.dumps([f.to_dict() | {"allowed": id(f) in allowed_ids} for f in findings], indent=2))
    else:
        print_lint(ctx.out, findings, kept, allowed)
    sys.exit(1 if any(f.severity == "error" for f in kept) else 0)


def _migrations_done(ctx: Ctx, as_json: bool, rehearse: Callable[[], Any]) -> NoReturn:
    """Run a migration tool's rehearsal, print it (or its JSON), exit 0 when all passed, 1 when not."""
    done = _guard(ctx, rehearse)
    if as_json:
        click.echo(json.dumps(done.to_dict(), indent=2, default=str))
    else:
        print_migrations(ctx.out, done)
    sys.exit(0 if done.passed else 1)


@click.command("alembic")
@click.option("-c", "--config", "config_file", default="alembic.ini", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The Alembic project's config file.")
@click.option("--dsn", envvar="DATABASE_URL", required=True, metavar="DSN",
              help="Production's database (read only) [env: DATABASE_URL].")
@click.option("--to", "to", default="head", show_default=True, help="The revision to rehearse up to.")
@click.option("--no-round-trip", is_flag=True, help="Skip the upgrade-then-downgrade round trip.")
@JSON_OPTION
@QUIET_OPTION
@click.pass_obj
def alembic_cmd(ctx: Ctx, config_file: Path, dsn: str, to: str, no_round_trip: bool, as_json: bool,
                quiet: bool) -> None:
    """Rehearse production's pending Alembic revisions one by one on its copy — a change set, expectations
    (`shadow_expect` in the revision file), findings and lock trace per revision — then prove on a shadow that
    upgrading and downgrading back leaves no trace in schema or rows. Never writes to production.

    Exit 0 when every revision and the round trip pass, 1 when one does not.
    """
    from shadow.migrations import alembic

    _migrations_done(ctx, as_json, lambda: alembic.rehearse(config_file, dsn, ctx.settings, to, not no_round_trip,
                                                            _progress(ctx, quiet or as_json)))


@click.command("django")
@click.option("--manage", "manage", default="manage.py", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="The Django project's manage.py.")
@click.option("--dsn", envvar="DATABASE_URL", required=True, metavar="DSN",
              help="Production's database (read only) [env: DATABASE_URL].")
@click.option("--no-round-trip", is_flag=True, help="Skip the migrate-then-migrate-back round trip.")
@JSON_OPTION
@QUIET_OPTION
@click.pass_obj
def django_cmd(ctx: Ctx, manage: Path, dsn: str, no_round_trip: bool, as_json: bool, quiet: bool) -> None:
    """Rehearse production's unapplied Django migrations one by one on its copy — a change set, expectations
    (`shadow_expect` in the migration file), findings and lock trace per migration — then prove on a shadow that
    migrating forward and back leaves no trace in schema or rows. The project's settings read $DATABASE_URL.
    Never writes to production.

    Exit 0 when every migration and the round trip pass, 1 when one does not.
    """
    from shadow.migrations import django

    _migrations_done(ctx, as_json, lambda: django.rehearse(manage, dsn, ctx.settings, not no_round_trip,
                                                           _progress(ctx, quiet or as_json)))
