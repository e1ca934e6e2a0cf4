"""The verbs of a run: ``plan``, ``apply``, ``rollback``, ``recover``, ``approve`` — each a call of
:mod:`shadow.run` — and the hidden ``prepare-warm`` that readies warm copies between them."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import click
from rich.markup import escape

from shadow.cli_context import (JSON_OPTION, LOCK_TIMEOUT_OPTION, PLAN_OPTION, QUIET_OPTION, Ctx, _guard, _progress,
                                runmod)
from shadow.cli_output import print_result
from shadow.settings import Settings


@click.command("plan")
@PLAN_OPTION
@JSON_OPTION
@QUIET_OPTION
@click.pass_obj
def plan_cmd(ctx: Ctx, plan_file: Path, as_json: bool, quiet: bool) -> None:
    """Checkpoint, rehearse on a shadow copy, diff and judge. Never writes to production.

    Exit 0 when every expectation holds, 1 when one does not.
    """
    result = _guard(ctx, lambda: runmod.plan(plan_file, _ending(ctx), _progress(ctx, quiet or as_json)))
    print_result(ctx.out, result, as_json, ctx.quiet)
    _ready_warm_copies(ctx)
    sys.exit(result.exit_code)


@click.command("apply")
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
    result = _guard(ctx, lambda: runmod.apply(plan_file, _ending(ctx), _progress(ctx, quiet or as_json),
                                              lock_timeout, approved_run))
    print_result(ctx.out, result, as_json, ctx.quiet)
    _ready_warm_copies(ctx)
    sys.exit(result.exit_code)


def _ending(ctx: Ctx) -> Settings:
    """This command's settings for a run its process ends with: the removal of a shadow's container is not waited
    for (``Settings.short_lived``)."""
    return dataclasses.replace(ctx.settings, short_lived=True)


def _ready_warm_copies(ctx: Ctx) -> None:
    """After a run that may have used a warm copy: leave the cloning of its next shadow to a process of its own
    (:mod:`shadow.spares`), as the gateway does between calls."""
    from shadow import spares

    if spares.wanted(ctx.settings):
        spares.start_detached(ctx.settings)


@click.command("prepare-warm", hidden=True)
@click.pass_obj
def prepare_warm_cmd(ctx: Ctx) -> None:
    """Ready the warm copies' next shadows between CLI runs (started detached by plan and apply)."""
    from shadow import spares

    spares.prepare(ctx.settings)


@click.command("rollback")
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


@click.command("recover")
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


@click.command("approve")
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
