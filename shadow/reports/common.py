"""What the Markdown and the HTML report (and the terminal) read the same way from the model: the verdict line,
where the time went, catalog codes as words, a changed definition as a diff, and the cells an updated row changed."""

from __future__ import annotations

import os.path
from typing import Any

from shadow.outcome import Outcome

# Catalog codes, as words: pg_trigger.tgenabled, pg_rewrite.ev_enabled, pg_event_trigger.evtenabled
# (https://www.postgresql.org/docs/current/catalog-pg-trigger.html).
ENABLED_WORDS = {"O": "enabled", "D": "disabled", "R": "enabled on replicas only", "A": "always enabled"}
CODED_KINDS = ("trigger", "rule", "event_trigger")
DIFF_LINES = 40  # a definition's unified diff is cut after this many lines (whole lines only)
DIFF_LINE_CHARS = 300
DIFF_LEAD_CHARS = 60  # a long changed line is cut this many characters before where it differs


def verdict_line(m: dict[str, Any]) -> str:
    """The headline of a run: the outcome's word and what happened to production, as this run's facts say."""
    outcome = m["outcome"]
    if outcome == "refused" and m.get("command") == "rollback":
        return "REFUSED — nothing was restored; production was left as it is"
    restores = [t.get("restore") or {} for t in m.get("targets") or []]
    if outcome in ("restored", "rolled_back") and restores and all(r.get("mode") in ("undo", "tables")
                                                                    for r in restores):
        return f"{Outcome(outcome).verdict.split(' — ')[0]} — {_undone(restores)}"
    if outcome == "rolled_back":
        # Only a one-transaction apply's ROLLBACK says "rolled back" (shadow.production.apply_in_one_transaction).
        if restores and all(r.get("transaction") == "rolled back" for r in restores):
            return "ROLLED BACK — the transaction was rolled back; production was never changed"
        if restores and not any(r.get("needed", True) for r in restores):
            return "ROLLED BACK — production still equals the checkpoint (verified); nothing needed restoring"
    try:
        return Outcome(outcome).verdict
    except ValueError:  # an outcome this version does not know (a report from another version)
        return str(outcome)


def _undone(restores: list[dict[str, Any]]) -> str:
    """What undoing only a run's own change (:mod:`shadow.undoing`) did to production, as its restores say: a
    forced undo puts back what others wrote since to what the run changed (``conflicts``), and says how much."""
    done = ("the run's own change was undone and verified" if all(r.get("verified") for r in restores)
            else "the run's own change was undone but the undo did not verify")
    overwritten = sum(len(r.get("conflicts") or []) for r in restores)
    if overwritten:
        return (f"{done}, overwriting others' later writes to {overwritten} row(s), table(s) or object(s) it had "
                "changed; every other write was kept")
    return f"{done}; everyone else's writes were kept"


def summary_line(m: dict[str, Any]) -> str:
    head = verdict_line(m).split(" — ")[0]
    return f"{head}: {m['reason']}" if m.get("reason") else head


def time_line(m: dict[str, Any]) -> str | None:
    """Where the run's time went, on one line — each step's seconds summed over its targets, then the time outside
    any step and the total: ``time: checkpoint 3.9 s · shadow 12.1 s · … · other 0.3 s · total 19.0 s``.
    None for a report from before the model had ``timing``."""
    timing = m.get("timing")
    if not timing:
        return None
    per_step: dict[str, float] = {}
    for s in timing["by_step"]:
        per_step[s["step"]] = per_step.get(s["step"], 0.0) + s["seconds"]
    parts = [f"{step} {seconds:.1f} s" for step, seconds in per_step.items()]
    if timing.get("total_seconds") is not None:
        parts += [f"other {timing['outside_steps_seconds']:.1f} s", f"total {timing['total_seconds']:.1f} s"]
    return "time: " + " · ".join(parts)


def share_text(share: float | None) -> str:
    """A step's share of the run's time, as a reader reads it: ``42 %``, ``<1 %``; empty when unknown."""
    if share is None:
        return ""
    return "<1 %" if 0 < share < 0.005 else f"{share * 100:.0f} %"


def property_value(kind: str, key: str, value: Any) -> Any:
    """A property's value as a reader reads it: catalog codes as words."""
    if key == "enabled" and kind in CODED_KINDS and isinstance(value, str):
        return ENABLED_WORDS.get(value, value)
    return value


def is_text_block(before: Any, after: Any) -> bool:
    """Whether a changed property is a text (a definition) better shown as a diff than as before → after."""
    texts = [v for v in (before, after) if isinstance(v, str)]
    return bool(texts) and all(isinstance(v, (str, type(None))) for v in (before, after)) and any(
        "\n" in v or len(v) > 60 for v in texts)


def definition_diff(before: Any, after: Any, limit: int = DIFF_LINES) -> list[str]:
    """A unified diff of two texts (no file headers), cut after ``limit`` whole lines with a count of the rest; a
    line too long to show whole is cut around where it differs (:func:`_cut`)."""
    import difflib

    lines = list(difflib.unified_diff(str(before or "").splitlines(), str(after or "").splitlines(),
                                      lineterm="", n=2))[2:]
    removed, added = [line[1:] for line in lines if line[:1] == "-"], [line[1:] for line in lines if line[:1] == "+"]
    lines = [_cut(line, {"-": added, "+": removed}.get(line[:1], [])) for line in lines]
    if len(lines) > limit:
        lines = lines[:limit] + [f"… {len(lines) - limit} more lines of the diff (report.json has both texts)"]
    return lines


def _cut(line: str, counterparts: list[str]) -> str:
    """Diff line ``line`` in at most about ``DIFF_LINE_CHARS`` characters, with … where text was left out. A removed
    or added line is cut around the first character where it differs from its closest counterpart on the other side
    (the one it shares the longest start with): a one-line definition changed past the cut would otherwise read the
    same on both sides."""
    if len(line) <= DIFF_LINE_CHARS:
        return line
    sign, body = line[:1], line[1:]
    at = max((len(os.path.commonprefix([body, other])) for other in counterparts), default=0)
    width = DIFF_LINE_CHARS - 3  # the sign and an ellipsis on each side
    start = max(0, at - DIFF_LEAD_CHARS)  # the same on both sides of a change: they line up
    end = start + width
    return sign + ("…" if start else "") + body[start:end] + ("…" if end < len(body) else "")


def changed_cells(sample: dict[str, Any] | None) -> list[tuple[str, Any, Any]]:
    """(column, before, after) of each cell an updated sample row changed; a column the row did not have is None."""
    if not sample or sample.get("before") is None or sample.get("after") is None:
        return []
    before, after = sample["before"], sample["after"]
    return [(col, before.get(col), after.get(col)) for col in dict.fromkeys([*before, *after])
            if before.get(col) != after.get(col)]
