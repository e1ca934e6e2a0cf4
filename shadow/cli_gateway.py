"""The agent gateway's verbs: ``mcp`` (serve it over MCP on stdin/stdout) and ``agents`` (its actors, and
``agents reset`` to close an actor's circuit breaker)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape

from shadow.cli_context import JSON_OPTION, Ctx, _fail, _guard
from shadow.errors import EXIT_BAD_INPUT

GATEWAY_OPTION = click.option("-f", "--file", "gateway_file", default="gateway.yaml", show_default=True,
                              type=click.Path(dir_okay=False, path_type=Path), help="The gateway file.")


@click.command("mcp")
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


@click.group("agents", invoke_without_command=True)
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
