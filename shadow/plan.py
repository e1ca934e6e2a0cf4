"""Loading and validating a plan file (``shadow.yaml``) into frozen objects.

Every problem is collected with its location (``file:line: key``) before anything fails, so a user fixes a plan
in one go. ``${VAR}`` / ``${VAR:-default}`` in string values come from the environment given to :func:`load_plan`.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adapters import env_name
from shadow.changes import is_glob
from shadow.errors import PlanError, cap

VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
CMP = re.compile(r"^\s*(==|=|<=|>=|<|>|!=)?\s*(\d+)\s*$")
BACKENDS = ("auto", "local", "docker")
ISOLATIONS = ("process", "container")
ROW_KEYS = ("inserted", "updated", "deleted")
OBJECT_KEYS = ("added", "deleted", "modified")
DEFAULT_TIMEOUT = 30 * 60.0
MAX_PLAN_BYTES = 1 << 20  # a plan is a page of YAML; more is a wrong file, not a plan
MAP_TAG, SEQ_TAG = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
MAX_NODES = 100_000  # aliases can make a small file expand exponentially ("billion laughs")
# ... or repeat one large value: every scalar is counted each time an alias brings it in, keys included.
MAX_EXPANDED_CHARS = 4 * MAX_PLAN_BYTES
MAX_PROBLEM_CHARS = 400  # one problem's line: a quoted value is cut rather than printed whole


@dataclass(frozen=True)
class Comparison:
    op: str
    value: int

    def holds(self, actual: int) -> bool:
        return {
            "==": actual == self.value, "!=": actual != self.value, "<=": actual <= self.value,
            ">=": actual >= self.value, "<": actual < self.value, ">": actual > self.value,
        }[self.op]

    def __str__(self) -> str:
        return f"{self.op} {self.value}" if self.op != "==" else str(self.value)


@dataclass(frozen=True)
class RowRule:
    table: str
    counts: Mapping[str, Comparison]  # inserted/updated/deleted → comparison; "unchanged" is all == 0
    line: int


@dataclass(frozen=True)
class Check:
    sql: str
    equals: Any
    line: int


@dataclass(frozen=True)
class ObjectRule:
    pattern: str  # a key glob within the target's bucket, e.g. "invoices/2026/*"
    counts: Mapping[str, Comparison]  # added/deleted/modified → comparison
    line: int


@dataclass(frozen=True)
class Expectation:
    must: tuple[str, ...] = ()
    may: tuple[str, ...] = ()
    rows: tuple[RowRule, ...] = ()
    checks: tuple[Check, ...] = ()
    objects: tuple[ObjectRule, ...] = ()
    declared: bool = False  # False: the plan says nothing about this target, so every change is unexpected
    files: tuple[ObjectRule, ...] = ()  # git targets: path globs ("k8s/**") with added/deleted/modified counts


@dataclass(frozen=True)
class TargetSpec:
    name: str
    kind: str
    options: Mapping[str, Any]
    line: int


@dataclass(frozen=True)
class Action:
    sql_files: tuple[Path, ...] = ()  # each as the plan names it, from the plan's (resolved) folder: not resolved
    sql_display: tuple[str, ...] = ()
    outside_files: tuple[Path, ...] = ()  # the real paths of the SQL files that lie outside the plan's folder
    sql_target: str | None = None
    command: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    isolation: str = "process"  # process | container (the command runs in a container on an internal network)
    image: str | None = None  # the container image for isolation: container
    one_session: bool = False  # the SQL files run in one session (a SET in one holds in the next); lint reads so

    @property
    def kind(self) -> str:
        return "sql" if self.sql_files else "command"

    def describe(self) -> str:
        if not self.sql_files:
            return f"command: {self.command}"
        outside = ", ".join(map(str, self.outside_files))
        return "sql: " + ", ".join(self.sql_display) + (f" (outside the plan's folder: {outside})" if outside else "")


@dataclass(frozen=True)
class Limits:
    """Resource limits for shadow containers (docker backend)."""

    memory: str | None = None
    cpus: float | None = None
    pids: int | None = None


@dataclass(frozen=True)
class Policy:
    backend: str = "auto"
    limits: Limits = field(default_factory=Limits)
    max_lock: Mapping[str, float] = field(default_factory=dict)  # "ACCESS EXCLUSIVE" → seconds
    allow: tuple[Any, ...] = ()  # finding ids, or {id, file} to allow one only in matching files
    redact: tuple[str, ...] = ()  # column globs (`col`, `table.col`, `schema.table.col`) never shown in reports
    approval: str = "none"  # "required": `shadow plan` stops awaiting `shadow approve`; apply needs --run
    rehearse_rollback: bool = True  # restore each shadow from its checkpoint after the rehearsal and verify it


@dataclass(frozen=True)
class Plan:
    path: Path
    sha256: str
    targets: tuple[TargetSpec, ...]
    action: Action
    expect: Mapping[str, Expectation]
    policy: Policy

    @property
    def folder(self) -> Path:
        return self.path.parent

    def target(self, name: str) -> TargetSpec:
        return next(t for t in self.targets if t.name == name)


class _Doc:
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


def _to_python(node: yaml.Node, loader: yaml.SafeLoader, doc: _Doc, path: tuple[Any, ...]) -> Any:
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


def _count_chars(doc: _Doc, node: yaml.ScalarNode) -> None:
    doc.chars += len(node.value)
    if doc.chars > MAX_EXPANDED_CHARS:
        raise PlanError([f"{doc.file}:{node.start_mark.line + 1}: too large once its aliases are expanded (more than "
                         f"{MAX_EXPANDED_CHARS >> 20} MiB of values; an alias repeating a large value?)"])


def _interpolate(value: Any, env: Mapping[str, str], doc: _Doc, path: tuple[Any, ...]) -> Any:
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


def load_plan(path: Path, env: Mapping[str, str], kinds: Mapping[str, Any] | None = None) -> Plan:
    """Read, interpolate and validate a plan file; raise :class:`PlanError` with every problem found."""
    from adapters import REGISTRY

    kinds = REGISTRY if kinds is None else kinds
    path = Path(path)
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
    doc = _Doc(shown)
    try:
        text = raw.decode("utf-8")
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = _to_python(node, loader, doc, ()) if node is not None else None
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
    if not isinstance(data, dict):
        raise PlanError([f"{shown}:1: a plan is a mapping with the keys version, targets, action, expect, policy"])
    data = _interpolate(data, env, doc, ())

    _known(doc, data, (), ("version", "targets", "action", "expect", "policy"))
    if data.get("version", 1) != 1:
        doc.problem(("version",), f"unsupported plan version {data.get('version')!r} (this shadow reads version 1)")

    targets = _targets(doc, data.get("targets"), kinds, path.parent.resolve())
    names = [t.name for t in targets]
    sql_kinds = {t.kind for t in targets if kinds[t.kind].runs_sql}
    action = _action(doc, data.get("action"), path.parent.resolve(), targets, sql_kinds)
    expect = _expectations(doc, data.get("expect") or {}, {t.name: kinds[t.kind] for t in targets})
    policy = _policy(doc, data.get("policy") or {})
    if doc.problems:
        raise PlanError(doc.problems)
    return Plan(
        path=path.resolve(),
        sha256=hashlib.sha256(raw).hexdigest(),
        targets=tuple(targets),
        action=action,
        expect={n: expect.get(n, Expectation()) for n in names},
        policy=policy,
    )


def _known(doc: _Doc, data: dict[str, Any], path: tuple[Any, ...], keys: tuple[str, ...]) -> None:
    for key in data:
        if key not in keys:
            doc.problem(path + (key,), f"unknown key (expected one of: {', '.join(keys)})")


def _targets(doc: _Doc, raw: Any, kinds: Mapping[str, Any], folder: Path | None = None) -> list[TargetSpec]:
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


def _action(doc: _Doc, raw: Any, folder: Path, targets: list[TargetSpec], sql_kinds: set[str]) -> Action:
    if not isinstance(raw, dict):
        doc.problem(("action",), "missing: give `sql: FILE` (or a list of files) or `command: \"...\"`")
        return Action()
    _known(doc, raw, ("action",), ("sql", "command", "target", "env", "timeout", "isolation", "image", "one_session"))
    one_session = raw.get("one_session", False)
    if not isinstance(one_session, bool):
        doc.problem(("action", "one_session"), f"{one_session!r} is not true or false")
        one_session = False
    elif "one_session" in raw and "sql" not in raw:
        doc.problem(("action", "one_session"), "only used with `sql:` files (it says they run in one session)")
    isolation = raw.get("isolation", "process")
    if isolation not in ISOLATIONS:
        doc.problem(("action", "isolation"), f"{isolation!r} is not one of: {', '.join(ISOLATIONS)}")
        isolation = "process"
    image = raw.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        doc.problem(("action", "image"), "must be a container image name like python:3.12-slim")
        image = None
    if image is not None and isolation != "container":
        doc.problem(("action", "image"), "only used with `isolation: container`")
    has_sql, has_cmd = "sql" in raw, "command" in raw
    if has_sql == has_cmd:
        doc.problem(("action",), "give exactly one of `sql` and `command`")
        return Action()
    env: dict[str, str] = {}
    if "env" in raw:
        if not isinstance(raw["env"], dict):
            doc.problem(("action", "env"), "must be a mapping of variable names to values")
        else:
            for k, v in raw["env"].items():
                if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                    doc.problem(("action", "env", k), "not a valid environment variable name")
                elif isinstance(v, (dict, list)) or v is None:
                    doc.problem(("action", "env", k), "must be a string or number")
                else:
                    env[k] = str(v).lower() if isinstance(v, bool) else str(v)
    timeout = DEFAULT_TIMEOUT
    if "timeout" in raw:
        timeout_value = _duration(raw["timeout"])
        if timeout_value is None:
            doc.problem(("action", "timeout"), "must be seconds or a duration like 90s, 10m, 1h")
        else:
            timeout = timeout_value
    if has_cmd:
        if not isinstance(raw["command"], str) or not raw["command"].strip():
            doc.problem(("action", "command"), "must be a non-empty shell command")
            return Action()
        return Action(command=raw["command"], env=env, timeout=timeout, isolation=isolation, image=image)
    files = raw["sql"] if isinstance(raw["sql"], list) else [raw["sql"]]
    paths: list[Path] = []
    shown: list[str] = []
    outside: list[Path] = []
    for i, f in enumerate(files):
        where = ("action", "sql") + ((i,) if isinstance(raw["sql"], list) else ())
        if not isinstance(f, str) or not f:
            doc.problem(where, "must be a path to an SQL file, relative to the plan file")
            continue
        named = folder / f
        try:
            real = named.resolve(strict=True)
        except FileNotFoundError:
            doc.problem(where, f"SQL file not found: {f}")
            continue
        except RuntimeError:  # Python 3.11's "Symlink loop"
            doc.problem(where, f"SQL file {f} is a symlink loop")
            continue
        except OSError as exc:
            doc.problem(where, f"SQL file {f} " + ("is a symlink loop" if exc.errno == errno.ELOOP
                                                  else f"cannot be read: {exc.strerror}"))
            continue
        if not real.is_file():
            doc.problem(where, f"SQL file not found: {f}")
            continue
        paths.append(named)
        shown.append(f)
        if not real.is_relative_to(folder):
            outside.append(real)
    runs_sql = [t.name for t in targets if t.kind in sql_kinds]  # targets whose kind runs SQL (postgres)
    sql_target = raw.get("target")
    if sql_target is not None and sql_target not in runs_sql:
        if sql_target not in doc.broken_targets:  # else the target's own problem is the one to fix
            doc.problem(("action", "target"), f"{sql_target!r} is not a target SQL runs on (a postgres target) "
                                              "of this plan")
    elif sql_target is None:
        if len(runs_sql) == 1:
            sql_target = runs_sql[0]
        elif targets and not doc.broken_targets:
            doc.problem(("action", "target"), "an SQL action needs `target:` naming the target it runs on"
                        if runs_sql else "an SQL action needs a target SQL runs on (a postgres target)")
    if isolation == "container":
        doc.problem(("action", "isolation"), "`isolation: container` is for `command` actions; SQL actions are run "
                                             "by shadow itself over one connection")
    return Action(sql_files=tuple(paths), sql_display=tuple(shown), sql_target=sql_target, env=env, timeout=timeout,
                  outside_files=tuple(outside), one_session=one_session)


def _duration(value: Any) -> float | None:
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


def parse_comparison(value: Any) -> Comparison | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return Comparison("==", value)
    if isinstance(value, str):
        m = CMP.match(value)
        if m:
            op = m.group(1) or "=="
            return Comparison("==" if op == "=" else op, int(m.group(2)))
    return None


def _address_problem(address: Any, kind: Any) -> str | None:
    """Why ``address`` is not a change address the target's kind can produce (None when it is fine)."""
    parts = address.split(None, 2) if isinstance(address, str) else []
    if len(parts) != 3:
        return f"{address!r} is not a change address `<op> <kind> <name>`"
    op, change_kind, _name = parts
    if not is_glob(op) and op not in kind.change_ops:
        return f"{address!r}: unknown operation {op!r} (one of: {', '.join(kind.change_ops)})"
    if not is_glob(change_kind) and change_kind not in kind.change_kinds:
        return f"{address!r}: unknown kind {change_kind!r} (one of: {', '.join(kind.change_kinds)})"
    return None


