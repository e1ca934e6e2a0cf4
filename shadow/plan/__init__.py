"""Loading and validating a plan file (``shadow.yaml``) into frozen objects.

Every problem is collected with its location (``file:line: key``) before anything fails, so a user fixes a plan
in one go. ``${VAR}`` / ``${VAR:-default}`` in string values come from the environment given to :func:`load_plan`.

The sections are read by their own modules — :mod:`~shadow.plan.document` (the YAML, its lines, ``${VAR}``),
:mod:`~shadow.plan.targets`, :mod:`~shadow.plan.action`, :mod:`~shadow.plan.expect`, :mod:`~shadow.plan.policy` —
into the types of :mod:`~shadow.plan.model`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shadow.errors import BadInput, PlanError
from shadow.plan.action import load_action
from shadow.plan.document import known, read_plan
from shadow.plan.expect import load_expectations, parse_comparison
from shadow.plan.model import (Action, Check, Comparison, Expectation, Limits, ObjectRule, Plan, Policy, RowRule,
                               TargetSpec)
from shadow.plan.policy import load_policy
from shadow.plan.state import load_state
from shadow.plan.targets import load_targets

__all__ = ["Action", "Check", "Comparison", "Expectation", "Limits", "ObjectRule", "Plan", "Policy", "RowRule",
           "TargetSpec", "load_plan", "parse_comparison", "with_targets"]


def load_plan(path: Path, env: Mapping[str, str], kinds: Mapping[str, Any] | None = None) -> Plan:
    """Read, interpolate and validate a plan file; raise :class:`PlanError` with every problem found."""
    from adapters import REGISTRY

    kinds = REGISTRY if kinds is None else kinds
    path = Path(path)
    raw, doc, data = read_plan(path, env)
    known(doc, data, (), ("version", "targets", "action", "expect", "policy", "state"))
    if data.get("version", 1) != 1:
        doc.problem(("version",), f"unsupported plan version {data.get('version')!r} (this shadow reads version 1)")

    targets = load_targets(doc, data.get("targets"), kinds, path.parent.resolve())
    action = load_action(doc, data.get("action"), path.parent.resolve(), targets, kinds)
    expect = load_expectations(doc, data.get("expect") or {}, {t.name: kinds[t.kind] for t in targets})
    policy = load_policy(doc, data.get("policy") or {})
    written = data.get("state")
    if written is not None:  # as in the file, ${VAR} kept: a password written in it is refused
        import yaml

        written = (yaml.safe_load(raw.decode("utf-8", errors="replace")) or {}).get("state")
    state = load_state(doc, data.get("state"), written)
    if doc.problems:
        raise PlanError(doc.problems)
    return Plan(
        path=path.resolve(),
        sha256=hashlib.sha256(raw).hexdigest(),
        targets=tuple(targets),
        action=action,
        expect={t.name: expect.get(t.name, Expectation()) for t in targets},
        policy=policy,
        state=state,
    )


def with_targets(plan: Plan, addresses: Mapping[str, str]) -> Plan:
    """``plan`` with some targets pointed elsewhere (``pytest --shadow-target NAME=ADDRESS``), as each target's
    kind says (``Kind.point_at``: a PostgreSQL target's ``dsn``, an S3 target's ``bucket``, a git target's working
    copy, or its ``url`` for an address with ``://``)."""
    from adapters import REGISTRY

    if not addresses:
        return plan
    names = [t.name for t in plan.targets]
    for name in addresses:
        if name not in names:
            raise BadInput(f"{plan.path}: no target named {name!r} to point elsewhere (its targets: "
                           f"{', '.join(names)})")
    targets = []
    for t in plan.targets:
        address = addresses.get(t.name)
        if address is None:
            targets.append(t)
            continue
        options = REGISTRY[t.kind].point_at(t.options, address)
        targets.append(dataclasses.replace(t, options=options))
    return dataclasses.replace(plan, targets=tuple(targets))
