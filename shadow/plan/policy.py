"""``policy:`` — the shadow backend and its limits, lock budgets, allowed findings, redaction, approval."""

from __future__ import annotations

import re
from typing import Any

from shadow.plan.document import Doc, duration, known
from shadow.plan.model import Limits, Policy

BACKENDS = ("auto", "local", "docker")


def load_policy(doc: Doc, raw: Any) -> Policy:
    if not isinstance(raw, dict):
        doc.problem(("policy",), "must be a mapping")
        return Policy()
    known(doc, raw, ("policy",), ("backend", "limits", "max_lock", "allow", "redact", "approval",
                                   "rehearse_rollback", "drift", "lock_timeout", "lock_retries", "warm"))
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
    drift = raw.get("drift", "scoped")
    if drift not in DRIFT_RULES:
        doc.problem(("policy", "drift"), f"{drift!r} is not one of: {', '.join(DRIFT_RULES)}")
        drift = "scoped"
    lock_timeout, lock_retries = _lock_waits(doc, raw)
    warm = None
    if raw.get("warm") not in (None, False) and str(raw["warm"]).strip().lower() not in ("off", "no", "none"):
        warm = duration(raw["warm"])
        if warm is None or warm <= 0:
            doc.problem(("policy", "warm"), f"{raw['warm']!r} is not a duration like 10m, 1h (how long the "
                                            "checkpoint's restored copy is kept after its last use)")
            warm = None
    return Policy(backend=backend, limits=resource_limits(doc, raw.get("limits")), max_lock=lock_budgets(doc, raw.get("max_lock")),
                  allow=tuple(allow), redact=tuple(p.strip() for p in redact), approval=approval,
                  rehearse_rollback=rehearse_rollback, drift=drift, lock_timeout=lock_timeout,
                  lock_retries=lock_retries, warm=warm)


DRIFT_RULES = ("scoped", "strict")


def _lock_waits(doc: Doc, raw: dict[str, Any]) -> tuple[float, int]:
    """``lock_timeout`` (a duration, default 5s) and ``lock_retries`` (a count, default 3)."""
    timeout = duration(raw.get("lock_timeout", "5s"))
    if timeout is None or timeout <= 0:
        doc.problem(("policy", "lock_timeout"), f"{raw.get('lock_timeout')!r} is not a duration like 500ms, 2s, 1m")
        timeout = 5.0
    retries = raw.get("lock_retries", 3)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 20:
        doc.problem(("policy", "lock_retries"), f"{retries!r} is not a number of retries from 0 to 20")
        retries = 3
    return timeout, retries


LOCK_MODES = ("ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
              "EXCLUSIVE", "ACCESS EXCLUSIVE")


def lock_budgets(doc: Doc, raw: Any, where: tuple[Any, ...] = ("policy", "max_lock")) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        doc.problem(where, 'must map lock modes to durations, e.g. {"ACCESS EXCLUSIVE": 2s}')
        return {}
    out: dict[str, float] = {}
    for mode, limit in raw.items():
        name = str(mode).upper().replace("_", " ")
        seconds = duration(limit) if limit not in (0, "0") else 0.0
        if name not in LOCK_MODES:
            doc.problem(where + (mode,), f"unknown lock mode {mode!r} (one of: {', '.join(LOCK_MODES)})")
        elif seconds is None:
            doc.problem(where + (mode,), f"{limit!r} is not a duration like 500ms, 2s, 1m")
        else:
            out[name] = seconds
    return out


def resource_limits(doc: Doc, raw: Any, where: tuple[Any, ...] = ("policy", "limits")) -> Limits:
    if raw is None:
        return Limits()
    if not isinstance(raw, dict):
        doc.problem(where, "must be a mapping like {memory: 1g, cpus: 2, pids: 512}")
        return Limits()
    known(doc, raw, where, ("memory", "cpus", "pids"))
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
