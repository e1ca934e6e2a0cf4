"""What an action read and wrote in an S3 shadow, measured from the requests the shadow's server served — not
guessed from the action's code.

The shadow's moto server logs one line per request (werkzeug's access log: ``"GET /bucket/key?tagging HTTP/1.1"``).
The lines served while the action ran name, in path-style addressing, every key it read or wrote and every prefix
it listed. A key another writer changes in production since the checkpoint is *independent* of the action when it
is neither one of those keys nor under one of those prefixes: the action never saw it, so it cannot change the
action's outcome — and a write production sees there during the apply is another writer's, not the action's.

Anything that cannot be placed — a request that names no key in the target's bucket (virtual-hosted addressing, a
``DeleteObjects`` batch whose keys are in its body) — makes the whole scope the footprint: then nothing is
independent, as when nothing was measured. A copy's source key travels in a header the log does not show: a copy
from a key another writer changed is caught by verification instead (the copied content differs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

REQUEST = re.compile(rb'"(GET|PUT|POST|DELETE|HEAD) (\S+) HTTP/[0-9.]+"')
# Bucket-level reads and writes that touch no object: they cannot make the action depend on a key.
BUCKET_SETTINGS = {"versioning", "location", "policy", "acl", "cors", "lifecycle", "encryption", "tagging",
                   "notification", "website", "logging", "ownershipControls", "publicAccessBlock",
                   "object-lock", "replication", "accelerate", "requestPayment", "uploads"}
LISTINGS = {"list-type", "prefix", "versions", "delimiter", "marker", "continuation-token", "start-after",
            "max-keys", "encoding-type", "key-marker", "version-id-marker", "fetch-owner"}


@dataclass
class Footprint:
    """Keys the action read or wrote, prefixes it listed; ``everything`` when a request could not be placed."""

    keys: set[str] = field(default_factory=set)
    prefixes: set[str] = field(default_factory=set)
    everything: bool = False
    why: str = ""

    def covers(self, key: str) -> bool:
        return self.everything or key in self.keys or any(key.startswith(p) for p in self.prefixes)

    def to_dict(self) -> dict[str, Any]:
        return {"keys": sorted(self.keys), "prefixes": sorted(self.prefixes), "everything": self.everything,
                "why": self.why}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Footprint:
        if not data:
            return cls(everything=True, why="nothing was measured")
        return cls(set(data.get("keys") or ()), set(data.get("prefixes") or ()), bool(data.get("everything")),
                   str(data.get("why") or ""))


def parse(log: bytes, bucket: str) -> Footprint:
    """The footprint of the requests in ``log`` (the access log lines served while the action ran)."""
    found = Footprint()
    for match in REQUEST.finditer(log):
        method, target = match.group(1).decode(), match.group(2).decode("latin-1")
        _place(found, method, target, bucket)
    return found


def _place(found: Footprint, method: str, target: str, bucket: str) -> None:
    parts = urlsplit(target)
    path = parts.path
    query = parse_qs(parts.query, keep_blank_values=True)
    if path in ("", "/"):
        return  # ListBuckets: names buckets, no objects
    name, _, raw_key = path.lstrip("/").partition("/")
    if unquote(name) != bucket:
        found.everything, found.why = True, f"a request that names no key of bucket {bucket!r}: {method} {path}"
        return
    if raw_key:
        found.keys.add(unquote(raw_key))
        return
    if method == "POST" and "delete" in query:
        found.everything, found.why = True, "a DeleteObjects batch (its keys are in the request body)"
        return
    if set(query) & LISTINGS or not query:
        found.prefixes.add((query.get("prefix") or [""])[0])
        return
    if set(query) <= BUCKET_SETTINGS:
        return
    found.everything, found.why = True, f"a bucket request shadow does not know: {method} {target[:120]}"