def _expectations(doc: _Doc, raw: Any, target_kinds: Mapping[str, Any]) -> dict[str, Expectation]:
    names = list(target_kinds)
    if not isinstance(raw, dict):
        doc.problem(("expect",), "must map target names to their expectations")
        return {}
    out: dict[str, Expectation] = {}
    for name, spec in raw.items():
        where = ("expect", name)
        if name not in names:
            if name not in doc.broken_targets:  # a target with a problem of its own is not loaded
                doc.problem(where, f"no target named {name!r} in `targets`")
            continue
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            doc.problem(where, "must be a mapping with must / may / rows / checks")
            continue
        _known(doc, spec, where, ("must", "may", "rows", "checks", "objects", "files"))
        lists: dict[str, tuple[str, ...]] = {}
        for key in ("must", "may"):
            items = spec.get(key) or []
            if not isinstance(items, list):
                doc.problem(where + (key,), "must be a list of change addresses like `add column public.users.email`")
                items = []
            for i, item in enumerate(items):
                problem = _address_problem(item, target_kinds[name])
                if problem:
                    doc.problem(where + (key, i), problem)
            lists[key] = tuple(i for i in items if isinstance(i, str))
        rows = [RowRule(table, counts, line) for table, counts, line in
                _count_rules(doc, spec.get("rows"), where + ("rows",), ROW_KEYS, "table names")]
        checks: list[Check] = []
        raw_checks = spec.get("checks") or []
        if not isinstance(raw_checks, list):
            doc.problem(where + ("checks",), "must be a list of {sql, equals}")
            raw_checks = []
        elif raw_checks and name in target_kinds and not target_kinds[name].runs_sql:
            doc.problem(where + ("checks",), f"checks run SQL on the shadow; {name!r} is a "
                                             f"{target_kinds[name].name} target, which has none")
            raw_checks = []
        for i, check in enumerate(raw_checks):
            cwhere = where + ("checks", i)
            if not isinstance(check, dict) or not isinstance(check.get("sql"), str) or "equals" not in check:
                doc.problem(cwhere, "a check needs `sql:` (a query returning one value) and `equals:`")
                continue
            _known(doc, check, cwhere, ("sql", "equals"))
            checks.append(Check(check["sql"], check["equals"], doc.line(cwhere)))
        objects = [ObjectRule(pattern, counts, line) for pattern, counts, line in
                   _count_rules(doc, spec.get("objects"), where + ("objects",), OBJECT_KEYS, "key globs")]
        files = [ObjectRule(pattern, counts, line) for pattern, counts, line in
                 _count_rules(doc, spec.get("files"), where + ("files",), OBJECT_KEYS, "path globs")]
        out[name] = Expectation(lists["must"], lists["may"], tuple(rows), tuple(checks), tuple(objects),
                                declared=True, files=tuple(files))
    return out


