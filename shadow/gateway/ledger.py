"""What the gateway remembers about actors — every tool call, rate windows, the circuit breaker — kept as rows of
the journal's hash chain (``notes`` rows whose text is ``gateway {json}``), so ``shadow audit`` vouches for them and
the agent, which has no tool that reaches the journal, cannot touch them. Nothing is kept in memory: a restarted
gateway sees the same windows and the same open breaker.

Events: ``call`` (before a tool acts: actor, tool, digest of its arguments), ``result`` (ok | refused | error, the
run id, whether it counts as a failure for the breaker), ``breaker_open`` and ``breaker_reset`` (by whom).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from shadow.errors import InfrastructureError
from shadow.gateway.config import Rate, Rules
from shadow import state
from shadow.settings import Settings

PREFIX = "gateway "


def digest(arguments: Any) -> str:
    """sha256 of a tool call's arguments, canonical JSON: the journal keeps this, never the arguments."""
    body = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


class Ledger:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def write(self, event: dict[str, Any]) -> None:
        """One event as a chained journal row; an error (exit 3) when the journal cannot be written."""
        journal = state.open_journal(self.settings)
        try:
            journal.note(PREFIX + json.dumps(event, sort_keys=True, ensure_ascii=False))
        except Exception as exc:  # noqa: BLE001 - whatever stops the write, the gateway must not act unrecorded
            raise InfrastructureError(f"cannot write the journal {self.settings.journal_path}: {exc}") from exc
        finally:
            journal.close()

    def events(self, actor: str | None = None) -> list[dict[str, Any]]:
        journal = state.open_journal(self.settings)
        try:
            rows = journal.notes(PREFIX)
        finally:
            journal.close()
        out = []
        for at, text in rows:
            try:
                event = json.loads(text[len(PREFIX):])
            except ValueError:
                continue
            if isinstance(event, dict) and (actor is None or event.get("actor") == actor):
                out.append({**event, "at": at})
        return out

    # -- rate windows --------------------------------------------------------------------------------------------

    def rate_refusal(self, actor: str, tool: str, rate: Rate | None, now: float | None = None) -> str | None:
        """Why a call of ``tool`` is over ``rate`` now, with when the next one is allowed; None when it is not."""
        if rate is None:
            return None
        now = time.time() if now is None else now
        # the calls that went ahead (answered or failed); a refused one used none of the allowance
        calls = [e["at"] for e in self.events(actor) if e.get("event") == "result" and e.get("tool") == tool
                 and e.get("result") != "refused" and e["at"] > now - rate.seconds]
        if len(calls) < rate.count:
            return None
        next_at = min(calls) + rate.seconds
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(next_at))
        return (f"rate limit: {len(calls)} {tool} calls in the last {rate.seconds:g} s (allowed {rate.text}); "
                f"the next is allowed at {when} (in {max(next_at - now, 0):.0f} s)")

    # -- the circuit breaker -------------------------------------------------------------------------------------

    def breaker(self, actor: str, rules: Rules, now: float | None = None) -> Breaker:
        now = time.time() if now is None else now
        events = self.events(actor)
        reset_at = max((e["at"] for e in events if e.get("event") == "breaker_reset"), default=0.0)
        opened = [e for e in events if e.get("event") == "breaker_open" and e["at"] > reset_at]
        failures = [e for e in events if e.get("event") == "result" and e.get("failure") and e["at"] > reset_at
                    and e["at"] > now - rules.breaker_window]
        if opened:
            return Breaker(True, len(failures), opened[-1]["at"], opened[-1].get("why", ""))
        return Breaker(False, len(failures), None, "")

    def count_failure(self, actor: str, rules: Rules) -> None:
        """After a failure was recorded: open the breaker when the window now holds enough of them."""
        state = self.breaker(actor, rules)
        if not state.open and state.failures >= rules.breaker_failures:
            self.write({"event": "breaker_open", "actor": actor,
                        "why": f"{state.failures} refused or failed proposals/applies within "
                               f"{rules.breaker_window:g} s (the breaker opens at {rules.breaker_failures})"})

    def reset(self, actor: str, by: str) -> None:
        self.write({"event": "breaker_reset", "actor": actor, "by": by})


@dataclass(frozen=True)
class Breaker:
    open: bool
    failures: int  # in the current window, since the last reset
    opened_at: float | None
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"state": "open" if self.open else "closed", "failures_in_window": self.failures,
                "opened_at": self.opened_at, "why": self.why or None}
