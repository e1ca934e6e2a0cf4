"""A plan file as YAML: read within bounds, every key's line recorded (problems name ``file:line: key``), and
``${VAR}`` / ``${VAR:-default}`` in string values interpolated from the environment given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from shadow.errors import PlanError, cap

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
MAX_PLAN_BYTES = 1 << 20  # a plan is a page of YAML; more is a wrong file, not a plan
MAP_TAG, SEQ_TAG = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
MAX_NODES = 100_000  # aliases can make a small file expand exponentially ("billion laughs")
# ... or repeat one large value: every scalar is counted each time an alias brings it in, keys included.
MAX_EXPANDED_CHARS = 4 * MAX_PLAN_BYTES
MAX_PROBLEM_CHARS = 400  # one problem's line: a quoted value is cut rather than printed whole


class Doc:
    """The parsed YAML plus the line of every key path, for error messages."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[tuple[Any, ...], int] = {}
        self.problems: list[str] = []
        self.nodes = 0
        self.chars = 0  # the scalars' characters, with aliases expanded
        # Where a ${VAR} was not set, and the names of targets that were rejected: a problem there is already
        # reported, and what follows from it (an empty DSN, an expectation for a target not loaded) is not.
        self.unset: set[tuple[Any, ...]] = set()
        self.broken_targets: set[str] = set()

    def at(self, path: tuple[Any, ...]) -> str:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        line = self.lines.get(probe, 1)
        key = ".".join(str(p) for p in path) or "(top level)"
        return f"{self.file}:{line}: {key}"

    def problem(self, path: tuple[Any, ...], message: str) -> None:
        if path in self.unset:  # the value is wrong because a variable is not set: that problem says so
            return
        self.problems.append(cap(f"{self.at(path)}: {message}", MAX_PROBLEM_CHARS))

    def line(self, path: tuple[Any, ...]) -> int:
        return self.lines.get(path, 1)


def _to_python(node: yaml.Node, loader: yaml.SafeLoader, doc: Doc, path: tuple[Any, ...]) -> Any:
    doc.nodes += 1
    if doc.nodes > MAX_NODES:
        raise PlanError([f"{doc.file}: too many nodes (more than {MAX_NODES:,}; aliases expanding?)"])
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        _count_chars(doc, node)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in (MAP_TAG, SEQ_TAG):
        raise PlanError([f"{doc.file}:{node.start_mark.line + 1}: not valid YAML: tag {node.tag!r} is not allowed"])
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                _count_chars(doc, key_node)
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                doc.problems.append(cap(f"{doc.file}:{key_node.start_mark.line + 1}: "
                                        f"{'.'.join(map(str, path + (key,)))}: duplicate key", MAX_PROBLEM_CHARS))
            out[key] = _to_python(value_node, loader, doc, path + (key,))
            doc.lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(v, loader, doc, path + (i,)) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _count_chars(doc: Doc, node: yaml.ScalarNode) -> None:
    doc.chars += len(node.value)
    if doc.chars > MAX_EXPANDED_CHARS:
        raise PlanError([f"{doc.file}:{node.start_mark.line + 1}: too large once its aliases are expanded (more than "
                         f"{MAX_EXPANDED_CHARS >> 20} MiB of values; an alias repeating a large value?)"])


def _interpolate(value: Any, env: Mapping[str, str], doc: Doc, path: tuple[Any, ...]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, env, doc, path + (k,)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, doc, path + (i,)) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    missing: list[str] = []

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    result = VAR.sub(repl, value)
    for name in dict.fromkeys(missing):
        doc.problem(path, f"environment variable {name} is not set")
    if missing:
        doc.unset.add(path)
    return result


def read_plan(path: Path, env: Mapping[str, str]) -> tuple[bytes, Doc, dict[str, Any]]:
    """The plan file's bytes, its :class:`Doc` and its mapping with ``${VAR}`` interpolated from ``env``; raise
    :class:`PlanError` when the file cannot be read as a YAML mapping."""
    shown = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_PLAN_BYTES + 1)
    except FileNotFoundError as exc:
        raise PlanError([f"{shown}: plan file not found (pass -f FILE)"]) from exc
    except OSError as exc:
        raise PlanError([f"{shown}: cannot read the plan file: {exc.strerror}"]) from exc
    if len(raw) > MAX_PLAN_BYTES:
        raise PlanError([f"{shown}: too large for a plan file (more than {MAX_PLAN_BYTES >> 20} MiB)"])
    doc = Doc(shown)
    data = _parse(raw, doc)
    if not isinstance(data, dict):
        raise PlanError([f"{shown}:1: a plan is a mapping with the keys version, targets, action, expect, policy"])
    return raw, doc, _interpolate(data, env, doc, ())


def _parse(raw: bytes, doc: Doc) -> Any:
    """The YAML document in ``raw``, each key's line recorded in ``doc``; PlanError when it is not valid YAML."""
    shown = doc.file
    try:
        text = raw.decode("utf-8")
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            return _to_python(node, loader, doc, ()) if node is not None else None
        finally:
            loader.dispose()
    except UnicodeDecodeError as exc:
        raise PlanError([f"{shown}: the plan file is not UTF-8"]) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"{mark.line + 1}:{mark.column + 1}" if mark else "1"
        raise PlanError([f"{shown}:{line}: not valid YAML: {exc.problem or exc}"]) from exc
    except yaml.reader.ReaderError as exc:  # a NUL or another control character; it carries no mark
        row = text.count("\n", 0, exc.position) + 1
        raise PlanError([f"{shown}:{row}: not valid YAML: character #x{exc.character:04x} is not allowed"]) from exc
    except yaml.YAMLError as exc:
        raise PlanError([f"{shown}: not valid YAML: {' '.join(str(exc).split())}"]) from exc
    except RecursionError as exc:
        raise PlanError([f"{shown}: not valid YAML: nested too deeply"]) from exc


def known(doc: Doc, data: dict[str, Any], path: tuple[Any, ...], keys: tuple[str, ...]) -> None:
    """A problem for each key of ``data`` (at ``path``) that is not one of ``keys``."""
    for key in data:
        if key not in keys:
            doc.problem(path + (key,), f"unknown key (expected one of: {', '.join(keys)})")


def duration(value: Any) -> float | None:
    """Seconds from a positive number or a duration like 500ms, 90s, 10m, 1h; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", value)
        if m:
            scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
            seconds = float(m.group(1)) * scale
            return seconds if seconds > 0 else None
    return None
