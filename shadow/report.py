"""The run report: one JSON model (``format_version`` 1) and renderers that take only that model.

``shadow show`` re-renders a stored ``report.json``, so every renderer must work from the model alone.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shadow.run import RunResult

FORMAT_VERSION = 1
MAX_IMPLIED = 20


def model(result: RunResult) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "run_id": result.run_id,
        "command": result.command,
        "of_run": result.of_run,
        "plan": result.plan_path,
        "started_at": _iso(result.started_at),
        "finished_at": _iso(result.finished_at) if result.finished_at else None,
        "outcome": result.outcome,
        "exit_code": result.exit_code,
        "reason": result.reason,
        "passed": result.passed,
        "backend": {"name": result.backend, "reason": result.backend_reason},
        "action": {
            "description": result.action,
            "rehearsal": result.rehearsal.to_dict() if result.rehearsal else None,
            "production": result.production.to_dict() if result.production else None,
        },
        "targets": [
            {
                "name": t.name,
                "kind": t.kind,
                "endpoint": t.endpoint,
                "checkpoint": t.checkpoint,
                "changes": [c.to_dict() for c in t.changes],
                "production_changes": None if t.production_changes is None else [c.to_dict() for c in t.production_changes],
                "warnings": t.warnings,
                "restore": t.restore,
            }
            for t in result.targets.values()
        ],
        "expectations": [v.to_dict() for v in result.verdicts],
        "findings": result.findings,
        "divergence": result.divergence,
        "steps": result.steps,
        "report_dir": result.report_dir,
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def render_json(m: dict[str, Any]) -> str:
    return json.dumps(m, indent=2, sort_keys=False, default=str) + "\n"


VERDICT_LINES = {
    "passed": "PASSED — every expectation holds; production was not touched",
    "failed": "FAILED — the rehearsal does not meet the expectations; production was not touched",
    "applied": "APPLIED — production changed exactly as rehearsed",
    "refused": "REFUSED — nothing was applied to production",
    "rolled_back": "ROLLED BACK — production was restored to the checkpoint and verified",
    "restored": "RESTORED — production is back at the checkpoint, verified",
    "restore_failed": "ROLLBACK FAILED — production may be neither at the checkpoint nor at the rehearsed outcome",
    "error": "ERROR",
    "interrupted": "INTERRUPTED",
}


def summary_line(m: dict[str, Any]) -> str:
    head = VERDICT_LINES.get(m["outcome"], m["outcome"]).split(" — ")[0]
    return f"{head}: {m['reason']}" if m.get("reason") else head


def _change_lines(changes: list[dict[str, Any]], depth: int = 0) -> list[str]:
    lines: list[str] = []
    for c in changes:
        detail = c.get("detail") or {}
        extra = ""
        if detail.get("content_diff"):
            extra = " — " + "; ".join(str(x) for x in detail["content_diff"][:3])
        elif "count" in detail:
            extra = f" — {detail['count']} row(s)"
            if detail.get("sample_keys"):
                extra += f", e.g. keys {', '.join(detail['sample_keys'][:3])}"
            if detail.get("compared_as"):
                extra += f" ({detail['compared_as']})"
        elif c["op"] == "alter":
            extra = " — " + "; ".join(
                f"{k}: `{_short(v.get('from'))}` → `{_short(v.get('to'))}`" for k, v in detail.items()
                if isinstance(v, dict)
            )
        lines.append(f"{'  ' * depth}- `{c['address']}`{extra}")
        implied = c.get("implied") or []
        if implied:
            lines += _change_lines(implied[:MAX_IMPLIED], depth + 1)
            if len(implied) > MAX_IMPLIED:
                lines.append(f"{'  ' * (depth + 1)}- … {len(implied) - MAX_IMPLIED} more implied changes")
    return lines


def _prefix_table(changes: list[dict[str, Any]]) -> list[str]:
    """Object changes counted per prefix (the key up to its last '/')."""
    counts: dict[str, dict[str, int]] = {}
    for c in changes:
        if c["kind"] != "object":
            continue
        key = c["name"].split("/", 1)[-1]
        prefix = key.rsplit("/", 1)[0] + "/" if "/" in key else "(top level)"
        row = counts.setdefault(prefix, {"add": 0, "modify": 0, "delete": 0})
        row[c["op"]] = row.get(c["op"], 0) + 1
    if not counts:
        return []
    lines = ["| prefix | added | modified | deleted |", "|---|---|---|---|"]
    lines += [f"| `{p}` | {r['add']} | {r['modify']} | {r['delete']} |" for p, r in sorted(counts.items())]
    return lines + [""]


def _short(value: Any, limit: int = 60) -> str:
    text = str(value).replace("\n", " ").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_markdown(m: dict[str, Any]) -> str:
    out = [f"# shadow {m['command']} — run `{m['run_id']}`", ""]
    out.append(f"**{VERDICT_LINES.get(m['outcome'], m['outcome'])}**")
    if m.get("reason"):
        out += ["", m["reason"]]
    out += ["", f"- plan: `{m['plan']}`", f"- action: {m['action']['description']}"]
    if m.get("of_run"):
        out.append(f"- rolls back run: `{m['of_run']}`")
    if m["backend"]["name"]:
        out.append(f"- shadow backend: {m['backend']['name']} ({m['backend']['reason']})")
    out.append(f"- started: {m['started_at']}, finished: {m['finished_at']}")
    for label, key in (("rehearsal", "rehearsal"), ("production", "production")):
        a = m["action"].get(key)
        if a:
            state = "succeeded" if a["ok"] else "FAILED"
            mode = f", {a['mode']}" if a.get("mode") else ""
            out.append(f"- action on {label}: {state} in {a['seconds']:.2f} s{mode}")
            if a.get("error"):
                out.append(f"  - {a['error'].splitlines()[0]}")
    expectations = m["expectations"]
    if expectations:
        out += ["", "## Expectations", "", "| | target | rule | subject | result |", "|---|---|---|---|---|"]
        for v in expectations:
            mark = "✅" if v["ok"] else "❌"
            out.append(f"| {mark} | {v['target']} | {v['rule']} | `{_cell(v['subject'])}` | {_cell(v['message'])} |")
    findings = m.get("findings") or []
    if findings:
        out += ["", "## Static findings", "", "| | id | where | finding | fix |", "|---|---|---|---|---|"]
        for f in findings:
            mark = "allowed" if f["allowed"] else {"error": "❌", "warning": "⚠️", "info": "ℹ️"}.get(f["severity"], "")
            out.append(f"| {mark} | `{f['id']}` | `{f['file']}:{f['line']}` | {_cell(f['message'])} | {_cell(f['hint'])} |")
    for t in m["targets"]:
        out += ["", f"## Target `{t['name']}` ({t['kind']})", "", f"- endpoint: `{t['endpoint']}`"]
        cp = t.get("checkpoint")
        if cp:
            for role, art in (cp.get("artifacts") or {}).items():
                out.append(f"- checkpoint {role}: sha256 `{art['sha256'][:16]}…`, {art['size']:,} bytes")
            out.append(f"- fingerprint: `{cp['fingerprint'][:16]}…`")
        for w in t.get("warnings") or []:
            out.append(f"- ⚠️ {w}")
        out += ["", "### Changes in the rehearsal", ""]
        out += _prefix_table(t["changes"])
        out += _change_lines(t["changes"]) or ["_no changes_"]
        if t.get("production_changes") is not None:
            out += ["", "### Changes observed in production", ""]
            out += _change_lines(t["production_changes"]) or ["_no changes_"]
        if t.get("restore"):
            r = t["restore"]
            state = "verified" if r.get("verified") else "NOT VERIFIED"
            out += ["", f"### Restore: {state}" + ("" if r.get("needed", True) else " (not needed)")]
            for d in r.get("differences") or []:
                out.append(f"- {d}")
            if r.get("error"):
                out.append(f"- {r['error']}")
    trace = (m["action"].get("rehearsal") or {}).get("locks") or []
    if any(step["locks"] or step["rewrote"] for step in trace):
        out += ["", "## Lock trace (rehearsal)", "", "| statement | relation | lock | held s | rewrote |",
                "|---|---|---|---|---|"]
        for step in trace:
            rewrote = ", ".join(step["rewrote"])
            for lock in step["locks"] or [{"relation": "", "mode": "", "seconds": step["seconds"]}]:
                out.append(f"| `{step['statement']}` {_cell(step['text'][:50])} | {lock['relation']} | {lock['mode']} "
                           f"| {lock['seconds']:.2f} | {rewrote if not lock['relation'] or lock['relation'] in step['rewrote'] else ''} |")
    if m.get("divergence"):
        out += ["", "## Divergence between rehearsal and production", ""] + [f"- {d}" for d in m["divergence"]]
    if m.get("steps"):
        out += ["", "## Steps", "", "| step | target | seconds | state |", "|---|---|---|---|"]
        for s in m["steps"]:
            out.append(f"| {s['step']} | {s.get('target') or ''} | {s['seconds']:.2f} | {s['state']} |")
    return "\n".join(out) + "\n"


def _cell(text: Any) -> str:
    return _short(text, 200).replace("|", "\\|")
