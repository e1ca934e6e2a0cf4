"""The report model as GitHub-flavoured Markdown: the terminal (``shadow show``), ``runs/<id>/report.md`` and
pull-request comments read the same text, so it always fits in one comment however large the change.

Every long list or table is a :class:`_Part` that the size budget may shorten, by whole rows and items only,
ending with a count of what it left out.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from shadow.changes import implied_count
from shadow.reports.common import (CODED_KINDS, changed_cells, definition_diff, is_text_block, property_value,
                                   share_text, verdict_line)

MD_LIMIT = 65_536  # GitHub's limit on a comment body, in characters
MD_BUDGET = 60_000  # what lists and tables are shortened to, leaving room for a header a CI job puts around it
LEFT_OUT = "the rest of this report is left out (too long for one comment) — report.json has all of it"
COLLAPSE_OVER = 5  # longer lists of implied changes, lock-trace rows and steps are collapsed into <details>
MAX_IMPLIED = 20  # implied changes listed under a change
_HTML_TAG = re.compile(r"<(?=[A-Za-z/!?])")


@dataclass
class _Part:
    """A list or table the size budget may shorten: whole rows or items only, then how many were left out.

    Rows are rendered only when asked for, so a change set of millions costs what fits in a comment, not more.
    """

    rows: Sequence[Any]  # entries of the model
    render_row: Callable[[Any], str]  # one table row, or one list item with everything nested under it
    noun: str  # "changes" → "… and 1,234 more changes"
    head: list[str] = field(default_factory=list)  # a table's header and delimiter rows
    summary: str = ""  # collapsed into <details> with this summary when set
    count: Callable[[Any], int] = lambda _row: 1  # how many things a row stands for in the "… and N more" count
    first: Callable[[Any], bool] = lambda _row: False  # shown first when shortened (failed expectations, errors)
    first_word: str = ""  # "failed" → "… and 12 more expectations (3 failed)"
    _texts: dict[int, str] = field(default_factory=dict, init=False, repr=False)

    def size(self, limit: float) -> int:
        """The size of the whole part, or a size over ``limit`` once it is clear that it is longer."""
        used = _size(self._wrap([], ""))
        for i in range(len(self.rows)):
            if used > limit:
                break
            used += _size([self._row(i)])
        return used

    def render(self, budget: float) -> list[str]:
        if self.size(budget) <= budget:
            return self._wrap([self._row(i) for i in range(len(self.rows))], "")
        order = sorted(range(len(self.rows)), key=lambda i: not self.first(self.rows[i]))  # stable
        counts = [(self.count(row), self.first(row)) for row in self.rows]
        rest, rest_first = sum(n for n, _ in counts), sum(n for n, first in counts if first)
        used = _size(self._wrap([], self._note(rest, rest_first)))  # the longest note it can need
        shown: list[str] = []
        for i in order:
            cost = _size([self._row(i)])
            if used + cost > budget:
                break
            shown.append(self._row(i))
            used += cost
            rest -= counts[i][0]
            rest_first -= counts[i][0] if counts[i][1] else 0
        note = self._note(rest, rest_first)
        return self._wrap(shown, note) if shown else ["", note]

    def _row(self, i: int) -> str:
        if i not in self._texts:
            self._texts[i] = self.render_row(self.rows[i])
        return self._texts[i]

    def _wrap(self, body: list[str], note: str) -> list[str]:
        out = ["<details>", f"<summary>{self.summary}</summary>", ""] if self.summary else []
        out += self.head + body
        if note:  # after a blank line: a line right below a table would become one of its rows
            out += ["", note]
        return out + (["", "</details>"] if self.summary else [])

    def _note(self, rest: int, rest_first: int) -> str:
        extra = f" ({rest_first:,} {self.first_word})" if self.first_word and rest_first else ""
        return f"… and {rest:,} more {self.noun}{extra} — report.json has them all"


Block = list[str] | _Part


def render_markdown(m: dict[str, Any]) -> str:
    """GitHub-flavoured Markdown, always under :data:`MD_LIMIT` characters (a pull-request comment)."""
    blocks = _markdown_blocks(m)
    parts = [b for b in blocks if isinstance(b, _Part)]
    fixed = sum(_size(b) for b in blocks if not isinstance(b, _Part))
    shares = iter(_share([p.size(MD_BUDGET) for p in parts], MD_BUDGET - fixed))
    out: list[str] = []
    size = 0
    for block in blocks:
        lines = block.render(next(shares)) if isinstance(block, _Part) else block
        # Only when the fixed text alone is too long (hundreds of targets): whole blocks are left out, never a piece.
        if size + _size(lines) > MD_LIMIT - 200:
            out += ["", f"… {LEFT_OUT}"]
            break
        out += lines
        size += _size(lines)
    return "\n".join(out) + "\n"


def _share(sizes: list[int], budget: int) -> list[float]:
    """Split ``budget`` max-min fairly: parts that fit get their size, the long ones share the rest equally."""
    out = [0.0] * len(sizes)
    left = float(max(budget, 0))
    order = sorted(range(len(sizes)), key=sizes.__getitem__)
    for n, i in enumerate(order):
        out[i] = min(float(sizes[i]), left / (len(order) - n))
        left -= out[i]
    return out


def _size(lines: list[str]) -> int:
    # UTF-16 code units, one more per newline: never fewer than the characters GitHub counts, however it counts them.
    return sum(len(line.encode("utf-16-le")) // 2 + 1 for line in lines)


def _markdown_blocks(m: dict[str, Any]) -> list[Block]:
    out = [f"# shadow {m['command']} — run `{m['run_id']}`", ""]
    out.append(f"**{verdict_line(m)}**")
    if m.get("reason"):
        out += ["", _text(m["reason"], 2000)]
    out += ["", f"- plan: `{_short(m['plan'], 300)}`", f"- action: {_text(m['action']['description'], 300)}"]
    if m.get("of_run"):
        out.append(f"- rolls back run: `{m['of_run']}`")
    if m["backend"]["name"]:
        out.append(f"- shadow backend: {m['backend']['name']} ({_text(m['backend']['reason'], 300)})")
    out.append(f"- started: {m['started_at']}, finished: {m['finished_at']}")
    for label, key in (("rehearsal", "rehearsal"), ("production", "production")):
        a = m["action"].get(key)
        if a:
            state = "succeeded" if a["ok"] else "FAILED"
            mode = f", {a['mode']}" if a.get("mode") else ""
            out.append(f"- action on {label}: {state} in {a['seconds']:.2f} s{mode}")
            if a.get("error"):
                out.append(f"  - {_text(a['error'].splitlines()[0], 500)}")
    blocks: list[Block] = [out]
    if m["expectations"]:
        blocks += [["", "## Expectations", ""], _Part(
            m["expectations"], _expectation_row, "expectations",
            ["| | target | rule | subject | result |", "|---|---|---|---|---|"],
            first=lambda v: not v["ok"], first_word="failed")]
    if m.get("findings"):
        blocks += [["", "## Static findings", ""], _Part(
            m["findings"], _finding_row, "findings", ["| | id | where | finding | fix |", "|---|---|---|---|---|"],
            first=lambda f: f["severity"] == "error" and not f["allowed"], first_word="errors")]
    for t in m["targets"]:
        blocks += _target_blocks(t)
    blocks += _lock_blocks((m["action"].get("rehearsal") or {}).get("locks") or [])
    if m.get("divergence"):
        blocks += [["", "## Divergence between rehearsal and production", ""],
                   _Part(m["divergence"], lambda d: f"- {_text(d, 500)}", "differences")]
    blocks += _time_blocks(m.get("timing"))
    if m.get("steps"):
        steps = m["steps"]
        seconds = sum(s["seconds"] for s in steps)
        summary = f"{len(steps):,} steps, {seconds:,.2f} s" if len(steps) > COLLAPSE_OVER else ""
        blocks += [["", "## Steps", ""], _Part(steps, _step_row, "steps", ["| step | target | seconds | state |",
                                                                          "|---|---|---|---|"], summary)]
    return blocks


def _time_blocks(timing: dict[str, Any] | None) -> list[Block]:
    """Where the time went: each step per target once, its seconds and its share of the run's wall time."""
    if not timing or not timing["by_step"]:
        return []
    total = timing.get("total_seconds")
    head = ["", "## Where the time went", ""]
    if total is not None:
        head += [f"{total:,.2f} s in all: {timing['in_steps_seconds']:,.2f} s in the steps below, "
                 f"{timing['outside_steps_seconds']:,.2f} s outside them (starting and ending the run, waiting for "
                 "the targets' locks).", ""]
    return [head, _Part(timing["by_step"], _time_row, "steps", ["| step | target | seconds | share |",
                                                                "|---|---|---|---|"])]