def _count_rules(doc: _Doc, raw: Any, where: tuple[Any, ...], keys: tuple[str, ...],
                 subjects: str) -> list[tuple[str, dict[str, Comparison], int]]:
    """``rows:`` / ``objects:`` — each subject maps to `unchanged` or {key: count or comparison}."""
    if raw is None:
        return []
    example = f'{{{keys[0]}: 0, {keys[-1]}: "<= 10"}}'
    if not isinstance(raw, dict):
        doc.problem(where, f"must map {subjects} to `unchanged` or a mapping like {example}")
        return []
    out: list[tuple[str, dict[str, Comparison], int]] = []
    for subject, rule in raw.items():
        swhere = where + (subject,)
        if rule == "unchanged":
            rule = {k: 0 for k in keys}
        if not isinstance(rule, dict):
            doc.problem(swhere, f"must be `unchanged` or a mapping like {example}")
            continue
        counts: dict[str, Comparison] = {}
        for key, value in rule.items():
            cmp = parse_comparison(value)
            if key not in keys:
                doc.problem(swhere + (key,), f"unknown key (expected one of: {', '.join(keys)})")
            elif cmp is None:
                doc.problem(swhere + (key,), f"{value!r} is not a count or a comparison like \"<= 10\"")
            else:
                counts[key] = cmp
        out.append((str(subject), counts, doc.line(swhere)))
    return out


