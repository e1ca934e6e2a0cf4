"""The ``shadow`` command line: a thin layer over :mod:`shadow.run`; what it prints is :mod:`shadow.cli_output`.

Exit codes: 0 expectations hold / applied / restored · 1 expectations failed, apply refused or rolled back ·
2 bad input (plan, SQL, arguments) · 3 infrastructure failure (a target, binaries, disk). This is the only place
that catches broadly; ``--traceback`` shows what it caught.
"""

from __future__ import annotations

import importlib
import json
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import click
from rich.console import Console
from rich.markup import escape

from shadow.cli_output import print_migrations, print_gc, print_lint, print_result, print_runs
from shadow.errors import EXIT_BAD_INPUT, EXIT_INFRA, ShadowError, cap
from shadow.locks import DEFAULT_LOCK_TIMEOUT
from shadow.settings import Settings


class _OnFirstUse:
    """A module imported when first used, not when the CLI starts: `shadow --help` and `shadow lint` never pay for
    the orchestrator (and, through the registry, no kind's libraries until a plan names the kind)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)


if TYPE_CHECKING:
    from shadow import run as runmod
else:
    runmod = _OnFirstUse("shadow.run")

PLAN_OPTION = click.option("-f", "--file", "plan_file", default="shadow.yaml", show_default=True,
                           type=click.Path(dir_okay=False, path_type=Path), help="The plan file.")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (for machines).")


def _remember_quiet(click_ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx = click_ctx.find_object(Ctx)
    if ctx is not None:
        ctx.quiet = value
    return value


QUIET_OPTION = click.option("-q", "--quiet", is_flag=True, callback=_remember_quiet,
                            help="Only the verdict and where the report is: no progress, no tables.")
LOCK_TIMEOUT_OPTION = click.option(
    "--lock-timeout", type=click.FloatRange(min=0), default=DEFAULT_LOCK_TIMEOUT, show_default=True,
    metavar="SECONDS", help="How long to wait for another run holding a target's lock; 0 refuses at once (exit 3).")


class Ctx:
    def __init__(self, state_dir: str | None, show_traceback: bool) -> None:
        self.settings = Settings.from_env(state_dir=state_dir)
        self.traceback = show_traceback
        self.quiet = False
        # https://no-color.org: NO_COLOR set and not empty means no colour; nor when the stream is not a terminal.
        plain = bool(self.settings.environ.get("NO_COLOR"))
        self.err = Console(stderr=True, highlight=False, soft_wrap=True, color_system=_colours(sys.stderr, plain))
        self.out = Console(highlight=False, soft_wrap=True, color_system=_colours(sys.stdout, plain))


def _colours(stream: Any, plain: bool) -> Literal["auto"] | None:
    return None if plain or not stream.isatty() else "auto"


# Every error line is cut to this length: a message quoting a huge value must not become a huge line.
MAX_ERROR_CHARS = 2000


def _fail(ctx: Ctx, exc: BaseException, code: int) -> NoReturn:
    if ctx.traceback:
        traceback.print_exception(exc)
    ctx.err.print(f"[bold red]shadow: error:[/] {escape(cap(str(exc), MAX_ERROR_CHARS))}")
    sys.exit(code)


def _guard(ctx: Ctx, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ShadowError as exc:
        _fail(ctx, exc, exc.exit_code)
    except KeyboardInterrupt:
        ctx.err.print("[bold red]shadow: interrupted[/] (shadows were removed; see `shadow runs`)")
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the one broad catch: map to exit 3, never a bare traceback
        if ctx.traceback:
            traceback.print_exception(exc)
        ctx.err.print(f"[bold red]shadow: internal error:[/] {escape(type(exc).__name__)}: "
                      f"{escape(cap(str(exc), MAX_ERROR_CHARS))} "
                      "(run with --traceback for details)")
        sys.exit(EXIT_INFRA)


def _progress(ctx: Ctx, quiet: bool) -> runmod.Progress:
    started = time.monotonic()

    def show(event: str, text: str) -> None:
        if quiet:
            return
        style = {"start": "dim", "done": "green", "failed": "red", "info": "cyan"}.get(event, "")
        mark = {"start": "…", "done": "✓", "failed": "✗", "info": "•"}.get(event, " ")
        if event == "start":
            return  # only finished steps are printed; they carry the elapsed time
        ctx.err.print(f"[dim]{time.monotonic() - started:6.1f}s[/] [{style}]{mark} {escape(text)}[/]")
    return show


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


@cli.command("plan")
@PLAN_OPTION
@JSON_OPTION
@QUIET_OPTION
@click.pass_obj
def plan_cmd(ctx: Ctx, plan_file: Path, as_json: bool, quiet: bool) -> None:
    """Checkpoint, rehearse on a shadow copy, diff and judge. Never writes to production.

    Exit 0 when every expectation holds, 1 when one does not.
    """
    result = _guard(ctx, lambda: runmod.plan(plan_file, ctx.settings, _progress(ctx, quiet or as_json)))
    print_result(ctx.out, result, as_json, ctx.quiet)
    _ready_warm_copies(ctx)
    sys.exit(result.exit_code)


@cli.command("apply")
@click.option("-f", "--file", "plan_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="The plan file [default: shadow.yaml, or the approved run's plan with --run].")
@click.option("--run", "approved_run", default=None, metavar="RUN_ID",
              help="Apply exactly the rehearsal of this approved `shadow plan` run (see `shadow approve`).")
@LOCK_TIMEOUT_OPTION
@JSON_OPTION
@QUIET_OPTION
@click.pass_obj
def apply_cmd(ctx: Ctx, plan_file: Path | None, approved_run: str | None, lock_timeout: float, as_json: bool,
              quiet: bool) -> None:
    """Rehearse like `plan`; if it passes, apply to production and verify, or roll back.

    Two applies on one target never interleave: the second waits for the first (--lock-timeout) or refuses.
    Exit 0 when applied, 1 when refused or rolled back.
    """
    if plan_file is None and approved_run is None:
        plan_file = Path("shadow.yaml")
    result = _guard(ctx, lambda: runmod.apply(plan_file, ctx.settings, _progress(ctx, quiet or as_json),
                                              lock_timeout, approved_run))
    print_result(ctx.out, result, as_json, ctx.quiet)
    _ready_warm_copies(ctx)
    sys.exit(result.exit_code)


def _ready_warm_copies(ctx: Ctx) -> None:
    """After a run that may have used a warm copy: leave the cloning of its next shadow to a process of its own
    (:mod:`shadow.spares`), as the gateway does between calls."""
    from shadow import spares

    if spares.wanted(ctx.settings):
        spares.start_detached(ctx.settings)


@cli.command("prepare-warm", hidden=True)
@click.pass_obj
def prepare_warm_cmd(ctx: Ctx) -> None:
    """Ready the warm copies' next shadows between CLI runs (started detached by plan and apply)."""
    from shadow import spares

    spares.prepare(ctx.settings)