def _time_row(s: dict[str, Any]) -> str:
    return f"| {_cell(s['step'])} | {_cell(s.get('target') or '')} | {s['seconds']:.2f} | {share_text(s['share'])} |"


def _expectation_row(v: dict[str, Any]) -> str:
    mark = "✅" if v["ok"] else "❌"
    return f"| {mark} | {_cell(v['target'])} | {_cell(v['rule'])} | `{_code(v['subject'])}` | {_cell(v['message'])} |"


def _finding_row(f: dict[str, Any]) -> str:
    mark = "allowed" if f["allowed"] else {"error": "❌", "warning": "⚠️", "info": "ℹ️"}.get(f["severity"], "")
    where = f"{f['file']}:{f['line']}"
    return f"| {mark} | `{_code(f['id'])}` | `{_code(where)}` | {_cell(f['message'])} | {_cell(f['hint'])} |"


def _step_row(s: dict[str, Any]) -> str:
    state = f"❌ found: {s['problem']}" if s.get("problem") else s["state"]
    return f"| {_cell(s['step'])} | {_cell(s.get('target') or '')} | {s['seconds']:.2f} | {_cell(state)} |"


def _target_blocks(t: dict[str, Any]) -> list[Block]:
    out = ["", f"## Target `{_short(t['name'], 200)}` ({t['kind']})", "", f"- endpoint: `{_short(t['endpoint'], 300)}`"]
    cp = t.get("checkpoint")
    if cp:
        for role, art in (cp.get("artifacts") or {}).items():
            out.append(f"- checkpoint {role}: sha256 `{art['sha256'][:16]}…`, {art['size']:,} bytes")
        out.append(f"- fingerprint: `{cp['fingerprint'][:16]}…`")
    blocks: list[Block] = [out]
    if t.get("warnings"):
        blocks.append(_Part(t["warnings"], lambda w: f"- ⚠️ {_text(w, 500)}", "warnings"))
    blocks.append(["", "### Changes in the rehearsal", ""])
    prefixes = _prefix_counts(t["changes"])
    if prefixes:
        blocks += [_Part(prefixes, lambda pr: f"| `{_code(pr[0])}` | {pr[1]['add']} | {pr[1]['modify']} "
                                              f"| {pr[1]['delete']} |",
                         "prefixes", ["| prefix | added | modified | deleted |", "|---|---|---|---|"]), [""]]
    blocks.append(_changes_part(t["changes"]))
    if t.get("production_changes") is not None:
        blocks += [["", "### Changes observed in production", ""], _changes_part(t["production_changes"])]
    if t.get("restore"):
        r = t["restore"]
        state = "verified" if r.get("verified") else "NOT VERIFIED"
        blocks.append(["", f"### Restore: {state}" + ("" if r.get("needed", True) else " (not needed)")])
        lines = [f"- {_text(d, 500)}" for d in r.get("differences") or []]
        lines += [f"- {_text(r['error'], 2000)}"] if r.get("error") else []
        if lines:
            blocks.append(_Part(lines, str, "differences"))
    return blocks


