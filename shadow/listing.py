"""What ``shadow runs`` and ``shadow show`` read: the journal's list of runs, and a run's stored report."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shadow import reports
from shadow.errors import BadInput
from shadow import state
from shadow.settings import Settings
from snapshots import atomic_write_bytes


def runs(settings: Settings | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The latest ``limit`` runs, newest first: id, command, plan, outcome, summary and start time."""
    settings = settings or Settings.from_env()
    if not state.has_journal(settings):
        return []
    journal = state.open_journal(settings)
    try:
        return [
            {"id": r.id, "command": r.command, "plan": r.plan_path, "outcome": r.outcome, "summary": r.summary,
             "started_at": datetime.fromtimestamp(r.started_at, timezone.utc).isoformat(timespec="seconds")}
            for r in journal.runs(limit)
        ]
    finally:
        journal.close()


def show(run_id: str, settings: Settings | None = None, fmt: str = "md", output: Path | None = None) -> str:
    """A run's stored report in ``fmt`` (one of ``reports.FORMATS``); also written to ``output`` when given."""
    settings = settings or Settings.from_env()
    if fmt not in reports.FORMATS:
        raise BadInput(f"unknown report format {fmt!r}; use one of {', '.join(reports.FORMATS)}")
    path = state.local_path(settings, run_id, "report.json")
    if not path.exists():
        raise BadInput(f"no report for run {run_id!r} in {settings.runs_dir} (see `shadow runs`)")
    text = reports.render(json.loads(path.read_text()), fmt)
    if output is not None:
        try:
            atomic_write_bytes(output, text.encode("utf-8"))
        except OSError as exc:
            raise BadInput(f"cannot write the report to {output}: {exc.strerror or exc}") from exc
    return text
