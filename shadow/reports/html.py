"""The report model as one self-contained HTML page: the verdict at the top, then everything a reviewer checks.

The page fetches nothing and runs no script: CSS is inline and a Content-Security-Policy ``<meta>`` forbids every
other source, so it can be uploaded as a CI artifact and opened anywhere. Every value from the model goes through
:func:`~shadow.reports.html_changes.esc` — table names, SQL, row values and S3 keys are data, never markup.

Works from the model alone (``shadow show RUN_ID --format html`` re-renders a stored ``report.json``). Long lists are
cut at a fixed number of entries with a count of the rest, so a change set of millions stays a page a browser opens;
change sets are drawn by :mod:`shadow.reports.html_changes`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from shadow.reports.common import share_text, verdict_line
from shadow.reports.html_changes import change_count, changes_html, esc, html_table

MAX_ROWS = 1_000  # rows shown per table (expectations, findings, lock trace, steps, divergence)
_OK_OUTCOMES = {"passed", "applied", "restored"}
_WARN_OUTCOMES = {"rolled_back", "interrupted", "running"}

CSS = """
:root { --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --muted: #57606a; --line: #d0d7de; --soft: #f6f8fa;
  --add: #dafbe1; --del: #ffebe9; --chg: #fff8c5; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; }
main { max-width: 1200px; margin: 0 auto; padding: 0 24px 48px; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
h1 { font-size: 20px; margin: 20px 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line);
  padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
.verdict { padding: 18px 24px; color: #fff; } .verdict.ok { background: var(--ok); }
.verdict.bad { background: var(--bad); } .verdict.warn { background: var(--warn); }
.verdict .word { font-size: 28px; font-weight: 700; letter-spacing: .5px; }
.verdict .line { font-size: 15px; } .verdict .reason { margin-top: 6px; font-size: 14px; opacity: .95;
  overflow-wrap: anywhere; }
.verdict .run { float: right; font-size: 13px; opacity: .9; text-align: right; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 12px 0; }
.facts dt { color: var(--muted); } .facts dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 6px 0 10px; } th, td { border: 1px solid var(--line); padding: 3px 8px;
  text-align: left; vertical-align: top; } th { background: var(--soft); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; max-width: 100%; }
.pass { color: var(--ok); font-weight: 700; } .fail { color: var(--bad); font-weight: 700; }
.warning { color: var(--warn); font-weight: 700; } .muted { color: var(--muted); }
tr.failed td { background: var(--del); }
ul.changes { list-style: none; padding-left: 0; margin: 4px 0; } ul.changes ul.changes { padding-left: 22px; }
li.change { margin: 6px 0; }
.op { display: inline-block; min-width: 58px; padding: 0 6px; border-radius: 10px; font-size: 12px; text-align: center;
  background: var(--soft); border: 1px solid var(--line); }
.op-add, .op-insert { background: var(--add); } .op-drop, .op-delete { background: var(--del); }
.op-alter, .op-update, .op-modify { background: var(--chg); }
td.chg { background: var(--chg); font-weight: 600; } tr.before td.chg { background: var(--del); }
tr.after td.chg { background: var(--add); } td.side { color: var(--muted); font-style: italic; }
td.null { color: var(--muted); font-style: italic; }
tr.before td { border-top: 2px solid #8c959f; }
pre { margin: 4px 0; padding: 6px 8px; background: var(--soft); border: 1px solid var(--line); overflow-x: auto;
  max-height: 360px; white-space: pre-wrap; overflow-wrap: anywhere; }
pre.diff span { display: block; } pre.diff .add { background: var(--add); } pre.diff .del { background: var(--del); }
pre.diff .hunk { color: var(--muted); }
.bar { display: inline-block; height: 9px; background: #54aeff; border-radius: 2px; vertical-align: middle; }
.more { color: var(--muted); font-style: italic; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
"""


def render_html(m: dict[str, Any]) -> str:
    """One self-contained HTML5 page (str)."""
    word = verdict_line(m).split(" — ")[0]
    title = f"{word} · shadow {m.get('command') or ''} · run {m['run_id']}"
    body = [_verdict(m), "<main>", *_summary(m), *_targets_table(m)]
    body += _section("expectations", "Expectations", _expectations(m.get("expectations") or []))
    body += _section("findings", "Static findings", _findings(m.get("findings") or []))
    for i, t in enumerate(m.get("targets") or []):
        body += _target(t, i)
    body += _section("locks", "Lock trace (rehearsal)", _locks((m["action"].get("rehearsal") or {}).get("locks") or []))
    body += _section("divergence", "Divergence between rehearsal and production",
                     _list(m.get("divergence") or [], lambda d: esc(d), "differences"))
    body += _section("time", "Where the time went", _time(m.get("timing")))
    body += _section("steps", "Steps", _steps(m.get("steps") or []))
    body += _section("checkpoints", "Checkpoints", _checkpoints(m))
    body += [_footer(m), "</main>"]
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # Nothing but the inline stylesheet may load: no scripts, no fonts, no images from anywhere.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        '<meta name="generator" content="shadow">',
        f"<title>{esc(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        *body,
        "</body>",
        "</html>",
    ]) + "\n"


def _tone(m: dict[str, Any]) -> str:
    if m["outcome"] in _OK_OUTCOMES and m.get("exit_code", 0) == 0:
        return "ok"
    return "warn" if m["outcome"] in _WARN_OUTCOMES else "bad"


def _verdict(m: dict[str, Any]) -> str:
    word, _, rest = verdict_line(m).partition(" — ")
    parts = [f'<header id="verdict" class="verdict {_tone(m)}" role="status" data-outcome="{esc(m["outcome"])}">',
             f'<div class="run">shadow {esc(m.get("command") or "")}<br>'
             f'run <span class="mono">{esc(m["run_id"])}</span>'
             f"<br>exit code {esc(m.get('exit_code'))}</div>",
             f'<div class="word">{esc(word)}</div>']
    if rest:
        parts.append(f'<div class="line">{esc(rest)}</div>')
    if m.get("reason"):
        parts.append(f'<div class="reason">{esc(m["reason"])}</div>')
    failed = sum(1 for v in m.get("expectations") or [] if not v["ok"])
    total = len(m.get("expectations") or [])
    changes = sum(change_count(t.get("changes") or []) for t in m.get("targets") or [])
    parts.append(f'<div class="line">{total - failed} of {total} expectations hold · '
                 f"{changes:,} changes in the rehearsal · {len(m.get('targets') or [])} target(s)</div>")
    return "\n".join(parts + ["</header>"])


def _section(anchor: str, heading: str, content: list[str]) -> list[str]:
    if not content:
        return []
    return [f'<section id="{anchor}">', f"<h2>{esc(heading)}</h2>", *content, "</section>"]


def _summary(m: dict[str, Any]) -> list[str]:
    facts: list[tuple[str, str]] = [("plan", f"<code>{esc(m.get('plan') or '')}</code>"),
                                    ("action", esc(m["action"].get("description") or ""))]
    if m.get("of_run"):
        facts.append(("rolls back run", f"<code>{esc(m['of_run'])}</code>"))
    backend = m.get("backend") or {}
    if backend.get("name"):
        facts.append(("shadow backend",
                      f"{esc(backend['name'])} <span class='muted'>({esc(backend.get('reason'))})</span>"))
    facts.append(("started", esc(m.get("started_at"))))
    facts.append(("finished", esc(m.get("finished_at") or "unfinished")))
    for label, key in (("action on the shadow", "rehearsal"), ("action on production", "production")):
        a = m["action"].get(key)
        if a:
            state = '<span class="pass">succeeded</span>' if a["ok"] else '<span class="fail">FAILED</span>'
            mode = f", {esc(a['mode'])}" if a.get("mode") else ""
            text = f"{state} in {float(a['seconds']):.2f} s{mode}"
            if a.get("error"):
                text += f"<pre>{esc(a['error'])}</pre>"
            facts.append((label, text))
    if m.get("redact"):
        facts.append(("redacted columns", ", ".join(f"<code>{esc(p)}</code>" for p in m["redact"])
                      + " <span class='muted'>(plus secret-looking names)</span>"))
    rows = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return [f'<h1>shadow {esc(m.get("command") or "")} — run <span class="mono">{esc(m["run_id"])}</span></h1>',
            f'<dl class="facts" id="summary">{rows}</dl>']


def _targets_table(m: dict[str, Any]) -> list[str]:
    targets = m.get("targets") or []
    if not targets:
        return []
    head = "<tr><th>target</th><th>kind</th><th>endpoint</th><th>changes (rehearsal)</th><th>in production</th></tr>"
    rows = []
    for i, t in enumerate(targets):
        prod = t.get("production_changes")
        rows.append(f'<tr><td><a href="#target-{i}">{esc(t["name"])}</a></td><td>{esc(t["kind"])}</td>'
                    f'<td><code>{esc(t.get("endpoint") or "")}</code></td>'
                    f'<td class="num">{change_count(t.get("changes") or []):,}</td>'
                    f'<td class="num">{"—" if prod is None else f"{change_count(prod):,}"}</td></tr>')
    return _section("targets", "Targets", [html_table(head, rows)])


def _capped(items: Sequence[Any], limit: int, noun: str,
            first: Callable[[Any], bool] = lambda _x: False) -> tuple[list[Any], str]:
    """Up to ``limit`` items, those for which ``first`` holds first; and the note on what was left out."""
    if len(items) <= limit:
        return list(items), ""
    ordered = sorted(items, key=lambda x: not first(x))
    return ordered[:limit], f"… and {len(items) - limit:,} more {noun} — report.json has them all"


def _expectations(verdicts: list[dict[str, Any]]) -> list[str]:
    if not verdicts:
        return []
    shown, more = _capped(sorted(verdicts, key=lambda v: v["ok"]), MAX_ROWS, "expectations")
    head = "<tr><th></th><th>target</th><th>rule</th><th>subject</th><th>result</th></tr>"
    rows = [f'<tr class="{"ok" if v["ok"] else "failed"}"><td class="{"pass" if v["ok"] else "fail"}">'
            f'{"✓" if v["ok"] else "✗"}</td><td>{esc(v.get("target") or "")}</td><td>{esc(v["rule"])}</td>'
            f'<td><code>{esc(v["subject"])}</code></td><td>{esc(v["message"])}</td></tr>' for v in shown]
    return [html_table(head, rows, more)]


def _findings(findings: list[dict[str, Any]]) -> list[str]:
    if not findings:
        return []
    shown, more = _capped(findings, MAX_ROWS, "findings", _blocking)
    head = "<tr><th></th><th>id</th><th>where</th><th>finding</th><th>fix</th></tr>"
    rows = []
    for f in shown:
        if f.get("allowed"):
            mark = '<span class="muted">allowed</span>'
        else:
            mark = {"error": '<span class="fail">error</span>', "warning": '<span class="warning">warning</span>'}.get(
                f["severity"], f'<span class="muted">{esc(f["severity"])}</span>')
        statement = f"<pre>{esc(f['statement'])}</pre>" if f.get("statement") else ""
        rows.append(f'<tr class="{"failed" if _blocking(f) else ""}"><td>{mark}</td>'
                    f'<td><code>{esc(f["id"])}</code></td>'
                    f'<td><code>{esc(f.get("file"))}:{esc(f.get("line"))}</code></td>'
                    f'<td>{esc(f["message"])}{statement}</td>'
                    f'<td>{esc(f.get("hint") or "")}</td></tr>')
    return [html_table(head, rows, more)]


def _blocking(f: dict[str, Any]) -> bool:
    return f["severity"] == "error" and not f.get("allowed")


def _target(t: dict[str, Any], index: int) -> list[str]:
    out = [f'<section class="target" id="target-{index}">',
           f'<h2>Target <code>{esc(t["name"])}</code> <span class="muted">({esc(t["kind"])})</span></h2>',
           f'<p>endpoint <code>{esc(t.get("endpoint") or "")}</code></p>']
    out += [f'<p class="warning">⚠ {esc(w)}</p>' for w in t.get("warnings") or []]
    out += ["<h3>Changes in the rehearsal</h3>", *changes_html(t.get("changes") or [])]
    if t.get("production_changes") is not None:
        out += ["<h3>Changes observed in production</h3>", *changes_html(t["production_changes"])]
    restore = t.get("restore")
    if restore:
        state = '<span class="pass">verified</span>' if restore.get("verified") else '<span class="fail">NOT VERIFIED</span>'
        needed = "" if restore.get("needed", True) else " (not needed)"
        out.append(f"<h3>Restore: {state}{needed}</h3>")
        for key in ("note", "error"):
            if restore.get(key):
                out.append(f"<p>{esc(restore[key])}</p>")
        out += _list(restore.get("differences") or [], esc, "differences")
    return out + ["</section>"]


def _locks(trace: list[dict[str, Any]]) -> list[str]:
    if not any(step["locks"] or step["rewrote"] for step in trace):
        return []
    rows_in = [(step, lock) for step in trace
               for lock in step["locks"] or [{"relation": "", "mode": "", "seconds": step["seconds"]}]]
    shown, more = _capped(rows_in, MAX_ROWS, "lock trace rows")
    head = "<tr><th>statement</th><th>relation</th><th>lock</th><th>held s</th><th>rewrote</th></tr>"
    rows = []
    for step, lock in shown:
        rewrote = ", ".join(step["rewrote"]) if not lock["relation"] or lock["relation"] in step["rewrote"] else ""
        strong = ' class="fail"' if lock["mode"] == "ACCESS EXCLUSIVE" else ""
        rows.append(f'<tr><td><code>{esc(step["statement"])}</code> {esc(step["text"][:80])}</td>'
                    f'<td>{esc(lock["relation"])}</td><td{strong}>{esc(lock["mode"])}</td>'
                    f'<td class="num">{float(lock["seconds"]):.3f}</td><td>{esc(rewrote)}</td></tr>')
    return [html_table(head, rows, more)]


def _steps(steps: list[dict[str, Any]]) -> list[str]:
    if not steps:
        return []
    shown, more = _capped(steps, MAX_ROWS, "steps")
    longest = max(float(s.get("seconds") or 0) for s in steps) or 1.0
    total = sum(float(s.get("seconds") or 0) for s in steps)
    head = "<tr><th>step</th><th>target</th><th>seconds</th><th></th><th>state</th></tr>"
    rows = []
    for s in shown:
        seconds = float(s.get("seconds") or 0)
        width = max(1, round(240 * seconds / longest))
        text = f'found: {s["problem"]}' if s.get("problem") else s["state"]
        state = f'<span class="{"pass" if s["state"] == "done" else "fail"}">{esc(text)}</span>'
        rows.append(f'<tr><td>{esc(s["step"])}</td><td>{esc(s.get("target") or "")}</td>'
                    f'<td class="num">{seconds:.2f}</td><td><span class="bar" style="width: {width}px"></span></td>'
                    f"<td>{state}</td></tr>")
    rows.append(f'<tr><th colspan="2">total</th><td class="num">{total:.2f}</td><td></td><td></td></tr>')
    return [html_table(head, rows, more)]


def _time(timing: dict[str, Any] | None) -> list[str]:
    """Each step per target once: its seconds and its share of the run's wall time, then the rest and the total."""
    if not timing or not timing["by_step"]:
        return []
    shown, more = _capped(timing["by_step"], MAX_ROWS, "steps")
    head = "<tr><th>step</th><th>target</th><th>seconds</th><th>share</th><th></th></tr>"
    rows = [f'<tr><td>{esc(s["step"])}</td><td>{esc(s.get("target") or "")}</td>'
            f'<td class="num">{float(s["seconds"]):.2f}</td><td class="num">{esc(share_text(s["share"]))}</td>'
            f'<td><span class="bar" style="width: {max(1, round(240 * float(s["share"] or 0)))}px"></span></td></tr>'
            for s in shown]
    total = timing.get("total_seconds")
    if total is not None:
        outside = float(timing["outside_steps_seconds"])
        rows.append('<tr><td colspan="2" class="muted">outside the steps (starting and ending the run, waiting for '
                    "the targets' locks)</td>" f'<td class="num">{outside:.2f}</td><td></td><td></td></tr>')
        rows.append(f'<tr><th colspan="2">total</th><td class="num">{float(total):.2f}</td>'
                    f'<td class="num">100 %</td><td></td></tr>')
    return [html_table(head, rows, more)]


def _checkpoints(m: dict[str, Any]) -> list[str]:
    rows = []
    for t in m.get("targets") or []:
        cp = t.get("checkpoint")
        if not cp:
            continue
        ids = [f"fingerprint <code>{esc(cp.get('fingerprint'))}</code>"]
        ids += [f"{esc(role)}: sha256 <code>{esc(a.get('sha256'))}</code>, {int(a.get('size') or 0):,} bytes"
                for role, a in (cp.get("artifacts") or {}).items()]
        extra = [f"{esc(k)} {esc(cp[k])}" for k in ("server_version", "mode", "objects", "copied_bytes") if cp.get(k)]
        rows.append(f'<tr><td>{esc(t["name"])}</td><td>{"<br>".join(ids)}</td><td>{"<br>".join(extra)}</td></tr>')
    if not rows:
        return []
    head = "<tr><th>target</th><th>checkpoint ids</th><th></th></tr>"
    note = (f"<p>Production can be put back to these checkpoints with <code>shadow rollback {esc(m['run_id'])}</code> "
            "after an apply.</p>") if m.get("command") == "apply" else ""
    return [html_table(head, rows), note] if note else [html_table(head, rows)]


def _list(items: list[Any], render: Callable[[Any], str], noun: str) -> list[str]:
    if not items:
        return []
    shown, more = _capped(items, MAX_ROWS, noun)
    out = ["<ul>", *(f"<li>{render(i)}</li>" for i in shown), "</ul>"]
    return out + ([f'<p class="more">{more}</p>'] if more else [])


def _footer(m: dict[str, Any]) -> str:
    return (f'<footer>shadow report, format_version {esc(m.get("format_version"))} · the same model as '
            f'<code>report.json</code> (<code>shadow show {esc(m["run_id"])} --format json</code>) · row values of '
            "secret-looking columns and of <code>policy.redact</code> are shown as <code>[redacted]</code></footer>")