def _changes_part(changes: list[dict[str, Any]]) -> Block:
    if not changes:
        return ["_no changes_"]
    return _Part(changes, _change_item, "changes", count=lambda c: 1 + implied_count(c))


def _change_item(c: dict[str, Any]) -> str:
    """A change and (up to MAX_IMPLIED of) the changes it implies, depth first; long ones collapsed."""
    implied = implied_count(c)
    lines = [_change_line(c, 0)] + [_change_line(child, depth)
                                    for depth, child in itertools.islice(_walk_implied(c, 1), MAX_IMPLIED)]
    if implied > MAX_IMPLIED:
        lines.append(f"  - … {implied - MAX_IMPLIED} more implied changes")
    if implied > COLLAPSE_OVER:
        # HTML and a nested list inside a list item: indented to the item's content, with blank lines around the list
        # (https://github.github.com/gfm/#html-blocks).
        lines[1:1] = [f"  <details><summary>{implied:,} implied changes</summary>", ""]
        lines += ["", "  </details>"]
    return "\n".join(lines)


def _walk_implied(c: dict[str, Any], depth: int) -> Iterator[tuple[int, dict[str, Any]]]:
    for child in c.get("implied") or []:
        yield depth, child
        yield from _walk_implied(child, depth + 1)


def _change_line(c: dict[str, Any], depth: int) -> str:
    detail = c.get("detail") or {}
    extra = ""
    blocks: list[str] = []
    if detail.get("content_diff"):
        extra = " — " + "; ".join(str(x) for x in detail["content_diff"][:3])
    elif "count" in detail:
        extra = f" — {detail['count']} row(s)"
        if detail.get("sample_keys"):
            extra += f", e.g. keys {', '.join(str(k) for k in detail['sample_keys'][:3])}"
        cells = changed_cells((detail.get("sample_rows") or [None])[0])
        if c["op"] == "update" and cells:
            extra += " (" + ", ".join(f"{col}: {_short(_value(b), 30)} → {_short(_value(a), 30)}"
                                      for col, b, a in cells[:3]) + ")"
        if detail.get("compared_as"):
            extra += f" ({detail['compared_as']})"
    elif "rows_before" in detail:
        extra = f" — content changed (rows: {detail['rows_before']:,} → {detail['rows_after']:,}; not counted one by one)"
    elif c["op"] == "alter":
        props = {k: v for k, v in detail.items() if isinstance(v, dict)}
        inline = []
        for k, v in props.items():
            if is_text_block(v.get("from"), v.get("to")):
                inline.append(f"{k} changed:")
                blocks.append(_diff_block(definition_diff(v.get("from"), v.get("to")), "  " * (depth + 1)))
            else:
                label = "state" if k == "enabled" and c["kind"] in CODED_KINDS else k
                was, now = (property_value(c["kind"], k, v.get(side)) for side in ("from", "to"))
                inline.append(f"{label}: `{_short(was)}` → `{_short(now)}`")
        extra = " — " + "; ".join(inline)
    line = f"{'  ' * depth}- `{_short(c['address'], 300)}`{_text(extra, 500)}"
    return "\n".join([line, *blocks])


