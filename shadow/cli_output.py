"""What the ``shadow`` command line prints: a run's result (a table per target, the verdict, what failed), the list
of runs, and what ``gc`` and ``lint`` found — each from the object the verb returned, onto a rich console.

Imported when the CLI starts, so it imports the reports (and through them nothing of a run) only when it prints one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shadow.changes import change_summary
from shadow.outcome import Outcome

if TYPE_CHECKING:
    from shadow.gc import GcResult
    from shadow.lint import Finding
    from shadow.result import RunResult

SHOWN = 20  # production changes and divergences listed under a verdict; the report has the rest


def print_result(out: Console, result: RunResult, as_json: bool, quiet: bool) -> None:
    """A run's result: its model as JSON, or the verdict (``quiet``: and where the report is), or all of it — the
    table per target, where the time went, the verdict and what failed."""
    from shadow import reports

    model = result.to_dict()
    if as_json:
        click.echo(json.dumps(model, indent=2, default=str))
        return
    colour = "green" if result.exit_code == 0 else "red"
    if quiet:
        out.print(f"[bold {colour}]{escape(reports.summary_line(model))}[/]")
        out.print(f"run {result.run_id} · report: {escape(result.report_dir)}/report.md")
        return
    out.print(summary_table(model))
    spent = reports.time_line(model)
    if spent:  # one line however many steps: the terminal does not wrap it (soft_wrap)
        out.print(f"[dim]{escape(spent)}[/]")
    out.print(f"[bold {colour}]{escape(reports.verdict_line(model))}[/]")
    if result.reason:
        out.print(escape(result.reason))
    if result.outcome is Outcome.REFUSED:  # drift: what production did meanwhile, as change addresses
        for t in model["targets"]:
            changed = t.get("production_changes") or []
            if changed:
                out.print(f"  production {escape(t['name'])} changed:")
            for c in changed[:SHOWN]:
                out.print(f"    [red]~[/] {escape(change_summary(c))}")
            if len(changed) > SHOWN:
                out.print(f"    … and {len(changed) - SHOWN} more (see the report)")
    for v in result.verdicts:
        if not v.ok:
            where = f"{v.target}: " if v.target else ""
            out.print(f"  [red]✗[/] {escape(where + v.rule)} [bold]{escape(v.subject)}[/] — {escape(v.message)}")
    for d in result.divergence[:SHOWN]:
        out.print(f"  [red]≠[/] {escape(d)}")
    out.print(f"run [bold]{result.run_id}[/] · report: {escape(result.report_dir)}/report.md "
              f"(and report.html)")


def summary_table(model: dict[str, Any]) -> Table:
    """One row per target: its changes, rows changed, and its expectations."""
    table = Table("target", "changes", "rows +/~/-", "expectations", title="shadow " + model["command"],
                  title_justify="left")
    targets = list(model["targets"])
    if any(not v["target"] for v in model["expectations"]):
        targets.append({"name": "", "changes": []})  # expectations of the run as a whole (the action)
    for t in targets:
        every = list(_walk_changes(t["changes"]))  # implied row changes count too (rows a dropped column updated)
        rows = {op: sum(c.get("detail", {}).get("count", 0) for c in every
                        if c["kind"] == "rows" and c["op"] == op) for op in ("insert", "update", "delete")}
        verdicts = [v for v in model["expectations"] if v["target"] == t["name"]]
        failed = sum(not v["ok"] for v in verdicts)
        held = f"[green]{len(verdicts) - failed} ✓[/]" + (f" [bold red]{failed} ✗[/]" if failed else "")
        table.add_row(escape(t["name"] or "(run)"), str(len(t["changes"])),
                      f"+{rows['insert']:,} ~{rows['update']:,} -{rows['delete']:,}", held if verdicts else "—")
    return table


def _walk_changes(changes: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for change in changes:
        yield change
        yield from _walk_changes(change.get("implied") or [])


def print_runs(out: Console, rows: list[dict[str, Any]]) -> None:
    """The runs ``shadow runs`` lists, newest first."""
    if not rows:
        out.print("no runs yet")
        return
    # A run id is what `shadow rollback` and `shadow show` take: it is never cut, whatever the width (nor are
    # time, command and outcome); only the plan's path is folded onto more lines when the line is too narrow.
    cells = [(r["id"], r["started_at"], r["command"], r["outcome"] or "running?", r["plan"]) for r in rows]
    heads = ("run", "started (UTC)", "command", "outcome", "plan")
    table = Table(box=None)
    widths = [max(len(head), *(len(row[i]) for row in cells)) for i, head in enumerate(heads[:4])]
    for head, width in zip(heads, widths, strict=False):
        table.add_column(head, no_wrap=True, min_width=width)
    table.add_column("plan", overflow="fold", min_width=20)
    for row in cells:
        table.add_row(*row)
    out.print(table, width=max(out.width, sum(widths) + 20 + 2 * 5))


def print_gc(out: Console, err: Console, result: GcResult, dry_run: bool, skipped: str | None) -> None:
    """What ``shadow gc`` removed (or would remove), what it could not, and a count."""
    verb = "would remove" if dry_run else "removed"
    for item in result.removed:
        out.print(f"{verb} {item.kind:<9} {escape(item.id)}  run {escape(item.run_id or '-')}  "
                  f"[dim]({escape(item.detail)})[/]")
    for item, why in result.failed:
        err.print(f"[red]could not remove {item.kind} {escape(item.id)}[/]  run {escape(item.run_id or '-')}: "
                  f"{escape(why)}")
    if skipped:
        out.print(escape(skipped))
    if not result.removed and not result.failed:
        out.print("nothing to remove")
    else:
        failed = f", {len(result.failed)} could not be removed" if result.failed else ""
        out.print(f"{len(result.removed)} {'to remove (dry run)' if dry_run else 'removed'}{failed}")


def print_lint(out: Console, findings: Sequence[Finding], kept: Sequence[Finding], allowed: Sequence[Finding]) -> None:
    """Each finding that was not allowed with its hint, the allowed ones dimmed, then a count per severity."""
    colour = {"error": "red", "warning": "yellow", "info": "cyan"}
    for f in kept:
        out.print(f"{escape(f.where)} [{colour[f.severity]}]{f.severity}[/] [bold]{f.id}[/] {escape(f.message)}")
        out.print(f"    [dim]hint: {escape(f.hint)}[/]")
    for f in allowed:
        out.print(f"[dim]{escape(f.where)} allowed {f.id}[/]")
    counts = {s: sum(f.severity == s for f in kept) for s in ("error", "warning", "info")}
    summary = ", ".join(f"{n} {s}{'s' if n != 1 and s != 'info' else ''}" for s, n in counts.items())
    out.print(f"{summary}, {len(allowed)} allowed" if findings else "no findings")


def print_migrations(out: Console, done: Any) -> None:
    """``shadow alembic`` / ``shadow django``: per migration its verdict, change set, what failed and its lock
    trace; then the round trip, with what a reverse migration left behind (row keys and values included)."""
    word = "revision" if done.tool == "alembic" else "migration"
    for step in done.steps:
        model = step.result.to_dict()
        colour = "green" if step.passed else "red"
        out.print(f"[bold {colour}]{word} {escape(step.revision)}[/] {escape(step.message)} — "
                  f"{'passed' if step.passed else 'FAILED'} [dim]({step.mode}; expect: {escape(step.expect_source)}; "
                  f"run {step.result.run_id})[/]")
        for t in model["targets"]:
            for c in t.get("changes") or []:
                out.print(f"    {escape(change_summary(c))}")
        for v in step.result.verdicts:
            if not v.ok:
                out.print(f"    [red]✗[/] {escape(v.rule)} {escape(v.subject)}: {escape(v.message)}")
        for traced in (step.result.rehearsal.locks if step.result.rehearsal else None) or []:
            strong = [lk for lk in traced.get("locks", []) if "EXCLUSIVE" in str(lk.get("mode", "")).upper()]
            if strong:
                held = ", ".join(f"{lk.get('mode')} on {lk.get('relation')}" for lk in strong[:3])
                out.print(f"    [dim]locks of {word} {escape(step.revision)} at {escape(str(traced.get('statement')))}: "
                          f"{escape(held)}[/]")
    for revision in done.not_rehearsed:
        out.print(f"[red]{word} {escape(revision)} not rehearsed[/] (an earlier {word} does not run)")
    trip = done.round_trip
    if trip is not None:
        ok = trip.passed and trip.outcome is Outcome.PASSED
        colour = "green" if ok else "red"
        out.print(f"[bold {colour}]round trip[/] up to {escape(done.to)}, back to {escape(done.start or 'the start')} — "
                  f"{'no trace left' if ok else 'FAILED'} [dim](run {trip.run_id})[/]")
        if not ok:
            if trip.reason:
                out.print(f"    {escape(trip.reason)}")
            for t in trip.to_dict()["targets"]:
                for c in t.get("changes") or []:
                    out.print(f"    left behind: {escape(change_summary(c))}")
                    for row in (c.get("detail") or {}).get("sample_rows") or []:
                        out.print(f"      {escape(json.dumps(row, default=str))}")
    out.print(f"[bold {'green' if done.passed else 'red'}]{'PASSED' if done.passed else 'FAILED'}[/]")
