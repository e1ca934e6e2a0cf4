"""The gateway file (``gateway.yaml``): the targets an agent may reach and each actor's rules.

Read like a plan (:mod:`shadow.plan.document`: bounded YAML, ``file:line: key`` problems, ``${VAR}`` from the
environment) and validated in one go::

    version: 1
    targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}   # a plan's targets; credentials only via ${VAR}
    policy: {backend: auto, redact: [email], warm: 10m}               # what every proposal's plan gets
    agents:
      default: {scope: …, limits: …, rate: …, breaker: …, apply: approval, isolation: container, resources: …}
      reporting-bot: {scope: …, apply: within-limits}                 # its keys over default's

An actor with its own entry gets ``default``'s keys it does not set; an actor without one gets ``default``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shadow.errors import BadInput, PlanError
from shadow.plan.document import Doc, duration, known, read_plan
from shadow.plan.model import Limits, TargetSpec
from shadow.plan.policy import LOCK_MODES, lock_budgets, resource_limits
from shadow.plan.state import load_state, with_state
from shadow.plan.targets import load_targets

AGENT_KEYS = ("scope", "limits", "rate", "breaker", "apply", "isolation", "resources")
APPLY_MODES = ("approval", "within-limits")
ISOLATIONS = ("container", "process")
ACTOR = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Scope:
    """Where an actor may change a target: change-address globs (``op kind name``); ``never`` wins over ``may``."""

    may: tuple[str, ...] = ()
    never: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rate:
    count: int
    seconds: float
    text: str  # as written: 30/10m


@dataclass(frozen=True)
class Rules:
    """One actor's rules. The defaults are the gateway's fail-safe ones: nothing in scope, no drops, a person
    approves every apply, command actions only in a container."""

    scope: Mapping[str, Scope] = field(default_factory=dict)
    rows: int | None = 10_000
    rows_per_table: int | None = None
    drops: bool = False
    max_lock: Mapping[str, float] = field(default_factory=dict)
    proposals: Rate | None = Rate(30, 600, "30/10m")
    applies: Rate | None = Rate(5, 3600, "5/1h")
    breaker_failures: int = 5
    breaker_window: float = 1800.0
    apply: str = "approval"
    isolation: str = "container"
    resources: Limits = Limits(memory="512m", cpus=1.0, pids=256)
    timeout: float = 300.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": {t: {"may": list(s.may), "never": list(s.never)} for t, s in self.scope.items()},
            "limits": {"rows": self.rows, "rows_per_table": self.rows_per_table, "drops": self.drops,
                       "max_lock": {mode: f"{s:g}s" for mode, s in self.max_lock.items()}},
            "rate": {"proposals": self.proposals.text if self.proposals else None,
                     "applies": self.applies.text if self.applies else None},
            "breaker": {"failures": self.breaker_failures, "window": f"{self.breaker_window:g}s"},
            "apply": self.apply, "isolation": self.isolation,
            "resources": {"cpus": self.resources.cpus, "memory": self.resources.memory, "pids": self.resources.pids,
                          "timeout": f"{self.timeout:g}s"},
        }


@dataclass(frozen=True)
class GatewayFile:
    path: Path
    sha256: str
    targets: tuple[TargetSpec, ...]  # interpolated: what the gateway connects with (never shown to an agent)
    raw_targets: Mapping[str, Any]  # as written, ${VAR} kept: what a proposal's plan file holds (no secret on disk)
    policy: Mapping[str, Any]
    agents: Mapping[str, Rules]
    state: Mapping[str, str] = field(default_factory=dict)  # `state: {url, store}`: shared state and store

    def settings_for(self, settings: Any) -> Any:
        """``settings`` with the file's shared state and store — the environment's own settings
        (``SHADOW_STATE_URL``, ``SHADOW_STORE_URL``) win, as ``SHADOW_BACKEND`` wins over ``policy.backend``."""
        return with_state(settings, self.state)

    def rules_for(self, actor: str) -> Rules:
        if actor in self.agents:
            return self.agents[actor]
        if "default" in self.agents:
            return self.agents["default"]
        raise BadInput(f"{self.path}: actor {actor!r} has no entry under `agents:` and there is no `default` "
                       f"(actors: {', '.join(sorted(self.agents)) or 'none'})")

    def target(self, name: str) -> TargetSpec:
        return next(t for t in self.targets if t.name == name)


def load_gateway(path: Path, env: Mapping[str, str], kinds: Mapping[str, Any] | None = None) -> GatewayFile:
    """Read and validate a gateway file; :class:`PlanError` (exit 2) with every problem found."""
    from adapters import REGISTRY

    kinds = REGISTRY if kinds is None else kinds
    path = Path(path)
    raw, doc, data = read_plan(path, env)
    known(doc, data, (), ("version", "targets", "policy", "agents", "state"))
    if data.get("version", 1) != 1:
        doc.problem(("version",), f"unsupported gateway version {data.get('version')!r} (this shadow reads 1)")
    targets = load_targets(doc, data.get("targets"), kinds, path.parent.resolve())
    written = yaml.safe_load(raw.decode("utf-8")) or {}
    raw_targets = _raw_targets(written.get("targets"), targets, kinds, path.parent.resolve())
    _credentials_only_via_variables(doc, written.get("targets"))
    policy = _policy(doc, data.get("policy"))
    agents = _agents(doc, data.get("agents"), {t.name for t in targets})
    state = load_state(doc, data.get("state"), written.get("state"))
    if doc.problems:
        raise PlanError(doc.problems)
    return GatewayFile(path.resolve(), hashlib.sha256(raw).hexdigest(), tuple(targets), raw_targets, policy, agents,
                       state)


def _raw_targets(written: Any, targets: list[TargetSpec], kinds: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The targets as written — ``${VAR}`` kept — with relative paths made the gateway folder's (a proposal's plan
    lives elsewhere)."""
    if not isinstance(written, dict):
        return {}
    out: dict[str, Any] = {}
    for spec in targets:
        options = dict(written.get(spec.name) or {})
        kind = options.pop("kind", spec.kind)
        resolved = kinds[kind].resolve_paths(options, folder)
        out[spec.name] = {"kind": kind, **{k: (v if isinstance(v, str) and "${" in v else resolved.get(k, v))
                                           for k, v in options.items()}}
    return out


