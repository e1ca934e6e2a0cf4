"""``shadow demo``: a throwaway local "production" database that its application keeps writing to; a safe
migration applied and then rolled back change by change while the writes go on, and a destructive one refused."""

from __future__ import annotations

import threading
import time
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
                  "[italic]shadow apply[/], while the shop's application keeps placing and paying orders")
        with _Shop(dsn) as shop:
            safe = runmod.apply(EXAMPLES / "safe.yaml", demo_settings, progress)
        _summarise(out, safe)
        out.print(f"  the application committed {shop.writes} writes meanwhile; "
                  + ("[bold green]every one is still there[/]" if shop.kept() else "[bold red]SOME ARE MISSING[/]"))

        out.print("\n[bold]2. A destructive migration[/] (examples/demo/destructive.yaml: drops a column, deletes "
                  "far more orders than expected) — [italic]shadow apply[/]")
        before = production.fingerprint()
        bad = runmod.apply(EXAMPLES / "destructive.yaml", demo_settings, progress)
        _summarise(out, bad)
        after = production.fingerprint()
        untouched = before == after
        out.print(f"  production fingerprint before {before[:12]}… after {after[:12]}… → "
                  + ("[bold green]production untouched[/]" if untouched else "[bold red]PRODUCTION CHANGED[/]"))

        out.print(f"\n[bold]3. Roll the safe migration back[/] — [italic]shadow rollback {safe.run_id}[/], while "
                  "the application keeps writing: only the migration's own rows and objects are put back")
        with _Shop(dsn) as shop:
            undone = runmod.rollback(safe.run_id, demo_settings, progress=progress)
        _summarise(out, undone)
        kept = shop.kept()
        out.print(f"  the application committed {shop.writes} writes meanwhile; "
                  + ("[bold green]every one is still there[/]" if kept else "[bold red]SOME ARE MISSING[/]"))

        out.print("\nReports (Markdown, HTML and JSON) are in "
                  f"[bold]{escape(str(settings.runs_dir))}[/]; try [italic]shadow runs[/] and "
                  f"[italic]shadow show {bad.run_id}[/].")
        if keep:
            out.print(f"production stays up at {escape(production.describe())} — press Enter to stop it.")
            input()
        ok = (safe.outcome is Outcome.APPLIED and bad.outcome is Outcome.REFUSED and untouched
              and undone.outcome is Outcome.RESTORED and kept)
        return 0 if ok else 1


class _Shop:
    """The shop's application, in a thread: places an order and pays an older one every 50 ms, and remembers
    what it committed so the demo can check that nothing of it was lost."""

    def __init__(self, dsn: str) -> None:
        self.dsn, self.writes = dsn, 0
        self.placed: list[int] = []
        self.paid: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-shop", daemon=True)

    def __enter__(self) -> _Shop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="demo shop") as conn:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    row = conn.execute("INSERT INTO orders (user_id, total_cents, placed_at) VALUES (%s, %s, now()) "
                                       "RETURNING id", [1 + n % 500, 100 + n]).fetchone()
                    assert row is not None
                    self.placed.append(int(row[0]))
                    self.writes += 1
                    if len(self.placed) > 1:
                        conn.execute("UPDATE orders SET status = 'paid' WHERE id = %s", [self.placed[-2]])
                        self.paid.add(self.placed[-2])
                        self.writes += 1
                except psycopg.errors.LockNotAvailable:
                    pass
                time.sleep(0.05)

    def kept(self) -> bool:
        """Every order the application placed is there, and every one it paid is paid."""
        with psycopg.connect(self.dsn) as conn:
            rows: dict[int, str] = dict(conn.execute("SELECT id, status::text FROM orders WHERE id = ANY(%s)", [self.placed]).fetchall())
        return len(rows) == len(self.placed) and all(rows[i] == "paid" for i in self.paid)


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
