"""What an S3 checkpoint keeps, and what about the bucket makes it unsafe.

On a versioned bucket the manifest is ``{key: version_id, etag, size, known_versions}`` of every current object
in scope — nothing is copied, the versions are the checkpoint. On an unversioned bucket every object in scope is
copied into the snapshot store (content-addressed, sha256-verified before a restore). Multipart objects also
record their part sizes, so a restore can rebuild them with the same ETag.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adapters.s3.bucket import Bucket
from adapters.s3.client import WORKERS, Call
from adapters.s3.observe import list_versions
from snapshots import Artifact, Store

Manifest = dict[str, dict[str, Any]]


def versions_manifest(call: Call, b: Bucket) -> Manifest:
    """The current version of every key in scope, and every version and delete marker each key had."""
    manifest: Manifest = {}
    seen: dict[str, list[str]] = {}
    for item in call("listing versions", lambda: list(list_versions(b.client, b.bucket, b.prefix))):
        seen.setdefault(item["key"], []).append(item["version_id"])
        if item["latest"] and not item["marker"]:
            manifest[item["key"]] = {"version_id": item["version_id"], "etag": item["etag"], "size": item["size"]}
    for key, entry in manifest.items():
        # Every version and delete marker the key had: whatever else a restore finds was made since.
        entry["known_versions"] = sorted(seen[key])
    return manifest


def copies_manifest(call: Call, b: Bucket, store: Store, observation: dict[str, Any]) -> tuple[Manifest, int]:
    """(manifest, bytes copied): every observed object downloaded into the store, from a bounded pool.

    Another writer may overwrite or delete an object between the observation and its copy: each key's observed
    content, content type and metadata are then taken from the very response the copy was read from (and a key
    deleted meanwhile leaves the observation), so that the checkpoint's observation describes its copies."""
    objects = observation["objects"]["object"]
    keys = [n.split("/", 1)[1] for n in objects]

    def copy(key: str) -> tuple[str, Artifact | None, dict[str, Any]]:
        from botocore.exceptions import ClientError

        try:
            got = b.client.get_object(Bucket=b.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return key, None, {}
            raise
        with store.new_artifact() as slot, open(slot.path, "wb") as out:
            for block in got["Body"].iter_chunks(1 << 20):
                out.write(block)
        assert slot.artifact is not None
        return key, slot.artifact, {"etag": got["ETag"].strip('"'), "size": int(got["ContentLength"]),
                                    "content_type": got.get("ContentType"),
                                    "metadata": dict(sorted((got.get("Metadata") or {}).items()))}

    manifest: Manifest = {}
    copied = 0
    with ThreadPoolExecutor(WORKERS) as pool:
        for key, art, props in call("copying objects", lambda: list(pool.map(copy, keys))):
            name = f"{b.bucket}/{key}"
            if art is None:
                del objects[name]
                continue
            objects[name] = {**objects[name], **props}
            manifest[key] = {"sha256": art.sha256, "size": art.size, "etag": props["etag"]}
            copied += art.size
    return manifest, copied


def record_parts(call: Call, b: Bucket, manifest: Manifest) -> None:
    """Part sizes of multipart objects, so a restore can rebuild them with the same parts and so the same ETag."""
    multipart = [key for key, entry in manifest.items() if "-" in str(entry.get("etag", ""))]

    def sizes(key: str) -> list[int]:
        extra = {"VersionId": manifest[key]["version_id"]} if "version_id" in manifest[key] else {}
        count = int(manifest[key]["etag"].rsplit("-", 1)[1])
        return [int(b.client.head_object(Bucket=b.bucket, Key=key, PartNumber=n, **extra)["ContentLength"])
                for n in range(1, count + 1)]

    with ThreadPoolExecutor(WORKERS) as pool:
        for key, parts in zip(multipart, call("reading part sizes", lambda: list(pool.map(sizes, multipart)))):
            manifest[key]["parts"] = parts


def safety_findings(b: Bucket, status: str | None, allow: tuple[str, ...], retain_days: int) -> list[dict[str, Any]]:
    """An unversioned bucket, and lifecycle rules that expire a version a rollback may need before the
    checkpoint's retention ends (each finding says whether the target's ``allow:`` accepts it)."""
    from botocore.exceptions import ClientError

    findings = []
    if status != "Enabled":
        findings.append({"id": "s3-unversioned", "allowed": "unversioned" in allow,
                         "message": f"bucket {b.bucket} is not versioned: the checkpoint copies every object "
                                    "in scope, and an apply overwrites objects in place"})
    try:
        rules = b.client.get_bucket_lifecycle_configuration(Bucket=b.bucket).get("Rules", [])
    except ClientError:
        rules = []
    for rule in rules:
        if rule.get("Status") != "Enabled":
            continue
        # A rule filtered by tags or sizes may still match objects in scope: only its prefix can rule it out.
        filt = rule.get("Filter") or {}
        scope = filt.get("Prefix", filt.get("And", {}).get("Prefix", rule.get("Prefix", ""))) or ""
        if not (scope.startswith(b.prefix) or b.prefix.startswith(scope)):
            continue
        expiry = rule.get("NoncurrentVersionExpiration", {}).get("NoncurrentDays")
        # A version the apply replaces turns noncurrent then, and the rule expires it that many days later:
        # a rule at least as long as the retention cannot take a version the rollback needs.
        if expiry is not None and int(expiry) < retain_days:
            findings.append({"id": "s3-lifecycle-expiry", "allowed": "lifecycle-expiry" in allow,
                             "message": f"lifecycle rule {rule.get('ID', '?')!r} expires noncurrent versions "
                                        f"under {scope or '(all)'} after {expiry} day(s), before the "
                                        f"checkpoint's retention of {retain_days} day(s) ends: a rollback "
                                        "after that cannot restore (set the target's retain_days to accept a "
                                        "shorter window)"})
    return findings
