"""The ``shadow`` command line: a thin layer over :mod:`shadow.run`; what it prints is :mod:`shadow.cli_output`.

Exit codes: 0 expectations hold / applied / restored · 1 expectations failed, apply refused or rolled back ·
2 bad input (plan, SQL, arguments) · 3 infrastructure failure (a target, binaries, disk). The CLI is the only place
that catches broadly (:mod:`shadow.cli_context`); ``--traceback`` shows what it caught.

The verbs live by theme — :mod:`shadow.cli_runs` (plan, apply, rollback …), :mod:`shadow.cli_records` (runs, show,
audit, gc), :mod:`shadow.cli_tools` (lint, demo, alembic, django), :mod:`shadow.cli_gateway` (mcp, agents) — on the
context, options and error mapping of :mod:`shadow.cli_context`; this module is the group that holds them and
:func:`main`.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from shadow import cli_gateway, cli_records, cli_runs, cli_tools
from shadow.cli_context import MAX_ERROR_CHARS as MAX_ERROR_CHARS
from shadow.cli_context import Ctx
from shadow.errors import EXIT_BAD_INPUT, cap


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--state-dir", envvar="SHADOW_STATE_DIR", default=None,
              help="Where journal, reports and checkpoints live [default: ./.shadow, or $SHADOW_STATE_DIR].")
@click.option("--traceback", "show_traceback", is_flag=True, help="Show the Python traceback of an error.")
@click.version_option(package_name="shadow")
@click.pass_context
def cli(click_ctx: click.Context, state_dir: str | None, show_traceback: bool) -> None:
    """shadow — rehearse a risky change on a disposable copy, check it against your expectations, then apply
    it to production or roll it back.

    \b
    Exit codes: 0 ok · 1 expectations failed / refused / rolled back · 2 bad input · 3 infrastructure failure.
    """
    click_ctx.obj = Ctx(state_dir, show_traceback)


for _verb in (cli_runs.plan_cmd, cli_runs.apply_cmd, cli_runs.prepare_warm_cmd, cli_runs.rollback_cmd,
              cli_runs.recover_cmd, cli_runs.approve_cmd, cli_records.runs_cmd, cli_records.audit_cmd,
              cli_records.gc_cmd, cli_records.show_cmd, cli_tools.demo_cmd, cli_tools.lint_cmd, cli_tools.alembic_cmd,
              cli_tools.django_cmd, cli_gateway.mcp_cmd, cli_gateway.agents_cmd):
    cli.add_command(_verb)


def _sigterm(_signum: int, _frame: Any) -> None:
    # Turn SIGTERM into KeyboardInterrupt so every `finally` and `__exit__` runs (shadows are removed,
    # an apply in progress is rolled back).
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        cli.main(args=argv, prog_name="shadow", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        click.echo(f"shadow: error: {cap(exc.format_message(), MAX_ERROR_CHARS)}{hint}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_BAD_INPUT)


if __name__ == "__main__":
    main()
