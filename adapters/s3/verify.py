"""Verifying a restore of a versioned bucket: an observation of production against the checkpoint that reads
no more than it must, and puts back what no listing shows of the properties the checkpoint recorded (tags;
metadata rewritten over equal content).

The version listing says, for every key, its current version, ETag and size: a key at its checkpoint version
has the checkpoint's content, content type and metadata (a version never changes but for its tags). So a
checkpoint that recorded only the listing is verified from a listing alone (of the current objects: ETag and
size are all it compares); one that recorded tags costs a
tagging read per key (tags change in place, and no listing shows them); one that recorded metadata costs a HEAD
of each key *not* at its checkpoint version (a copy over equal content with other metadata keeps the ETag).

What still differs is said in the change set's own addresses (``modify object <bucket>/<key>``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adapters import Checkpoint
from adapters.s3.bucket import Bucket
from adapters.s3.client import WORKERS
from adapters.s3.observe import LISTED, by_key, describe, diff, list_current, list_versions, read_tags, same
from adapters.s3.restore import Tick
from shadow.changes import listed

LIMIT = 20  # differences listed; the rest are counted


def how_they_differ(want: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """How ``got`` differs from ``want`` (two observations' ``objects``, each cut to what both recorded), in
    change addresses; nothing when they are equal."""
    if want == got:
        return []
    lines = [c.summary() for c in diff({"objects": want}, {"objects": got})] or ["fingerprints differ"]
    return listed(lines, LIMIT)


def observe_settling_tags(b: Bucket, checkpoint: Checkpoint, tick: Tick) -> dict[str, Any]:
    """Production's observation, with the properties the checkpoint recorded of each key (and only those),
    drifted tags put back first."""
    want = by_key(checkpoint.observation)
    pinned: dict[str, str] = checkpoint.meta["versions"]
    if all(props.keys() <= set(LISTED) for props in want.values()):
        # Nothing recorded that the current listing does not show: no version ids needed either (a version
        # listing is the slower one: it pages through every version, not only the current ones).
        listed = list_current(b.client, b.bucket, b.prefix)
        return {**checkpoint.observation, "objects": {"object": {f"{b.bucket}/{k}": v for k, v in listed.items()}}}
    current = {v["key"]: v for v in list_versions(b.client, b.bucket, b.prefix) if v["latest"] and not v["marker"]}
    done = 0

    def one(key: str) -> tuple[str, dict[str, Any]]:
        listed = {p: current[key][p] for p in LISTED}
        recorded = want.get(key, listed)
        if recorded.keys() <= set(LISTED):
            return key, listed  # nothing recorded that the listing does not show
        if pinned.get(key) != current[key]["version_id"] and "metadata" not in recorded:
            return key, {**listed, "tags": read_tags(b.client, b.bucket, key)}  # tags are all it recorded
        if pinned.get(key) != current[key]["version_id"]:
            props = describe(b.client, b.bucket, key, track=("metadata", "tags"))
            if key in want and not same(props, want[key]) and same(props, {p: want[key][p] for p in LISTED}) \
                    and "-" not in str(want[key]["etag"]):
                # Rewritten over equal content with other metadata or type: the listing cannot tell.
                b.copy_back(key, {"version_id": pinned[key], "parts": None}, want[key])
                props = describe(b.client, b.bucket, key, track=("metadata", "tags"))
            return key, {p: v for p, v in props.items() if p in recorded}
        # At its checkpoint version: content, type and metadata are the checkpoint's; tags may have changed.
        props = {p: v for p, v in want[key].items() if p != "tags"}
        if "tags" in want[key]:
            tags = read_tags(b.client, b.bucket, key)
            if tags != want[key]["tags"]:
                b.retag(key, want[key]["tags"])
                tags = dict(want[key]["tags"])
            props["tags"] = tags
        return key, props

    objects: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(WORKERS) as pool:
        for key, props in pool.map(one, sorted(current)):
            objects[f"{b.bucket}/{key}"] = props
            done += 1
            if tick and done % 500 == 0:
                tick(done, len(current))
    return {**checkpoint.observation, "objects": {"object": objects}}
