"""``state: {url, store}`` in a plan or a gateway file: where runs keep their journal, run records and approvals (a
PostgreSQL database) and their checkpoints (an S3 prefix) — see :mod:`shadow.state`. The environment's own
settings (``SHADOW_STATE_URL``, ``SHADOW_STORE_URL``) win, as ``SHADOW_BACKEND`` wins over ``policy.backend``."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from shadow.plan.document import Doc, known

S = TypeVar("S")


def load_state(doc: Doc, raw: Any, written: Any) -> dict[str, str]:
    """``state: {url: "${SHADOW_STATE_URL}", store: s3://bucket/prefix}`` (``raw`` interpolated, ``written`` as in
    the file); a password only through ``${VAR}``, so that no secret is written in a file that is committed."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        doc.problem(("state",), "must be a mapping like {url: \"${SHADOW_STATE_URL}\", store: s3://bucket/prefix}")
        return {}
    known(doc, raw, ("state",), ("url", "store"))
    out: dict[str, str] = {}
    for key in ("url", "store"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            doc.problem(("state", key), "must be a non-empty string")
            continue
        as_written = (written or {}).get(key) if isinstance(written, dict) else None
        if isinstance(as_written, str) and "${" not in as_written and (
                re.search(r"://[^/@\s]*:[^/@\s]+@", as_written) or "password=" in as_written):
            doc.problem(("state", key), "holds a password: give credentials only through ${VAR}")
        out[key] = value
    if "store" in out and not out["store"].startswith("s3://"):
        doc.problem(("state", "store"), "must be an S3 prefix like s3://bucket/prefix")
    return out


def with_state(settings: S, state: Mapping[str, str]) -> S:
    """``settings`` with a file's shared state and store where the environment names none."""
    current: Any = settings
    return dataclasses.replace(current, state_url=current.state_url or state.get("url") or None,
                               store_url=current.store_url or state.get("store") or None)
