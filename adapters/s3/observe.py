"""Observing the objects of one bucket under one prefix, and diffing two observations.

An observation is plain JSON-able data::

    {"bucket": {"name": …, "prefix": …, "versioning": "Enabled" | "Suspended" | None},
     "objects": {"object": {"<bucket>/<key>": {"etag", "size", "content_type", "metadata", "tags"}}},
     "data": {}}

Listing gives keys, sizes and ETags; content type, user metadata and tags need one HEAD and one tagging
request per object, sent from a bounded thread pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adapters import json_sha256
from shadow.changes import Change

WORKERS = 16
# Ask for as many entries per listing page as the server will give: AWS caps a page at 1,000 whatever is asked;
# servers that do not (moto) answer in fewer, and every page costs them a pass over the whole bucket.
PAGE = {"PageSize": 100_000}
OBJECT_PROPS = ("etag", "size", "content_type", "metadata", "tags")


def list_current(client: Any, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    """key → {"etag", "size"} of every current object under ``prefix`` (paged)."""
    out: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix,
                                                                        PaginationConfig=PAGE):
        for item in page.get("Contents", []):
            out[item["Key"]] = {"etag": item["ETag"].strip('"'), "size": int(item["Size"])}
    return out


def list_versions(client: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Every version and delete marker under ``prefix``.

    Not in history order: boto3 returns versions and delete markers as two separate lists, and ``modified`` has
    one-second resolution, so neither tells which of two entries made in the same second came first.
    """
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix,
                                                                       PaginationConfig=PAGE):
        for item in page.get("Versions", []):
            yield {"key": item["Key"], "version_id": item["VersionId"], "latest": item["IsLatest"],
                   "marker": False, "etag": item["ETag"].strip('"'), "size": int(item["Size"]),
                   "modified": item["LastModified"]}
        for item in page.get("DeleteMarkers", []):
            yield {"key": item["Key"], "version_id": item["VersionId"], "latest": item["IsLatest"], "marker": True,
                   "modified": item["LastModified"]}


def describe(client: Any, bucket: str, key: str, version_id: str | None = None) -> dict[str, Any]:
    extra = {"VersionId": version_id} if version_id else {}
    head = client.head_object(Bucket=bucket, Key=key, **extra)
    tagging = client.get_object_tagging(Bucket=bucket, Key=key, **extra)
    return {
        "etag": head["ETag"].strip('"'),
        "size": int(head["ContentLength"]),
        "content_type": head.get("ContentType"),
        "metadata": dict(sorted((head.get("Metadata") or {}).items())),
        "tags": {t["Key"]: t["Value"] for t in sorted(tagging.get("TagSet", []), key=lambda t: t["Key"])},
    }


def describe_current(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """:func:`describe` of a listed key, or None when another writer deleted it since the listing."""
    from botocore.exceptions import ClientError

    try:
        return describe(client, bucket, key)
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404 or \
                exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
            return None
        raise


def observe(client: Any, bucket: str, prefix: str, versions: dict[str, str] | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Observe the scope; ``versions`` (key → version id) pins each key to a version (a checkpoint)."""
    keys = sorted(versions) if versions is not None else sorted(list_current(client, bucket, prefix))
    done = 0

    def one(key: str) -> tuple[str, dict[str, Any] | None]:
        if versions is not None:
            return key, describe(client, bucket, key, versions.get(key))
        return key, describe_current(client, bucket, key)

    objects: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(WORKERS) as pool:
        for key, props in pool.map(one, keys):
            if props is not None:
                objects[f"{bucket}/{key}"] = props
            done += 1
            if progress and done % 500 == 0:
                progress(done, len(keys))
    return {
        "bucket": {"name": bucket, "prefix": prefix, "versioning": versioning(client, bucket)},
        "objects": {"object": objects},
        "data": {},
    }


def fingerprint_of(observation: dict[str, Any]) -> str:
    """The objects alone (an S3 observation's ``data`` is always empty), as S3 fingerprints were made before
    :func:`adapters.fingerprint_of`: a checkpoint stored then still matches."""
    return json_sha256(observation["objects"])


def by_key(observation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """key → properties of an observation's objects (their names are ``<bucket>/<key>``)."""
    return {name.split("/", 1)[1]: props for name, props in observation["objects"]["object"].items()}


def versioning(client: Any, bucket: str) -> str | None:
    return client.get_bucket_versioning(Bucket=bucket).get("Status")


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """``add | delete | modify object <bucket>/<key>``; a modify lists each property's from → to."""
    b, a = before["objects"]["object"], after["objects"]["object"]
    changes: list[Change] = []
    for name in sorted(set(a) - set(b)):
        changes.append(Change("add", "object", name, {"size": a[name]["size"], "etag": a[name]["etag"]}))
    for name in sorted(set(b) - set(a)):
        changes.append(Change("delete", "object", name, {"size": b[name]["size"], "etag": b[name]["etag"]}))
    for name in sorted(set(a) & set(b)):
        delta = {p: {"from": b[name].get(p), "to": a[name].get(p)} for p in OBJECT_PROPS
                 if b[name].get(p) != a[name].get(p)}
        if delta:
            changes.append(Change("modify", "object", name, delta))
    return changes
