"""Content diffs of small objects for the report: JSON and YAML compared as data, anything else as text."""

from __future__ import annotations

import difflib
import json

import yaml

CONTENT_DIFF_LIMIT = 64 * 1024  # bytes: objects up to this size get a content diff in the report


def content_diff(key: str, old: bytes, new: bytes, limit: int = 40) -> list[str] | None:
    """A short, human diff of a small JSON / YAML / text object."""
    from deepdiff import DeepDiff

    try:
        old_text, new_text = old.decode("utf-8"), new.decode("utf-8")
    except UnicodeDecodeError:
        return None
    loader = json.loads if key.endswith(".json") else yaml.safe_load if key.endswith((".yaml", ".yml")) else None
    if loader is not None:
        try:
            report = DeepDiff(loader(old_text), loader(new_text), verbose_level=2)
            lines = [line for line in report.pretty().splitlines() if line.strip()]
            return lines[:limit]
        except Exception:  # noqa: BLE001 - not valid JSON/YAML after all: fall back to a text diff
            pass
    lines = list(difflib.unified_diff(old_text.splitlines(), new_text.splitlines(), "before", "after", lineterm=""))
    return lines[:limit] if lines else None
