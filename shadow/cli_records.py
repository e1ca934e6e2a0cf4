"""The verbs about what runs left behind: ``runs`` (the list), ``show`` (a run's report), ``audit`` (the journal's
hash chain) and ``gc`` (leftovers of killed runs, expired warm servers, old checkpoints)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.markup import escape

from shadow.cli_context import JSON_OPTION, Ctx, _guard, runmod
from shadow.cli_output import print_gc, print_runs


@click.command("runs")
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


@click.command("audit")
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


@click.command("gc")
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


@click.command("show")
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
