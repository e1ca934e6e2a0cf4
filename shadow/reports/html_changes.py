"""A change set as HTML, for :mod:`shadow.reports.html`: each change with the changes it implies, an altered object's
properties before and after, sample rows with the changed cells marked, and diffs with their lines highlighted.

Every value goes through :func:`esc`: table names, SQL, row values and S3 keys are data, never markup. A list is cut
at :data:`MAX_CHANGES` entries with a count of the rest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from typing import Any

from shadow.reports.common import CODED_KINDS, changed_cells, definition_diff, is_text_block, property_value

MAX_CHANGES = 2_000  # changes shown per list (implied ones included)
MAX_IMPLIED_OPEN = 5  # a change implying more is collapsed
MAX_PROPS_OPEN = 8  # an added or dropped object with more properties shows them collapsed


def esc(value: Any) -> str:
    """``value`` as HTML text (quotes escaped too, for attributes)."""
    return escape(str(value), quote=True)


def change_count(changes: list[dict[str, Any]]) -> int:
    """How many changes, implied ones included."""
    return sum(1 + change_count(c.get("implied") or []) for c in changes)


def html_table(head: str, rows: Sequence[str], more: str = "") -> str:
    out = f'<div class="scroll"><table><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'
    return out + (f'<p class="more">{more}</p>' if more else "")


def changes_html(changes: list[dict[str, Any]]) -> list[str]:
    """A change set as nested lists, at most :data:`MAX_CHANGES` entries, then how many more there are."""
    if not changes:
        return ['<p class="muted">no changes</p>']
    budget = [MAX_CHANGES]
    out = _change_list(changes, budget)
    total = change_count(changes)
    if total > MAX_CHANGES:
        out.append(f'<p class="more">… and {total - MAX_CHANGES:,} more changes — report.json has them all</p>')
    return out


def _change_list(changes: list[dict[str, Any]], budget: list[int]) -> list[str]:
    out = ['<ul class="changes">']
    for c in changes:
        if budget[0] <= 0:
            break
        budget[0] -= 1
        out.append(_change(c, budget))
    return out + ["</ul>"]


def _change(c: dict[str, Any], budget: list[int]) -> str:
    detail = c.get("detail") or {}
    parts = [f'<li class="change" data-address="{esc(c["address"])}">',
             f'<span class="op op-{esc(c["op"])}">{esc(c["op"])}</span> '
             f'<code class="address">{esc(c["address"])}</code>']
    if c["kind"] == "rows":
        parts += _rows_detail(detail)
    elif detail.get("content_diff"):
        parts.append(_content_diff(detail["content_diff"]))
    elif c["op"] == "alter":
        props = {k: v for k, v in detail.items() if isinstance(v, dict)}
        texts = {k: v for k, v in props.items() if is_text_block(v.get("from"), v.get("to"))}
        words = {("state" if k == "enabled" and c["kind"] in CODED_KINDS else k):
                 {side: property_value(c["kind"], k, v.get(side)) for side in ("from", "to")}
                 for k, v in props.items() if k not in texts}
        parts.append(_before_after(words))
        for k, v in texts.items():  # a definition: its unified diff, the changed lines highlighted
            parts.append(f'<div class="muted">{esc(k)} changed:</div>'
                         + _content_diff(definition_diff(v.get("from"), v.get("to")), headers=False))
    elif detail:
        props = {k: {"from": v, "to": None} if c["op"] in ("drop", "delete") else {"from": None, "to": v}
                 for k, v in detail.items()}
        block = _before_after(props)
        if len(props) > MAX_PROPS_OPEN:
            block = f"<details><summary>{len(props)} properties</summary>{block}</details>"
        parts.append(block)
    implied = c.get("implied") or []
    if implied:
        inner = "\n".join(_change_list(implied, budget))
        n = change_count(implied)
        parts.append(f"<details{' open' if n <= MAX_IMPLIED_OPEN else ''}><summary>{n:,} implied "
                     f"change{'s' if n != 1 else ''}</summary>{inner}</details>")
    return "\n".join(parts + ["</li>"])


def _shown(value: Any) -> str:
    if value is None:
        return '<span class="muted">—</span>'
    if isinstance(value, (dict, list)):
        return f"<code>{esc(json.dumps(value, sort_keys=True, default=str))}</code>"
    text = str(value)
    if "\n" in text or len(text) > 120:
        return f"<pre>{esc(text)}</pre>"
    return f"<code>{esc(text)}</code>"


def _before_after(props: dict[str, dict[str, Any]]) -> str:
    if not props:
        return ""
    head = "<tr><th>property</th><th>before</th><th>after</th></tr>"
    rows = [f"<tr><td>{esc(k)}</td><td>{_shown(v.get('from'))}</td><td>{_shown(v.get('to'))}</td></tr>"
            for k, v in props.items()]
    return html_table(head, rows)


def _rows_detail(detail: dict[str, Any]) -> list[str]:
    out = []
    if "count" in detail:
        text = f"{int(detail['count']):,} row{'s' if detail['count'] != 1 else ''}"
        if detail.get("compared_as"):
            text += f" ({esc(detail['compared_as'])})"
        out.append(f' — <span class="count">{text}</span>')
    samples = detail.get("sample_rows") or []
    if samples:
        out.append(_sample_table(samples, int(detail.get("count") or len(samples))))
    elif detail.get("sample_keys"):
        keys = ", ".join(f"<code>{esc(k)}</code>" for k in detail["sample_keys"])
        out.append(f'<div class="muted">e.g. keys {keys}</div>')
    return out


def _sample_table(samples: list[dict[str, Any]], count: int) -> str:
    """Sample rows: an update as a before and an after row with the changed cells marked; inserts and deletes as
    the one row they have."""
    columns = list(dict.fromkeys(c for s in samples for side in ("key", "before", "after") for c in (s.get(side) or {})))
    head = "<tr><th></th>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>"
    rows = []
    for s in samples:
        changed = {col for col, _b, _a in changed_cells(s)}
        for side in ("before", "after"):
            values = s.get(side)
            if values is None:
                continue
            cells = []
            for col in columns:
                cls = "chg" if col in changed else ""
                if col not in values:
                    cells.append(f'<td class="null {cls}">(no column)</td>')
                elif values[col] is None:
                    cells.append(f'<td class="null {cls}">NULL</td>')
                else:
                    cells.append(f'<td class="{cls}">{esc(values[col])}</td>')
            if s.get("before") is None or s.get("after") is None:
                label = "inserted" if s.get("before") is None else "deleted"
            else:
                label = "before" if side == "before" else "→ after"
            rows.append(f'<tr class="{side}"><td class="side">{label}</td>{"".join(cells)}</tr>')
    note = f"sample of {len(samples)} of {count:,} rows" if count > len(samples) else ""
    return (f'<div class="sample"><div class="muted">{note}</div>' if note else '<div class="sample">') + \
        html_table(head, rows) + "</div>"


def _content_diff(lines: list[Any], headers: bool = True) -> str:
    """A unified diff with its added and removed lines highlighted; ``headers``: it may have ---/+++ lines (a
    definition's diff has none, and its removed SQL comment ``-- x`` is a removed line)."""
    out = []
    for line in lines:
        text = str(line)
        cls = ("hunk" if text.startswith(("@@", "---", "+++") if headers else "@@") else "add" if text.startswith("+")
               else "del" if text.startswith("-") else "")
        out.append(f'<span class="{cls}">{esc(text) or " "}</span>')
    return f'<pre class="diff">{"".join(out)}</pre>'
