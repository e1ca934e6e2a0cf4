"""Verifying a restore of a versioned bucket: an observation of production against the checkpoint that reads
no more than it must, and puts back what no listing shows (tags; metadata rewritten over equal content)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adapters import Checkpoint
from adapters.s3.bucket import Bucket
from adapters.s3.client import WORKERS
from adapters.s3.observe import by_key, describe, list_versions
from adapters.s3.restore import Tick


def _same_content(have: dict[str, Any], want: dict[str, Any]) -> bool:
    return have.get("etag") == want.get("etag") and have.get("size") == want.get("size")


def observe_settling_tags(b: Bucket, checkpoint: Checkpoint, tick: Tick) -> dict[str, Any]:
    """Production's observation, with drifted tags put back first. A key still at its checkpoint version costs
    one tagging read (the rest of its properties are the version's); any other key costs a HEAD as well."""
    want = by_key(checkpoint.observation)
    pinned: dict[str, str] = checkpoint.meta["versions"]
    current = {v["key"]: v for v in list_versions(b.client, b.bucket, b.prefix) if v["latest"] and not v["marker"]}
    done = 0

    def one(key: str) -> tuple[str, dict[str, Any]]:
        if pinned.get(key) != current[key]["version_id"]:
            props = describe(b.client, b.bucket, key)
            if key in want and props != want[key] and _same_content(props, want[key]) \
                    and "-" not in str(want[key]["etag"]):
                # Rewritten over equal content with other metadata or type: the listing cannot tell.
                b.copy_back(key, {"version_id": pinned[key], "parts": None}, want[key])
                props = describe(b.client, b.bucket, key)
            return key, props
        tagging = b.client.get_object_tagging(Bucket=b.bucket, Key=key)
        tags = {t["Key"]: t["Value"] for t in sorted(tagging.get("TagSet", []), key=lambda t: t["Key"])}
        if tags != want[key]["tags"]:
            b.retag(key, want[key]["tags"])
            tags = dict(want[key]["tags"])
        return key, {**want[key], "tags": tags}

    objects: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(WORKERS) as pool:
        for key, props in pool.map(one, sorted(current)):
            objects[f"{b.bucket}/{key}"] = props
            done += 1
            if tick and done % 500 == 0:
                tick(done, len(current))
    return {**checkpoint.observation, "objects": {"object": objects}}
