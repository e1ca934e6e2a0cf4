"""Observing the objects of one bucket under one prefix, and diffing two observations.

An observation is plain JSON-able data::

    {"bucket": {"name": …, "prefix": …, "versioning": "Enabled" | "Suspended" | None},
     "objects": {"object": {"<bucket>/<key>": {"etag", "size"[, "content_type", "metadata"][, "tags"]}}},
     "data": {}}

Listing gives keys, sizes and ETags, a thousand objects per request: that is all a production observation holds
by default. Content type and user metadata (one HEAD per object) and tags (one tagging request per object) are
observed only when the target tracks them (``track: [metadata, tags]``); a shadow, whose requests cost
production nothing, always observes them. Two observations are compared on the properties *both* recorded
(:func:`comparable`), so a checkpoint stored when every object's tags were read still compares with a
listing-only observation without reporting changes that were never looked for.
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
LISTED = ("etag", "size")  # what a listing page says of each object
# ``track:`` values of an s3 target → the properties each adds to an observation (each costs a request per object)
TRACKABLE = {"metadata": ("content_type", "metadata"), "tags": ("tags",)}
EVERYTHING: tuple[str, ...] = tuple(TRACKABLE)  # a shadow's observation: its requests cost production nothing
Props = dict[str, Any]


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


def describe(client: Any, bucket: str, key: str, version_id: str | None = None,
             track: tuple[str, ...] = EVERYTHING) -> Props:
    """ETag, size and the tracked properties of ``key`` (at ``version_id``): a HEAD, and a tagging read when
    tags are tracked."""
    extra = {"VersionId": version_id} if version_id else {}
    head = client.head_object(Bucket=bucket, Key=key, **extra)
    props: Props = {"etag": head["ETag"].strip('"'), "size": int(head["ContentLength"])}
    if "metadata" in track:
        props["content_type"] = head.get("ContentType")
        props["metadata"] = dict(sorted((head.get("Metadata") or {}).items()))
    if "tags" in track:
        props["tags"] = read_tags(client, bucket, key, version_id)
    return props


def read_tags(client: Any, bucket: str, key: str, version_id: str | None = None) -> dict[str, str]:
    extra = {"VersionId": version_id} if version_id else {}
    tagging = client.get_object_tagging(Bucket=bucket, Key=key, **extra)
    return {t["Key"]: t["Value"] for t in sorted(tagging.get("TagSet", []), key=lambda t: t["Key"])}


def _tracked(client: Any, bucket: str, key: str, listed: Props, version_id: str | None,
             track: tuple[str, ...]) -> Props:
    """A listed object's properties: the listing's, plus the tracked ones (a HEAD only when metadata is tracked:
    with tags alone the listing already gave ETag and size)."""
    if "metadata" in track:
        return describe(client, bucket, key, version_id, track)
    props = {p: listed[p] for p in LISTED}
    if "tags" in track:
        props["tags"] = read_tags(client, bucket, key, version_id)
    return props


def _gone(exc: Any) -> bool:
    return bool(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404 or
                exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"))


def describe_current(client: Any, bucket: str, key: str, track: tuple[str, ...] = EVERYTHING) -> Props | None:
    """:func:`describe` of a listed key, or None when another writer deleted it since the listing."""
    from botocore.exceptions import ClientError

    try:
        return describe(client, bucket, key, None, track)
    except ClientError as exc:
        if _gone(exc):
            return None
        raise


def observe(client: Any, bucket: str, prefix: str, track: tuple[str, ...] = EVERYTHING, *,
            listed: dict[str, Props] | None = None, versions: dict[str, str] | None = None,
            progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Observe the scope: the listing (or ``listed``, a listing already made), plus the ``track``ed properties
    of every key — at its version in ``versions`` (key → version id: a checkpoint's) when given."""
    listed = list_current(client, bucket, prefix) if listed is None else listed
    keys = sorted(listed)
    objects: dict[str, Props] = {}
    if not track:
        objects = {f"{bucket}/{key}": {p: listed[key][p] for p in LISTED} for key in keys}
    else:
        from botocore.exceptions import ClientError

        def one(key: str) -> tuple[str, Props | None]:
            try:
                return key, _tracked(client, bucket, key, listed[key], (versions or {}).get(key), track)
            except ClientError as exc:
                if versions is None and _gone(exc):
                    return key, None  # deleted by another writer since the listing
                raise

        done = 0
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


def tracked_only(observation: dict[str, Any], track: tuple[str, ...]) -> dict[str, Any]:
    """``observation`` cut down to what a target tracking ``track`` records of each object (a shadow's
    observation holds every property)."""
    kept = (*LISTED, *(p for t in track for p in TRACKABLE[t]))
    objects = {n: {k: v for k, v in props.items() if k in kept}
               for n, props in observation["objects"]["object"].items()}
    return {**observation, "objects": {**observation["objects"], "object": objects}}


def same(a: Props | None, b: Props | None) -> bool:
    """Two states of one key are equal on every property both recorded (absent is a state of its own)."""
    if a is None or b is None:
        return a is b
    return all(a[p] == b[p] for p in a.keys() & b.keys())


def comparable(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two observations' ``objects``, each object cut down to the properties both recorded for it: a
    listing-only observation and one that read tags compare on ETag and size."""
    oa, ob = a.get("object", {}), b.get("object", {})

    def cut(objects: dict[str, Props], other: dict[str, Props]) -> dict[str, Props]:
        return {n: ({k: v for k, v in p.items() if k in other[n]} if n in other else p) for n, p in objects.items()}

    return {**a, "object": cut(oa, ob)}, {**b, "object": cut(ob, oa)}


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
    """``add | delete | modify object <bucket>/<key>``; a modify lists each property's from → to (of the
    properties both observations recorded for the key)."""
    b, a = before["objects"]["object"], after["objects"]["object"]
    changes: list[Change] = []
    for name in sorted(set(a) - set(b)):
        changes.append(Change("add", "object", name, {"size": a[name].get("size"), "etag": a[name].get("etag")}))
    for name in sorted(set(b) - set(a)):
        changes.append(Change("delete", "object", name, {"size": b[name].get("size"), "etag": b[name].get("etag")}))
    for name in sorted(set(a) & set(b)):
        delta = {p: {"from": b[name][p], "to": a[name][p]} for p in OBJECT_PROPS
                 if p in b[name] and p in a[name] and b[name][p] != a[name][p]}
        if delta:
            changes.append(Change("modify", "object", name, delta))
    return changes