def _diff_block(lines: list[str], indent: str) -> str:
    """A fenced ```diff block inside a list item: longer fences than any backtick run in the text."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return "\n".join([f"{indent}{fence}diff", *(indent + line for line in lines), f"{indent}{fence}"])


def _value(value: Any) -> str:
    return "NULL" if value is None else str(value)


def _prefix_counts(changes: list[dict[str, Any]]) -> list[tuple[str, dict[str, int]]]:
    """Object changes counted per prefix (the key up to its last '/')."""
    counts: dict[str, dict[str, int]] = {}
    for c in changes:
        if c["kind"] != "object":
            continue
        key = c["name"].split("/", 1)[-1]
        prefix = key.rsplit("/", 1)[0] + "/" if "/" in key else "(top level)"
        row = counts.setdefault(prefix, {"add": 0, "modify": 0, "delete": 0})
        row[c["op"]] = row.get(c["op"], 0) + 1
    return sorted(counts.items())


def _lock_blocks(trace: list[dict[str, Any]]) -> list[Block]:
    if not any(step["locks"] or step["rewrote"] for step in trace):
        return []
    rows = [(step, lock) for step in trace
            for lock in step["locks"] or [{"relation": "", "mode": "", "seconds": step["seconds"]}]]
    summary = f"{len(trace):,} statements, {len(rows):,} rows" if len(rows) > COLLAPSE_OVER else ""
    head = ["| statement | relation | lock | held s | rewrote |", "|---|---|---|---|---|"]
    return [["", "## Lock trace (rehearsal)", ""], _Part(rows, _lock_row, "lock trace rows", head, summary)]


def _lock_row(row: tuple[dict[str, Any], dict[str, Any]]) -> str:
    step, lock = row
    rewrote = ", ".join(step["rewrote"]) if not lock["relation"] or lock["relation"] in step["rewrote"] else ""
    return (f"| `{_code(step['statement'])}` {_cell(step['text'][:50])} | {_cell(lock['relation'])} | {lock['mode']} "
            f"| {lock['seconds']:.2f} | {_cell(rewrote)} |")


def _text(value: Any, limit: int) -> str:
    """Free text on one line: clipped, and no raw HTML tags (which could close our <details>)."""
    text = " ".join(str(value).splitlines())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return _HTML_TAG.sub("&lt;", text)


def _cell(text: Any) -> str:
    return _text(str(text).replace("`", "'"), 200).replace("|", "\\|")


def _code(text: Any) -> str:
    """A table cell's text for inside `backticks` (where HTML is shown as is, but a pipe still ends the cell)."""
    return _short(text, 200).replace("|", "\\|")


def _short(value: Any, limit: int = 60) -> str:
    text = str(value).replace("\n", " ").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"
