"""What an S3 checkpoint keeps, and what about the bucket makes it unsafe.

On a versioned bucket the manifest is ``{key: version_id, etag, size, known_versions}`` of every current object
in scope, from the version listing alone (a request per thousand versions) — nothing is copied and no object is
read, the versions are the checkpoint: a version's content, content type and metadata never change, and what a
restore needs of them (multipart part sizes, tags when they were not tracked) it reads from the version then.
On an unversioned bucket every object in scope is copied into the snapshot store (content-addressed,
sha256-verified before a restore) with its content type, metadata and tags (read only for objects that have
some), and multipart objects record their part sizes, so a restore can rebuild them with the same ETag.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adapters.s3.bucket import Bucket
from adapters.s3.client import WORKERS, Call
from adapters.s3.observe import LISTED, TRACKABLE, Props, read_tags, list_versions
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


def copies_manifest(call: Call, b: Bucket, store: Store, observation: dict[str, Any],
                    track: tuple[str, ...]) -> tuple[Manifest, int]:
    """(manifest, bytes copied): every listed object of the (listing-only) ``observation`` downloaded into the
    store, from a bounded pool; the observation gains the ``track``ed properties.

    The manifest keeps each copy's content type, metadata and tags whatever is tracked: a restore writes them
    back with the content, and there is no version to read them from later. The GET that copies an object says
    its content type and metadata, and how many tags it has: only objects with tags cost a tagging read.
    Another writer may overwrite or delete an object between the listing and its copy: each key's observed
    properties are then taken from the very response the copy was read from (and a key deleted meanwhile
    leaves the observation), so that the checkpoint's observation describes its copies."""
    objects = observation["objects"]["object"]
    keys = [n.split("/", 1)[1] for n in objects]
    kept = (*LISTED, *(p for t in track for p in TRACKABLE[t]))

    def copy(key: str) -> tuple[str, Artifact | None, Props]:
        from botocore.exceptions import ClientError

        try:
            got = b.client.get_object(Bucket=b.bucket, Key=key)
            with store.new_artifact() as slot, open(slot.path, "wb") as out:
                for block in got["Body"].iter_chunks(1 << 20):
                    out.write(block)
            # Tags are read after the body, so they are at least as new as the copy (S3 sends no tags with it).
            tags = read_tags(b.client, b.bucket, key) if int(got.get("TagCount") or 0) else {}
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return key, None, {}
            raise
        assert slot.artifact is not None
        return key, slot.artifact, {"etag": got["ETag"].strip('"'), "size": int(got["ContentLength"]),
                                    "content_type": got.get("ContentType"),
                                    "metadata": dict(sorted((got.get("Metadata") or {}).items())), "tags": tags}

    manifest: Manifest = {}
    copied = 0
    with ThreadPoolExecutor(WORKERS) as pool:
        for key, art, props in call("copying objects", lambda: list(pool.map(copy, keys))):
            name = f"{b.bucket}/{key}"
            if art is None:
                del objects[name]
                continue
            objects[name] = {p: props[p] for p in kept}
            manifest[key] = {"sha256": art.sha256, "size": art.size, "etag": props["etag"], "props": props}
            copied += art.size
    return manifest, copied


def record_parts(call: Call, b: Bucket, manifest: Manifest) -> None:
    """Part sizes of multipart copies, so a restore can rebuild them with the same parts and so the same ETag
    (a versioned checkpoint reads them from the version when a restore needs them: :meth:`Bucket.copy_back`)."""
    multipart = [key for key, entry in manifest.items() if "-" in str(entry.get("etag", ""))]
    with ThreadPoolExecutor(WORKERS) as pool:
        for key, parts in zip(multipart, call("reading part sizes", lambda: list(
                pool.map(lambda k: b.part_sizes(k, manifest[k]), multipart)))):
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
