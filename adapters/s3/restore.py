"""Planning an S3 restore: which keys differ from the checkpoint, and the writes that put each one back.

Only keys that differ cost a write, and a second restore writes nothing. A restore never destroys a version: a
modified key gets its checkpoint version copied back over it, a key created since gets a delete marker, a key
deleted since gets only the delete markers made since removed, a key whose tags alone changed is retagged.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from adapters.s3.bucket import Bucket
from adapters.s3.client import WORKERS
from adapters.s3.observe import list_current, list_versions, same
from shadow.errors import InfrastructureError
from snapshots import Artifact, Store

LIST_PAGE = 1000  # objects per listing page on AWS (moto sends more, but each costs it a pass over the bucket)

Manifest = dict[str, dict[str, Any]]
Tick = Callable[[int, int], None] | None


def await_all(futures: list[Any], tick: Tick) -> None:
    """Wait for every future in order (the first failure raises), ticking progress every 500."""
    for done, future in enumerate(futures, 1):
        future.result()
        if tick and done % 500 == 0:
            tick(done, len(futures))


def run_ops(ops: list[Any], tick: Tick) -> None:
    """Send ``ops`` from a bounded pool, with progress."""
    with ThreadPoolExecutor(WORKERS) as pool:
        await_all([pool.submit(op) for op in ops], tick)


def _known_versions(entry: dict[str, Any]) -> set[str]:
    """Every version and delete marker a key had at the checkpoint: anything else was made since."""
    return set(entry.get("known_versions") or [entry["version_id"]])


def _at_entry(now: dict[str, Any] | None, entry: dict[str, Any]) -> bool:
    """A listed object has a manifest entry's content (same ETag and size)."""
    return now is not None and now["etag"] == entry["etag"] and now["size"] == entry["size"]


