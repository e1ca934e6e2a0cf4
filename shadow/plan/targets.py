"""``targets:`` — each name and its kind's settings, validated by the kind itself."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adapters import env_name

from shadow.plan.document import Doc
from shadow.plan.model import TargetSpec


def load_targets(doc: Doc, raw: Any, kinds: Mapping[str, Any], folder: Path | None = None) -> list[TargetSpec]:
    """The plan's targets; a target with a problem of its own is named in ``doc.broken_targets``, not loaded."""
    if raw is None:
        doc.problem(("targets",), "missing: a plan needs at least one target")
        return []
    if not isinstance(raw, dict) or not raw:
        doc.problem(("targets",), "must be a mapping of target names to their settings")
        return []
    out: list[TargetSpec] = []
    env_names: dict[str, str] = {}
    for name, spec in raw.items():
        where = ("targets", name)
        var = env_name(str(name))
        if var in env_names:
            doc.problem(where, f"target names {env_names[var]!r} and {name!r} both become SHADOW_{var}_*; rename one")
        env_names.setdefault(var, str(name))
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
            doc.problem(where, "a target name starts with a letter and has only letters, digits, _ and -")
            doc.broken_targets.add(str(name))
            continue
        if not isinstance(spec, dict):
            doc.problem(where, "must be a mapping with at least `kind`")
            doc.broken_targets.add(name)
            continue
        kind = spec.get("kind")
        if kind is None or kind not in kinds:
            doc.broken_targets.add(name)
            if kind is None:
                doc.problem(where + ("kind",), f"missing (one of: {', '.join(sorted(kinds))})")
                continue
            close = difflib.get_close_matches(str(kind), sorted(kinds), n=1)
            doc.problem(where + ("kind",), f"unknown target kind {kind!r}"
                        + (f" — did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(kinds))})"))
            continue
        for key, message in kinds[kind].validate(spec):
            doc.problem(where + ((key,) if key else ()), message)
        options = {k: v for k, v in spec.items() if k != "kind"}
        if folder is not None:  # a kind's relative paths are the plan folder's
            options = kinds[kind].resolve_paths(options, folder)
        out.append(TargetSpec(name, kind, options, doc.line(where)))
    return out