def _policy(doc: _Doc, raw: Any) -> Policy:
    if not isinstance(raw, dict):
        doc.problem(("policy",), "must be a mapping")
        return Policy()
    _known(doc, raw, ("policy",), ("backend", "limits", "max_lock", "allow", "redact", "approval",
                                   "rehearse_rollback"))
    approval = raw.get("approval", "none")
    if approval not in ("none", "required"):
        doc.problem(("policy", "approval"), f"{approval!r} is not one of: none, required")
        approval = "none"
    rehearse_rollback = raw.get("rehearse_rollback", True)
    if not isinstance(rehearse_rollback, bool):
        doc.problem(("policy", "rehearse_rollback"), f"{rehearse_rollback!r} is not true or false")
        rehearse_rollback = True
    redact = raw.get("redact") or []
    if not isinstance(redact, list) or not all(isinstance(p, str) and p.strip() for p in redact):
        doc.problem(("policy", "redact"), "must be a list of column globs like password_hash, *_token or "
                                          "public.users.email")
        redact = []
    allow = raw.get("allow") or []
    if not isinstance(allow, list):
        doc.problem(("policy", "allow"), "must be a list of finding ids (see `shadow lint`), or {id, file} entries")
        allow = []
    else:
        from shadow.lint import allow_problems

        for problem in allow_problems(allow):
            doc.problem(("policy", "allow"), problem)
    backend = raw.get("backend", "auto")
    if backend not in BACKENDS:
        doc.problem(("policy", "backend"), f"{backend!r} is not one of: {', '.join(BACKENDS)}")
        backend = "auto"
    return Policy(backend=backend, limits=_limits(doc, raw.get("limits")), max_lock=_max_lock(doc, raw.get("max_lock")),
                  allow=tuple(allow), redact=tuple(p.strip() for p in redact), approval=approval,
                  rehearse_rollback=rehearse_rollback)