def _only_tags_differ(have: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    """The current object is the checkpoint's but for its tags (tagging changes an object in place)."""
    return have is not None and "tags" in want and same({k: v for k, v in have.items() if k != "tags"}, want)


# -- an unversioned bucket: from the store's copies -----------------------------------------------------------
def copy_restore_ops(b: Bucket, manifest: Manifest, store: Store, want: Manifest, have: Manifest) -> list[Any]:
    """Changed keys get the checkpoint's copy (or only its tags) back, keys created since are deleted. What
    changed is judged on the properties the observations recorded; the copy goes back with every property
    the checkpoint kept of it (its manifest entry's, or, in a checkpoint from before those, the observation's)."""
    changed = sorted(key for key, props in want.items() if not same(have.get(key), props))
    ops: list[Any] = []
    for key in changed:
        if _only_tags_differ(have.get(key), want[key]):
            ops.append(lambda key=key, tags=want[key]["tags"]: b.retag(key, tags))
            continue
        # Verified now, before the first write: a corrupt copy stops the restore before it starts.
        path = store.open_verified(Artifact(manifest[key]["sha256"], int(manifest[key]["size"])))
        ops.append(lambda key=key, path=path, props=manifest[key].get("props") or want[key],
                   parts=manifest[key].get("parts"):
                   b.put_back(key, path, props, parts))
    return ops + b.batched_deletes([{"Key": key} for key in sorted(set(have) - set(want))])


# -- a versioned bucket: from the versions the checkpoint names -----------------------------------------------
def restore_versions(b: Bucket, manifest: Manifest, want: Manifest, current: Manifest, tick: Tick) -> None:
    """Modified keys get their checkpoint version copied back, keys created since a delete marker, keys deleted
    since lose the delete marker that hides their checkpoint version — all from one bounded pool.

    A deleted key costs one HEAD, which names the marker that is its current version (S3 answers a read of a
    deleted key with the marker's version id); the markers then go in batches of 1,000. That is cheaper than
    the scope's version history, which servers list slowly (moto copies every version of the bucket for each
    page) and which is listed only for the keys the HEADs could not settle.
    """
    deleted = [key for key in manifest if key not in current]
    with ThreadPoolExecutor(WORKERS) as pool:
        # The HEADs go first: removing the markers waits on them, the other writes do not.
        heads = [pool.submit(_current_marker, b, key) for key in deleted]
        futures = [pool.submit(op) for op in _changed_ops(b, manifest, want, current)]
        try:
            markers = {key: head.result() for key, head in zip(deleted, heads)}
            futures += [pool.submit(op) for op in _undelete(b, pool, manifest, want, markers, len(current))]
        except BaseException:
            wait(futures)  # what was sent finishes; the planning error is the one to report
            raise
        await_all(futures, tick)


def _changed_ops(b: Bucket, manifest: Manifest, want: Manifest, current: Manifest) -> list[Any]:
    """Modified keys get their checkpoint version copied back; keys created since get a delete marker (a
    delete without a version id only adds one: no version is lost)."""
    ops: list[Any] = []
    for key, entry in manifest.items():
        now = current.get(key)
        if now is not None and not _at_entry(now, entry):
            ops.append(lambda key=key, entry=entry: b.copy_back(key, entry, want[key]))
    return ops + b.batched_deletes([{"Key": key} for key in current if key not in manifest])


def _current_marker(b: Bucket, key: str) -> str | None:
    """The version id of the delete marker that is ``key``'s current version, or None when the answer does not
    name one (the key came back meanwhile, or the server does not say)."""
    _, headers = b.head(key)
    return (headers.get("x-amz-version-id") or None) if headers.get("x-amz-delete-marker") == "true" else None


def _undelete(b: Bucket, pool: ThreadPoolExecutor, manifest: Manifest, want: Manifest,
              markers: dict[str, str | None], scope: int) -> list[Any]:
    """Keys deleted since: remove the marker each HEAD named, when the checkpoint never saw it (so it was made
    since), and the checkpoint version is current again without a new version written. A key left different
    (deleted twice, or re-created and deleted again since) or not settled by its HEAD is settled from the
    version history; returns the writes that takes."""
    unmarked = {key: vid for key, vid in markers.items()
                if vid is not None and vid not in _known_versions(manifest[key])}
    for op in b.batched_deletes([{"Key": key, "VersionId": vid} for key, vid in unmarked.items()]):
        op()
    rest = [key for key in markers if key not in unmarked]
    rest += _not_back(b, pool, manifest, list(unmarked), scope)
    return _deleted_ops(b, manifest, want, rest, set(unmarked))


def _not_back(b: Bucket, pool: ThreadPoolExecutor, manifest: Manifest, keys: list[str], scope: int) -> list[str]:
    """Those of ``keys`` not showing their checkpoint content: from one more listing of the scope (``scope``
    objects), or from a HEAD per key when that is fewer requests — a few keys in a large scope."""
    if not keys:
        return []
    if len(keys) >= -(-scope // LIST_PAGE):
        now = list_current(b.client, b.bucket, b.prefix)
        return [key for key in keys if not _at_entry(now.get(key), manifest[key])]
    def back(key: str) -> bool:
        head, _ = b.head(key)
        return head is not None and (head.get("VersionId") == manifest[key]["version_id"] or _at_entry(
            {"etag": head["ETag"].strip('"'), "size": int(head["ContentLength"])}, manifest[key]))

    return [key for key, ok in zip(keys, pool.map(back, keys)) if not ok]


def _deleted_ops(b: Bucket, manifest: Manifest, want: Manifest, keys: list[str], unmarked: set[str]) -> list[Any]:
    """Keys still not at their checkpoint version: the scope's version history names exactly the delete
    markers made since, and anything else written since (which only a copy of the checkpoint version
    covers)."""
    if not keys:
        return []
    history: dict[str, list[dict[str, Any]]] = {}
    for item in list_versions(b.client, b.bucket, b.prefix):
        history.setdefault(item["key"], []).append(item)
    lost = [key for key in keys
            if manifest[key]["version_id"] not in {v["version_id"] for v in history.get(key, [])}]
    if lost:
        # A marker removed above must not leave an older version showing: the key reads as deleted again.
        for op in b.batched_deletes([{"Key": key} for key in lost if key in unmarked]):
            op()
        raise InfrastructureError(f"checkpoint versions of {len(lost)} key(s) no longer exist (deleted or "
                                  f"expired), e.g. {lost[0]!r}; they cannot be restored", target=b.target)
    ops: list[Any] = []
    for key in keys:
        entry = manifest[key]
        # S3 lists versions with a one-second LastModified, so "made since the checkpoint" is "not among the
        # versions the checkpoint saw", never a timestamp comparison.
        known = _known_versions(entry)
        since = [v for v in history[key] if v["version_id"] not in known]
        if since and all(v["marker"] for v in since):
            ops += b.batched_deletes([{"Key": key, "VersionId": v["version_id"]} for v in since])
        else:
            ops.append(lambda key=key, entry=entry: b.copy_back(key, entry, want[key]))
    return ops
