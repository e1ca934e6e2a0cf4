"""``shadow agents``: what the journal says about each actor of a gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shadow.gateway.config import Rules, load_gateway
from shadow.gateway.ledger import Ledger
from shadow.settings import Settings
from shadow.state import has_journal


def overview(gateway_file: Path | None, settings: Settings) -> list[dict[str, Any]]:
    """One row per actor (named in the gateway file, or seen in the journal): breaker, counts, recent runs."""
    gw = load_gateway(gateway_file, settings.environ) if gateway_file is not None and Path(gateway_file).exists() \
        else None
    if gw is not None:
        settings = gw.settings_for(settings)  # the gateway file's `state:`, unless the environment names one
    ledger = Ledger(settings)
    events = ledger.events() if has_journal(settings) else []
    actors = sorted({a for a in (gw.agents if gw else {}) if a != "default"} |
                    {str(e["actor"]) for e in events if e.get("actor")})
    rows = []
    for actor in actors:
        rules = gw.rules_for(actor) if gw and (actor in gw.agents or "default" in gw.agents) else Rules()
        mine = [e for e in events if e.get("actor") == actor]
        results = [e for e in mine if e.get("event") == "result"]
        rows.append({
            "actor": actor,
            "breaker": ledger.breaker(actor, rules).to_dict() if events else
            {"state": "closed", "failures_in_window": 0, "opened_at": None, "why": None},
            "calls": sum(1 for e in mine if e.get("event") == "call"),
            "proposals": sum(1 for e in results if e.get("tool") == "propose" and e.get("result") == "ok"),
            "applies": sum(1 for e in results if e.get("tool") == "apply" and e.get("result") == "ok"),
            "failures": sum(1 for e in results if e.get("failure")),
            "recent_runs": [{"run_id": e["run_id"], "tool": e["tool"], "verdict": e.get("detail"), "at": e["at"]}
                            for e in results if e.get("run_id")][-10:],
        })
    return rows