def _credentials_only_via_variables(doc: Doc, written: Any) -> None:
    """A password written into the file itself would be one more copy of a secret: only ``${VAR}`` may carry it."""
    if not isinstance(written, dict):
        return
    for name, spec in written.items():
        if not isinstance(spec, dict):
            continue
        for key, value in spec.items():
            if isinstance(value, str) and "${" not in value and re.search(r"://[^/@\s]*:[^/@\s]+@", value):
                doc.problem(("targets", name, key), "holds a password: give credentials only through ${VAR} "
                                                     "(the gateway reads them from its environment)")
            if isinstance(value, str) and "${" not in value and str(key).lower() in ("password", "secret_key",
                                                                                   "aws_secret_access_key"):
                doc.problem(("targets", name, key), "give credentials only through ${VAR}")


def _policy(doc: Doc, raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        doc.problem(("policy",), "must be a mapping like {backend: auto, redact: [email], warm: 10m}")
        return {}
    known(doc, raw, ("policy",), ("backend", "redact", "warm", "drift", "lock_timeout", "lock_retries"))
    return dict(raw)  # checked again, with its lines, as each proposal's plan is loaded; see check_policy


def _agents(doc: Doc, raw: Any, targets: set[str]) -> dict[str, Rules]:
    if not isinstance(raw, dict) or not raw:
        doc.problem(("agents",), "missing: a mapping of actor names (or `default`) to their rules")
        return {}
    default: dict[str, Any] = raw["default"] if isinstance(raw.get("default"), dict) else {}
    out: dict[str, Rules] = {}
    for actor, spec in raw.items():
        where = ("agents", actor)
        if not isinstance(actor, str) or not ACTOR.fullmatch(actor):
            doc.problem(where, "an actor name starts with a letter and has only letters, digits, _ . and -")
            continue
        if not isinstance(spec, dict):
            doc.problem(where, f"must be a mapping with some of: {', '.join(AGENT_KEYS)}")
            continue
        known(doc, spec, where, AGENT_KEYS)
        merged = {**default, **spec} if actor != "default" else spec
        out[actor] = _rules(doc, merged, where, targets)
    return out


def _rules(doc: Doc, raw: dict[str, Any], where: tuple[Any, ...], targets: set[str]) -> Rules:
    base = Rules()
    apply_mode = raw.get("apply", base.apply)
    if apply_mode not in APPLY_MODES:
        doc.problem(where + ("apply",), f"{apply_mode!r} is not one of: {', '.join(APPLY_MODES)}")
        apply_mode = base.apply
    isolation = raw.get("isolation", base.isolation)
    if isolation not in ISOLATIONS:
        doc.problem(where + ("isolation",), f"{isolation!r} is not one of: {', '.join(ISOLATIONS)}")
        isolation = base.isolation
    rows, per_table, drops, max_lock = _limit_keys(doc, raw.get("limits"), where + ("limits",))
    proposals, applies = _rates(doc, raw.get("rate"), where + ("rate",))
    failures, window = _breaker(doc, raw.get("breaker"), where + ("breaker",))
    resources, timeout = _resources(doc, raw.get("resources"), where + ("resources",))
    return Rules(scope=_scope(doc, raw.get("scope"), where + ("scope",), targets), rows=rows, rows_per_table=per_table,
                 drops=drops, max_lock=max_lock, proposals=proposals, applies=applies, breaker_failures=failures,
                 breaker_window=window, apply=apply_mode, isolation=isolation, resources=resources, timeout=timeout)


def _scope(doc: Doc, raw: Any, where: tuple[Any, ...], targets: set[str]) -> dict[str, Scope]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        doc.problem(where, 'must map target names to {may: [...], never: [...]} change-address globs')
        return {}
    out: dict[str, Scope] = {}
    for target, spec in raw.items():
        at = where + (target,)
        if target not in targets:
            doc.problem(at, f"{target!r} is not a target of this gateway ({', '.join(sorted(targets)) or 'none'})")
            continue
        if not isinstance(spec, dict):
            doc.problem(at, 'must be {may: ["<op> <kind> <name glob>", ...], never: [...]}')
            continue
        known(doc, spec, at, ("may", "never"))
        lists = {}
        for key in ("may", "never"):
            values = spec.get(key) or []
            if not isinstance(values, list) or not all(isinstance(v, str) and len(v.split(None, 2)) == 3
                                                       for v in values):
                doc.problem(at + (key,), 'must be a list of change-address globs like "* rows public.*" or '
                                         '"add column public.*" (op kind name)')
                values = []
            lists[key] = tuple(" ".join(v.split(None, 2)) for v in values)
        out[target] = Scope(lists["may"], lists["never"])
    return out


def _count(doc: Doc, raw: dict[str, Any], key: str, where: tuple[Any, ...], default: int | None) -> int | None:
    value = raw.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        doc.problem(where + (key,), f"{value!r} is not a count (a whole number, 0 or more)")
        return default
    return value


def _limit_keys(doc: Doc, raw: Any, where: tuple[Any, ...]) -> tuple[int | None, int | None, bool, dict[str, float]]:
    base = Rules()
    if raw is None:
        return base.rows, base.rows_per_table, base.drops, {}
    if not isinstance(raw, dict):
        doc.problem(where, "must be a mapping like {rows: 10000, rows_per_table: 5000, drops: false, "
                           'max_lock: {"ACCESS EXCLUSIVE": 2s}}')
        return base.rows, base.rows_per_table, base.drops, {}
    known(doc, raw, where, ("rows", "rows_per_table", "drops", "max_lock"))
    drops = raw.get("drops", base.drops)
    if not isinstance(drops, bool):
        doc.problem(where + ("drops",), f"{drops!r} is not true or false")
        drops = base.drops
    max_lock = lock_budgets(doc, raw.get("max_lock"), where + ("max_lock",))
    return (_count(doc, raw, "rows", where, base.rows), _count(doc, raw, "rows_per_table", where, None), drops,
            max_lock)


def parse_rate(text: Any) -> Rate | None:
    """``30/10m`` → 30 per 600 s; None when it is not such a rate."""
    if not isinstance(text, str):
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\S+)\s*", text)
    if not m:
        return None
    seconds = duration(m.group(2)) if not m.group(2).isalpha() else duration("1" + m.group(2))
    if seconds is None or int(m.group(1)) < 1:
        return None
    return Rate(int(m.group(1)), seconds, text.strip())


