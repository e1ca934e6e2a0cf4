"""What every part of the gateway shares: the answer format, the bounds on an actor's input, :class:`Refused`, and
:class:`GatewayBase` — the gateway's state (its file, actor, rules, settings, ledger and folder) with the steps every
tool takes: naming a target, the breaker and rate gate, the gateway's run records (``<state>/gateway/runs``: whose
proposal a run is, what applied or rolled it back) and a run's answer."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from shadow import redact
from shadow.errors import ShadowError, cap
from shadow.gateway.config import GatewayFile, Rules
from shadow.gateway.ledger import Ledger
from shadow.result import RunResult
from shadow.settings import Settings
from snapshots import atomic_write_bytes, make_private_dir

GATEWAY_FORMAT = 1
MAX_SQL_BYTES = 1 << 20
MAX_FILES = 20
MAX_FILE_BYTES = 1 << 20
MAX_COMMAND_CHARS = 4096
MAX_TEXT_CHARS = 4000
MAX_ANSWER_CHARS = 256 * 1024  # no answer is larger; its lists are cut first
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
RUN_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}")
WARMING_TOOLS = ("describe", "query", "propose", "apply")  # calls that may leave a warm copy to ready
QUERY_ROWS, QUERY_BYTES = 100, 64 * 1024


class Refused(ShadowError):
    """A tool call the gateway refuses: bad input, out of its rules, or undecidable. The message is safe to show the
    actor (it names no endpoint or secret)."""

    exit_code = 1


class GatewayBase:
    """The gateway's state and the steps its tools share (:class:`shadow.gateway.core.Gateway` is made of this and
    one part per group of tools)."""

    file: GatewayFile
    actor: str
    rules: Rules
    settings: Settings
    ledger: Ledger
    dir: Path

    def _make_targets(self, names: list[str] | None = None) -> dict[str, Any]:
        from adapters import REGISTRY

        return {s.name: REGISTRY[s.kind].target(s.name, s.options, self.settings)
                for s in self.file.targets if names is None or s.name in names}

    def _target(self, name: Any) -> str:
        names = [t.name for t in self.file.targets]
        if not isinstance(name, str) or name not in names:
            raise Refused(f"unknown target {cap(str(name), 80)!r} (targets: {', '.join(names)})")
        return name

    def _rate_state(self) -> dict[str, Any]:
        out = {}
        for tool, rate in (("propose", self.rules.proposals), ("apply", self.rules.applies)):
            out[tool] = {"allowed": rate.text if rate else None,
                         "refusal": self.ledger.rate_refusal(self.actor, tool, rate)}
        return out

    def _gate(self, tool: str) -> None:
        """Refused while the actor's breaker is open, or when ``tool`` is over its rate."""
        state = self.ledger.breaker(self.actor, self.rules)
        if state.open:
            raise Refused(f"the circuit breaker of actor {self.actor!r} is open ({state.why}); a person closes it "
                          f"with `shadow agents reset {self.actor} --by NAME`")
        rate = self.rules.proposals if tool == "propose" else self.rules.applies
        refusal = self.ledger.rate_refusal(self.actor, tool, rate)
        if refusal is not None:
            raise Refused(refusal)

    def _remember(self, run_id: str, record: dict[str, Any]) -> None:
        folder = self.dir / "runs"
        make_private_dir(folder)
        atomic_write_bytes(folder / f"{run_id}.json", json.dumps(record, indent=1).encode())

    def _record(self, run_id: Any) -> dict[str, Any]:
        """This actor's proposal ``run_id`` (or the apply of one); Refused for anything else, saying no more."""
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
            raise Refused(f"{cap(str(run_id), 40)!r} is not a run id (like 20261203-101500-a1b2c3)")
        path = self.dir / "runs" / f"{run_id}.json"
        if path.exists():
            record: dict[str, Any] = json.loads(path.read_text())
            if record.get("actor") == self.actor:
                return record
        raise Refused(f"run {run_id} is not a proposal of actor {self.actor!r}")

    def _latest(self, result: RunResult) -> None:
        """Remember which run last checkpointed each target (describe reads its observation)."""
        latest = self._latest_runs()
        for name, tr in result.targets.items():
            if tr.checkpoint:
                latest[name] = result.run_id
        make_private_dir(self.dir)
        atomic_write_bytes(self.dir / "latest.json", json.dumps(latest).encode())

    def _latest_runs(self) -> dict[str, str]:
        try:
            data = json.loads((self.dir / "latest.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _run_answer(self, result: RunResult) -> dict[str, Any]:
        model = result.to_dict()
        rehearsal = (model["action"] or {}).get("rehearsal") or {}
        return {
            "gateway_format": GATEWAY_FORMAT, "run_id": result.run_id, "command": result.command,
            "verdict": result.outcome.value, "reason": redact.mask_output(result.reason), "passed": result.passed,
            "changes": {t["name"]: t["changes"] for t in model["targets"]},
            "expectations": [v for v in model["expectations"] if v["rule"] not in ("scope", "limit", "max_lock")],
            "rules": [v for v in model["expectations"] if v["rule"] in ("scope", "limit", "max_lock")],
            "findings": model["findings"], "locks": rehearsal.get("locks"),
            "action_output": action_output(rehearsal.get("log")),
            "report": str(Path(result.report_dir) / "report.md"),
        }


def action_output(log: Any) -> str | None:
    """The end of the rehearsal's output (its log, where the action's own known secrets are already masked) as the
    actor may read it: DSN passwords and secret-looking values masked too, at most :data:`MAX_TEXT_CHARS`."""
    if not log:
        return None
    try:
        with Path(str(log)).open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4 * MAX_TEXT_CHARS))  # the end is what says how it went
            text = f.read().decode(errors="replace")
    except (OSError, ValueError):
        return None
    text = redact.mask_output(text)
    return (text if len(text) <= MAX_TEXT_CHARS else "…" + text[1 - MAX_TEXT_CHARS:]) or None


def warm_seconds(policy: Any, settings: Settings) -> float | None:
    from shadow.plan.document import duration

    raw = settings.warm if settings.warm is not None else str(policy.get("warm", "10m"))
    if raw.strip().lower() in ("off", "0", "false", "no", "none"):
        return None
    return duration(raw)


def runs_sql(kind: str) -> bool:
    """Whether targets of ``kind`` run SQL (``Kind.runs_sql``): an SQL action and ``query`` need one."""
    from adapters import REGISTRY

    return bool(REGISTRY[kind].runs_sql)