@cli.command("rollback")
@click.argument("run_id")
@click.option("-f", "--file", "plan_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="The plan file, if it moved since the run.")
@click.option("--force", is_flag=True, help="Undo even what others changed again since the apply (overwrites those "
              "writes; with a full restore: restore although production changed).")
@click.option("--full", is_flag=True, help="Restore the whole checkpoint instead of undoing only the run's own change.")
@LOCK_TIMEOUT_OPTION
@JSON_OPTION
@QUIET_OPTION
@click.pass_obj
def rollback_cmd(ctx: Ctx, run_id: str, plan_file: Path | None, force: bool, full: bool, lock_timeout: float,
                 as_json: bool, quiet: bool) -> None:
    """Undo an applied run and verify it.

    A run applied in one transaction is undone change by change: its rows and objects put back, everyone else's
    writes since kept; a row someone changed again since is a conflict (refused; --force overwrites). Otherwise,
    or with --full, the whole checkpoint is restored — refused when production changed since the apply.
    Exit 0 undone/restored, 1 refused.
    """
    result = _guard(ctx, lambda: runmod.rollback(run_id, ctx.settings, plan_file, force,
                                                 _progress(ctx, quiet or as_json), lock_timeout, full))
    print_result(ctx.out, result, as_json, ctx.quiet)
    sys.exit(result.exit_code)


@cli.command("recover")
@click.option("-f", "--file", "plan_file", default=None, type=click.Path(dir_okay=False, path_type=Path),
              help="The plan file, if it moved since the killed run (its targets must point where the run worked).")
@click.option("--host-gone", "hosts_gone", multiple=True, metavar="HOST",
              help="HOST is down for good and can write nothing any more: settle runs whose action ran there from "
                   "here (otherwise refused: shadow cannot stop an action on another host). Repeatable.")
@LOCK_TIMEOUT_OPTION
@JSON_OPTION
@QUIET_OPTION
@click.pass_obj
def recover_cmd(ctx: Ctx, plan_file: Path | None, hosts_gone: tuple[str, ...], lock_timeout: float, as_json: bool,
                quiet: bool) -> None:
    """Settle every run whose process was killed: finish a verified apply, or undo its own change (restore the
    checkpoint where nothing else can) and verify.

    Until then, new runs on those targets are refused. Exit 0 when every run was settled (or none needed it).
    """
    settled = _guard(ctx, lambda: runmod.recover(ctx.settings, _progress(ctx, quiet or as_json), lock_timeout,
                                                 plan_file, hosts_gone))
    if as_json:
        click.echo(json.dumps(settled, indent=2))
        return
    if not settled:
        ctx.out.print("nothing to recover: no run was left unfinished")
    for row in settled:
        ctx.out.print(f"run [bold]{row['run']}[/] ({row['command']}, killed while {row['was']}): "
                      f"[bold]{row['outcome']}[/] — {escape(row['summary'])}")


@cli.command("approve")
@click.argument("run_id")
@click.option("--by", required=True, help="Who approves (recorded in the journal).")
@click.option("--comment", default="", help="Why, or anything the record should keep.")
@JSON_OPTION
@click.pass_obj
def approve_cmd(ctx: Ctx, run_id: str, by: str, comment: str, as_json: bool) -> None:
    """Approve a passed `shadow plan` run of a plan with `policy.approval: required`.

    The approval binds the plan file, the action's files, the expectations and the checkpoint (sha256);
    `shadow apply --run RUN_ID` then applies exactly that rehearsal, or refuses if any of them changed.
    """
    approval = _guard(ctx, lambda: runmod.approve(run_id, by, comment, ctx.settings))
    if as_json:
        click.echo(json.dumps(approval, indent=2))
        return
    ctx.out.print(f"[bold green]approved[/] run {run_id} by {escape(approval['by'])}; apply it with "
                  f"`shadow apply --run {run_id}`")


@cli.command("runs")
@click.option("-n", "--limit", default=50, show_default=True, help="How many runs to list, newest first.")
@JSON_OPTION
@click.pass_obj
def runs_cmd(ctx: Ctx, limit: int, as_json: bool) -> None:
    """List runs: id, time, command, plan, outcome."""
    rows = _guard(ctx, lambda: runmod.runs(ctx.settings, limit))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_runs(ctx.out, rows)


@cli.command("audit")
@JSON_OPTION
@click.pass_obj
def audit_cmd(ctx: Ctx, as_json: bool) -> None:
    """Verify the journal's hash chain and name the first row that was edited, deleted, inserted or reordered.

    Exit 0 when the chain is intact, 1 when it is not.
    """
    from shadow import audit

    result = _guard(ctx, lambda: audit.audit_settings(ctx.settings))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif result.tampered is None:
        ctx.out.print(f"[bold green]journal intact[/]: {result.rows} rows chained, head {result.head or '-'}")
        for note in result.notes:
            ctx.out.print(f"  note: {escape(note)}")
    else:
        ctx.out.print(f"[bold red]journal NOT intact[/] ({escape(result.path)}): {escape(result.tampered.describe())}")
    sys.exit(result.exit_code)


@cli.command("gc")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--checkpoints-older-than", "older_than", type=click.FloatRange(min=0), metavar="DAYS",
              help="Also remove the checkpoints of finished runs started more than DAYS ago, and every stored "
                   "artifact no other checkpoint uses. Those runs can no longer be rolled back.")
