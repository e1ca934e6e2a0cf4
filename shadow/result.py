"""The result of a run, as the verbs return it and the reports render it (:func:`shadow.report.model`)."""

from __future__ import annotations

import secrets as pysecrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from shadow import report
from shadow.action import ActionResult
from shadow.changes import Change
from shadow.judge import Verdict
from shadow.outcome import Ending, Outcome


@dataclass
class TargetResult:
    name: str
    kind: str
    endpoint: str
    checkpoint: dict[str, Any] | None = None
    changes: list[Change] = field(default_factory=list)
    production_changes: list[Change] | None = None
    warnings: list[str] = field(default_factory=list)
    restore: dict[str, Any] | None = None


@dataclass
class RunResult:
    run_id: str
    command: str
    plan_path: str
    started_at: float
    backend: str = ""
    backend_reason: str = ""
    outcome: Outcome = Outcome.RUNNING
    reason: str = ""
    targets: dict[str, TargetResult] = field(default_factory=dict)
    action: str = ""
    rehearsal: ActionResult | None = None
    production: ActionResult | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)  # static findings on the SQL, with "allowed"
    divergence: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    finished_at: float | None = None
    report_dir: str = ""
    of_run: str | None = None
    redact: tuple[str, ...] = ()  # the plan's policy.redact: column globs whose values reports never show

    @property
    def passed(self) -> bool:
        return all(v.ok for v in self.verdicts)

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code

    def end(self, ending: Ending) -> None:
        """Record how the run ended; an ending that carries an error raises it once recorded."""
        self.outcome, self.reason = ending.outcome, ending.reason
        if ending.error is not None:
            raise ending.error

    def to_dict(self) -> dict[str, Any]:
        return report.model(self)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + pysecrets.token_hex(3)


def addresses(changes: list[Change], limit: int = 3) -> str:
    """The first ``limit`` top-level change addresses, and how many more there are."""
    shown = "; ".join(c.address for c in changes[:limit])
    return shown + (f"; and {len(changes) - limit} more" if len(changes) > limit else "") or "no change observed"
