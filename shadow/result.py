"""The result of a run, as the verbs return it, and its model (:meth:`RunResult.to_dict`): what ``report.json``
stores and every renderer in :mod:`shadow.reports` takes — the reports depend on this model, never the reverse.

Row values enter the model only as sample rows, already redacted (:mod:`shadow.redact`): :meth:`RunResult.to_dict`
applies the plan's ``policy.redact`` on top of what the adapter redacted, so no renderer can show more.

The model only grows within ``format_version`` 1: keys are added, never removed, renamed or given another type or
meaning; consumers ignore keys they do not know. An incompatible change bumps :data:`FORMAT_VERSION`.
"""

from __future__ import annotations

import secrets as pysecrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shadow import redact
from shadow.action import ActionResult
from shadow.changes import Change
from shadow.judge import Verdict
from shadow.outcome import Ending, Outcome

FORMAT_VERSION = 1  # of the model; shadow/reports/schema/report-v1.json describes it


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
    seconds: float | None = None  # the run's wall time, from its start to its report; None while it runs
    clock: float = field(default_factory=time.monotonic, repr=False)  # when it started, on the monotonic clock

    @property
    def passed(self) -> bool:
        return all(v.ok for v in self.verdicts)

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code

    def explain(self, failed: list[Verdict] | None = None, target: str | None = None) -> str:
        """The run as a failing test should say it: the outcome and reason, what failed (``failed``, default every
        failed verdict) and the change set it was judged on (``target``'s alone, when given)."""
        shown = [v for v in self.verdicts if not v.ok] if failed is None else failed
        lines = [f"FAILED {v.target + ': ' if v.target else ''}{v.rule} {v.subject}: {v.message}" for v in shown]
        head = f"shadow {self.command} {self.plan_path}: {self.outcome.value}"
        lines.append(head + (f" — {self.reason}" if self.reason and failed is None else ""))
        for name, tr in self.targets.items():
            if target is None or name == target:
                lines.append(f"  changes on {name}: " + (", ".join(c.address for c in tr.changes) or "none"))
        if self.report_dir:
            lines.append(f"  report: {Path(self.report_dir) / 'report.md'}")
        return "\n".join(lines)

    def end(self, ending: Ending) -> None:
        """Record how the run ended; an ending that carries an error raises it once recorded."""
        self.outcome, self.reason = ending.outcome, ending.reason
        if ending.error is not None:
            raise ending.error

    def to_dict(self) -> dict[str, Any]:
        """The report model (``format_version`` 1), row values redacted."""
        patterns = tuple(self.redact)
        return {
            "format_version": FORMAT_VERSION,
            "run_id": self.run_id,
            "command": self.command,
            "of_run": self.of_run,
            "plan": self.plan_path,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "outcome": self.outcome.value,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "passed": self.passed,
            "backend": {"name": self.backend, "reason": self.backend_reason},
            "action": {
                "description": self.action,
                "rehearsal": self.rehearsal.to_dict() if self.rehearsal else None,
                "production": self.production.to_dict() if self.production else None,
            },
            "targets": [_target_model(t, patterns) for t in self.targets.values()],
            "expectations": [v.to_dict() for v in self.verdicts],
            "findings": self.findings,
            "divergence": self.divergence,
            "steps": self.steps,
            "timing": timing(self.steps, self.seconds),
            "report_dir": self.report_dir,
            "redact": list(patterns),
        }


def timing(steps: list[dict[str, Any]], total: float | None) -> dict[str, Any]:
    """Where the run's time went: each step (per target) once, in the order it first ran, its seconds summed over
    its repeats (a second rehearsal) with its share of the run's wall time; and the time spent outside any step."""
    by_step: dict[tuple[str, str | None], float] = {}
    for s in steps:
        key = (s["step"], s.get("target"))
        by_step[key] = by_step.get(key, 0.0) + s["seconds"]
    in_steps = round(sum(by_step.values()), 3)

    def share(seconds: float) -> float | None:
        return round(seconds / total, 3) if total else None

    return {
        "total_seconds": total,
        "in_steps_seconds": in_steps,
        "outside_steps_seconds": None if total is None else round(max(total - in_steps, 0.0), 3),
        "by_step": [{"step": step, "target": target, "seconds": round(seconds, 3), "share": share(seconds)}
                    for (step, target), seconds in by_step.items()],
    }


def _target_model(t: TargetResult, patterns: tuple[str, ...]) -> dict[str, Any]:
    return {
        "name": t.name,
        "kind": t.kind,
        "endpoint": t.endpoint,
        "checkpoint": t.checkpoint,
        "changes": _redacted([c.to_dict() for c in t.changes], patterns),
        "production_changes": None if t.production_changes is None
        else _redacted([c.to_dict() for c in t.production_changes], patterns),
        "warnings": t.warnings,
        "restore": t.restore,
    }


def _redacted(changes: list[dict[str, Any]], patterns: tuple[str, ...]) -> list[dict[str, Any]]:
    out = []
    for c in changes:
        c = dict(c)
        detail = c.get("detail")
        if detail and c["kind"] == "rows":
            c["detail"] = redact.rows_detail(c["name"], detail, patterns)
        elif detail and detail.get("content_diff"):
            c["detail"] = {**detail, "content_diff": redact.content_lines(detail["content_diff"])}
        if c.get("implied"):
            c["implied"] = _redacted(c["implied"], patterns)
        out.append(c)
    return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + pysecrets.token_hex(3)


def addresses(changes: list[Change], limit: int = 3, counts: bool = False) -> str:
    """The first ``limit`` top-level change addresses, and how many more there are; ``counts``: each with its row
    count where it has one ("insert rows public.events — 37 rows")."""
    def one(c: Change) -> str:
        count = c.detail.get("count") if counts else None
        return c.address + (f" — {count:,} row{'s' if count != 1 else ''}" if isinstance(count, int) else "")

    shown = "; ".join(one(c) for c in changes[:limit])
    return shown + (f"; and {len(changes) - limit} more" if len(changes) > limit else "") or "no change observed"