LOCK_MODES = ("ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
              "EXCLUSIVE", "ACCESS EXCLUSIVE")


def _max_lock(doc: _Doc, raw: Any) -> dict[str, float]:
    if raw is None:
        return {}
    where = ("policy", "max_lock")
    if not isinstance(raw, dict):
        doc.problem(where, 'must map lock modes to durations, e.g. {"ACCESS EXCLUSIVE": 2s}')
        return {}
    out: dict[str, float] = {}
    for mode, limit in raw.items():
        name = str(mode).upper().replace("_", " ")
        seconds = _duration(limit) if limit not in (0, "0") else 0.0
        if name not in LOCK_MODES:
            doc.problem(where + (mode,), f"unknown lock mode {mode!r} (one of: {', '.join(LOCK_MODES)})")
        elif seconds is None:
            doc.problem(where + (mode,), f"{limit!r} is not a duration like 500ms, 2s, 1m")
        else:
            out[name] = seconds
    return out


def _limits(doc: _Doc, raw: Any) -> Limits:
    if raw is None:
        return Limits()
    where = ("policy", "limits")
    if not isinstance(raw, dict):
        doc.problem(where, "must be a mapping like {memory: 1g, cpus: 2, pids: 512}")
        return Limits()
    _known(doc, raw, where, ("memory", "cpus", "pids"))
    memory = raw.get("memory")
    if memory is not None and not re.fullmatch(r"\d+(\.\d+)?\s*[bkmgBKMG]?", str(memory)):
        doc.problem(where + ("memory",), f"{memory!r} is not a size like 512m or 2g")
        memory = None
    cpus = raw.get("cpus")
    if cpus is not None and (isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or cpus <= 0):
        doc.problem(where + ("cpus",), f"{cpus!r} is not a positive number of CPUs")
        cpus = None
    pids = raw.get("pids")
    if pids is not None and (isinstance(pids, bool) or not isinstance(pids, int) or pids < 16):
        doc.problem(where + ("pids",), f"{pids!r} is not a process count of at least 16")
        pids = None
    return Limits(str(memory).replace(" ", "").lower() if memory is not None else None,
                  float(cpus) if cpus is not None else None, pids)
