"""``shadow demo``: a throwaway local "production" database, a safe migration applied, a destructive one refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psycopg
from rich.console import Console
from rich.markup import escape

from adapters.postgres.binaries import binaries_for, configured_bindir
from adapters.postgres.cluster import LocalCluster
from adapters.postgres.target import PostgresTarget
from shadow import run as runmod
from shadow.errors import BadInput
from shadow.outcome import Outcome
from shadow.reports import verdict_line
from shadow.settings import Settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "demo"


def run(settings: Settings, out: Console, err: Console, keep: bool = False) -> int:
    if not (EXAMPLES / "schema.sql").exists():
        raise BadInput(f"the demo files are not at {EXAMPLES}; run the demo from a clone of the shadow repository")
    out.print("[bold]shadow demo[/] — starting a throwaway PostgreSQL as the demo's [bold]production[/] …")
    with LocalCluster(label="demo-production", binaries=binaries_for(None, configured_bindir(settings))) as prod:
        dsn = prod.create_database("shop")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((EXAMPLES / "schema.sql").read_text())
        out.print(f"production: PostgreSQL {prod.binaries.major} on 127.0.0.1:{prod.port}, database [bold]shop[/] "
                  "(500 users, 2000 orders)")
        env = {**settings.environ, "SHOP_DATABASE_URL": dsn}
        # The demo shows the embedded default (local binaries, no Docker) unless SHADOW_BACKEND says otherwise.
        demo_settings = replace(settings, environ=env, backend=settings.backend or "local")
        production = PostgresTarget("shop", {"dsn": dsn}, demo_settings)

        def progress(event: str, text: str) -> None:
            if event in ("done", "failed", "info"):
                mark = {"done": "[green]✓", "failed": "[red]✗", "info": "[cyan]•"}[event]
                err.print(f"  {mark} {escape(text)}[/]")

        out.print("\n[bold]1. A safe migration[/] (examples/demo/safe.yaml: add a column + index, backfill) — "
                  "[italic]shadow apply[/]")
        safe = runmod.apply(EXAMPLES / "safe.yaml", demo_settings, progress)
        _summarise(out, safe)

        out.print("\n[bold]2. A destructive migration[/] (examples/demo/destructive.yaml: drops a column, deletes "
                  "far more orders than expected) — [italic]shadow apply[/]")
        before = production.fingerprint()
        bad = runmod.apply(EXAMPLES / "destructive.yaml", demo_settings, progress)
        _summarise(out, bad)
        after = production.fingerprint()
        untouched = before == after
        out.print(f"  production fingerprint before {before[:12]}… after {after[:12]}… → "
                  + ("[bold green]production untouched[/]" if untouched else "[bold red]PRODUCTION CHANGED[/]"))

        out.print("\nReports (Markdown, HTML and JSON) are in "
                  f"[bold]{escape(str(settings.runs_dir))}[/]; try [italic]shadow runs[/] and "
                  f"[italic]shadow show {bad.run_id}[/].")
        if keep:
            out.print(f"production stays up at {escape(production.describe())} — press Enter to stop it.")
            input()
        ok = safe.outcome is Outcome.APPLIED and bad.outcome is Outcome.REFUSED and untouched
        return 0 if ok else 1


def _summarise(out: Console, result: runmod.RunResult) -> None:
    colour = "green" if result.outcome in (Outcome.APPLIED, Outcome.PASSED) else "yellow"
    out.print(f"  [bold {colour}]{escape(verdict_line(result.to_dict()))}[/] (run {result.run_id})")
    for target in result.targets.values():
        for change in target.changes:
            count = change.detail.get("count")
            out.print(f"    · {escape(change.address)}" + (f" ({count} rows)" if count is not None else ""))
    for v in result.verdicts:
        if not v.ok:
            out.print(f"    [red]✗ {escape(v.rule)} {escape(v.subject)}: {escape(v.message)}[/]")