@click.option("--warm", "all_warm", is_flag=True,
              help="Also remove every warm server (policy.warm) no run is using, not only expired ones.")
@JSON_OPTION
@click.pass_obj
def gc_cmd(ctx: Ctx, dry_run: bool, older_than: float | None, all_warm: bool, as_json: bool) -> None:
    """Remove what killed runs left behind (containers, networks, local clusters, temp dirs) and expired warm
    servers; never anything of a run still alive. With --checkpoints-older-than, also prune old checkpoints from
    the store. Exit 0."""
    from shadow import gc

    def both() -> gc.GcResult:
        result = gc.gc(dry_run, settings=ctx.settings, warm=all_warm)
        if older_than is not None:
            pruned = gc.prune_checkpoints(ctx.settings, older_than, dry_run)
            result.removed += pruned.removed
            result.failed += pruned.failed
        return result

    result = _guard(ctx, both)
    skipped = f"docker: skipped ({result.docker_skipped})" if result.docker_skipped else None
    if as_json:
        click.echo(json.dumps(result.to_list(), indent=2))
        if skipped:
            ctx.err.print(escape(skipped))
        return
    print_gc(ctx.out, ctx.err, result, dry_run, skipped)


@cli.command("show")
@click.argument("run_id")
@click.option("--format", "fmt", type=click.Choice(["md", "json", "junit", "html"]), default="md", show_default=True,
              help="md: GitHub-flavoured, fits a pull-request comment · json: the report model (schema shipped as "
                   "shadow/reports/schema/report-v1.json) · junit: JUnit XML, one test case per expectation and "
                   "finding · html: one self-contained page (verdict, changes, sample rows, lock trace, timing).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Write the report to FILE instead of printing it.")