def _rates(doc: Doc, raw: Any, where: tuple[Any, ...]) -> tuple[Rate | None, Rate | None]:
    base = Rules()
    if raw is None:
        return base.proposals, base.applies
    if not isinstance(raw, dict):
        doc.problem(where, "must be a mapping like {proposals: 30/10m, applies: 5/1h}")
        return base.proposals, base.applies
    known(doc, raw, where, ("proposals", "applies"))
    out = []
    for key, default in (("proposals", base.proposals), ("applies", base.applies)):
        if key not in raw:
            out.append(default)
            continue
        rate = parse_rate(raw[key])
        if rate is None:
            doc.problem(where + (key,), f"{raw[key]!r} is not a rate like 30/10m or 5/1h (calls / duration)")
            rate = default
        out.append(rate)
    return out[0], out[1]


def _breaker(doc: Doc, raw: Any, where: tuple[Any, ...]) -> tuple[int, float]:
    base = Rules()
    if raw is None:
        return base.breaker_failures, base.breaker_window
    if not isinstance(raw, dict):
        doc.problem(where, "must be a mapping like {failures: 5, window: 30m}")
        return base.breaker_failures, base.breaker_window
    known(doc, raw, where, ("failures", "window"))
    failures = _count(doc, raw, "failures", where, base.breaker_failures)
    if failures == 0:  # a breaker that opens before any failure would block the actor for good
        doc.problem(where + ("failures",), "must be at least 1 (the failures that open the breaker)")
        failures = None
    window = duration(raw.get("window", "30m"))
    if window is None:
        doc.problem(where + ("window",), f"{raw.get('window')!r} is not a duration like 30m")
        window = base.breaker_window
    return failures or base.breaker_failures, window


def _resources(doc: Doc, raw: Any, where: tuple[Any, ...]) -> tuple[Limits, float]:
    base = Rules()
    if raw is None:
        return base.resources, base.timeout
    if not isinstance(raw, dict):
        doc.problem(where, "must be a mapping like {cpus: 1, memory: 512m, pids: 256, timeout: 5m}")
        return base.resources, base.timeout
    known(doc, raw, where, ("cpus", "memory", "pids", "timeout"))
    limits = resource_limits(doc, {k: v for k, v in raw.items() if k != "timeout"}, where)
    timeout = duration(raw.get("timeout", base.timeout))
    if timeout is None:
        doc.problem(where + ("timeout",), f"{raw.get('timeout')!r} is not a duration like 5m")
        timeout = base.timeout
    return Limits(limits.memory or base.resources.memory, limits.cpus or base.resources.cpus,
                  limits.pids or base.resources.pids), timeout


__all__ = ["LOCK_MODES", "GatewayFile", "Rate", "Rules", "Scope", "load_gateway", "parse_rate"]
