"""Loading and validating a plan file (``shadow.yaml``) into frozen objects.

Every problem is collected with its location (``file:line: key``) before anything fails, so a user fixes a plan
in one go. ``${VAR}`` / ``${VAR:-default}`` in string values come from the environment given to :func:`load_plan`.

The sections are read by their own modules — :mod:`~shadow.plan.document` (the YAML, its lines, ``${VAR}``),
:mod:`~shadow.plan.targets`, :mod:`~shadow.plan.action`, :mod:`~shadow.plan.expect`, :mod:`~shadow.plan.policy` —
into the types of :mod:`~shadow.plan.model`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shadow.errors import PlanError
from shadow.plan.action import load_action
from shadow.plan.document import known, read_plan
from shadow.plan.expect import load_expectations, parse_comparison
from shadow.plan.model import (Action, Check, Comparison, Expectation, Limits, ObjectRule, Plan, Policy, RowRule,
                               TargetSpec)
from shadow.plan.policy import load_policy
from shadow.plan.targets import load_targets

__all__ = ["Action", "Check", "Comparison", "Expectation", "Limits", "ObjectRule", "Plan", "Policy", "RowRule",
           "TargetSpec", "load_plan", "parse_comparison"]


def load_plan(path: Path, env: Mapping[str, str], kinds: Mapping[str, Any] | None = None) -> Plan:
    """Read, interpolate and validate a plan file; raise :class:`PlanError` with every problem found."""
    from adapters import REGISTRY

    kinds = REGISTRY if kinds is None else kinds
    path = Path(path)
    raw, doc, data = read_plan(path, env)
    known(doc, data, (), ("version", "targets", "action", "expect", "policy"))
    if data.get("version", 1) != 1:
        doc.problem(("version",), f"unsupported plan version {data.get('version')!r} (this shadow reads version 1)")

    targets = load_targets(doc, data.get("targets"), kinds, path.parent.resolve())
    action = load_action(doc, data.get("action"), path.parent.resolve(), targets, kinds)
    expect = load_expectations(doc, data.get("expect") or {}, {t.name: kinds[t.kind] for t in targets})
    policy = load_policy(doc, data.get("policy") or {})
    if doc.problems:
        raise PlanError(doc.problems)
    return Plan(
        path=path.resolve(),
        sha256=hashlib.sha256(raw).hexdigest(),
        targets=tuple(targets),
        action=action,
        expect={t.name: expect.get(t.name, Expectation()) for t in targets},
        policy=policy,
    )