@click.pass_obj
def show_cmd(ctx: Ctx, run_id: str, fmt: str, output: Path | None) -> None:
    """Print a run's report (or write it to a file)."""
    text = _guard(ctx, lambda: runmod.show(run_id, ctx.settings, fmt, output))
    if output is None:
        click.echo(text, nl=False)
    else:
        ctx.err.print(f"report: {escape(str(output))}")


@cli.command("demo")
@click.option("--keep", is_flag=True, help="Leave the demo's production cluster running until Enter is pressed.")
@click.pass_obj
def demo_cmd(ctx: Ctx, keep: bool) -> None:
    """Run the demo: a throwaway local "production" database gets a safe migration applied and a destructive one
    refused. Needs PostgreSQL server binaries (or `pip install 'shadow[embedded]'`), no Docker."""
    from shadow import demo

    code = _guard(ctx, lambda: demo.run(ctx.settings, ctx.out, ctx.err, keep))
    sys.exit(code)


@cli.command("lint")
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


@cli.command("alembic")
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


@cli.command("django")
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


GATEWAY_OPTION = click.option("-f", "--file", "gateway_file", default="gateway.yaml", show_default=True,
                              type=click.Path(dir_okay=False, path_type=Path), help="The gateway file.")


@cli.command("mcp")
@GATEWAY_OPTION
@click.option("--actor", required=True, help="Who is calling (fixed for the server's life; its rules come from "
              "the gateway file's `agents:`).")
@click.pass_obj
def mcp_cmd(ctx: Ctx, gateway_file: Path, actor: str) -> None:
    """Serve the agent gateway over MCP on stdin/stdout: an agent may look at copies and propose actions that are
    rehearsed and judged; it applies only approved rehearsals. Put this command in the MCP client's
    configuration."""
    from shadow import gateway
    from shadow.gateway import mcp

    gw = _guard(ctx, lambda: gateway.open(gateway_file, actor, ctx.settings))
    mcp.serve(gw)


@cli.group("agents", invoke_without_command=True)
@GATEWAY_OPTION
@JSON_OPTION
@click.pass_context
def agents_cmd(click_ctx: click.Context, gateway_file: Path, as_json: bool) -> None:
    """List the gateway's actors: breaker state, proposals, applies and failures, and their recent runs."""
    if click_ctx.invoked_subcommand is not None:
        return
    ctx: Ctx = click_ctx.obj
    from shadow.gateway import agents

    rows = _guard(ctx, lambda: agents.overview(gateway_file, ctx.settings))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        ctx.out.print("no actors: the gateway file names none and none has called")
    for row in rows:
        breaker = row["breaker"]
        state = "[bold red]OPEN[/]" if breaker["state"] == "open" else "[green]closed[/]"
        ctx.out.print(f"[bold]{escape(row['actor'])}[/]  breaker {state} ({breaker['failures_in_window']} failures "
                      f"in window)  proposals {row['proposals']}  applies {row['applies']}  "
                      f"failures {row['failures']}  calls {row['calls']}")
        if breaker["why"]:
            ctx.out.print(f"  opened: {escape(breaker['why'])}")
        for run in row["recent_runs"]:
            ctx.out.print(f"  {run['run_id']}  {escape(run['tool'])}  {escape(str(run['verdict']))}")


@agents_cmd.command("reset")
@click.argument("actor")
@click.option("--by", required=True, help="Who closes the breaker (recorded in the journal).")
@click.pass_obj
def agents_reset_cmd(ctx: Ctx, actor: str, by: str) -> None:
    """Close ACTOR's circuit breaker (recorded in the journal)."""
    from shadow.gateway.ledger import Ledger

    if not by.strip():
        _fail(ctx, click.UsageError("--by must name who resets the breaker"), EXIT_BAD_INPUT)
    settings = ctx.settings
    parent = click.get_current_context().parent
    gateway_file = parent.params.get("gateway_file") if parent is not None else None
    if gateway_file is not None and Path(gateway_file).exists():  # its `state:` names where the ledger is
        from shadow.gateway.config import load_gateway

        settings = _guard(ctx, lambda: load_gateway(Path(gateway_file), settings.environ)).settings_for(settings)
    _guard(ctx, lambda: Ledger(settings).reset(actor, by.strip()))
    ctx.out.print(f"breaker of {escape(actor)} closed by {escape(by.strip())}")


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
