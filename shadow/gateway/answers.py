"""No gateway answer is larger than the gateway allows: :func:`fit` cuts an answer to a size, long lists first
(a query's rows, a change set's entries), then long texts, and says in the answer what it cut (``answer_cut``)."""

from __future__ import annotations

import copy
import json
from typing import Any

NOTE_ROOM = 2048  # what the note itself may take
MIN_TEXT = 200  # texts are never cut below this


def _size(value: Any) -> int:
    return len(json.dumps(value, default=str))


def fit(answer: dict[str, Any], limit: int) -> dict[str, Any]:
    """``answer`` as it is when its JSON has at most ``limit`` characters; else a copy whose largest list is halved
    (again and again), then whose longest text is halved, until it fits, with ``answer_cut`` saying what was cut."""
    if _size(answer) <= limit:
        return answer
    out = copy.deepcopy(answer)
    target = max(limit - NOTE_ROOM, limit // 2)
    lists: dict[str, list[int]] = {}  # path -> [kept, of]
    texts: list[str] = []
    while _size(out) > target:
        found = _largest(out, "", list)
        if found is None:
            break
        parent, key, path, value = found
        lists.setdefault(path, [len(value), len(value)])
        parent[key] = value[: len(value) // 2]
        lists[path][0] = len(parent[key])
    while _size(out) > target:
        found = _largest(out, "", str)
        if found is None or len(found[3]) <= MIN_TEXT:
            break
        parent, key, path, value = found
        keep = max(MIN_TEXT, len(value) // 2)
        parent[key] = f"{value[:keep]}… ({len(value) - keep:,} more characters)"
        if path not in texts:
            texts.append(path)
    note = {"limit_chars": limit, "lists": {p: f"kept {k:,} of {n:,}" for p, (k, n) in lists.items()},
            "texts": texts[:20],
            "note": f"the answer was larger than {limit:,} characters and was cut to fit: ask for less"}
    if _size(out) > target:  # nothing left to cut that would do: a last resort, never sent too large
        out = {k: out[k] for k in ("gateway_format", "run_id", "verdict") if k in out}
        note["note"] = f"the answer was larger than {limit:,} characters and could not be cut to fit"
    out["answer_cut"] = note
    return out


def _largest(node: Any, path: str, kind: type) -> tuple[Any, Any, str, Any] | None:
    """The largest non-empty value of ``kind`` inside ``node`` (by JSON size), with its parent, key and path."""
    best: tuple[int, tuple[Any, Any, str, Any]] | None = None
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        here = f"{path}.{key}" if isinstance(node, dict) else f"{path}[{key}]"
        here = here.lstrip(".")
        if isinstance(value, kind) and value:
            size = _size(value)
            if best is None or size > best[0]:
                best = (size, (node, key, here, value))
        if isinstance(value, (dict, list)):
            inner = _largest(value, here, kind)
            if inner is not None:
                size = _size(inner[3])
                if best is None or size > best[0]:
                    best = (size, inner)
    return best[1] if best else None
