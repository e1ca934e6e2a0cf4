"""An S3 apply among other writers: which of production's changes are the action's own, and undoing only those.

S3 has no transaction to tell one writer's requests from another's, so the rehearsal's measured footprint does
(:mod:`adapters.s3.footprint`): just before the action, production's scope is listed; after it, every key the
rehearsal changed, and every key that changed meanwhile *inside* the footprint, is the action's — its change set
is those keys against the checkpoint, compared with the rehearsal's. A key that changed meanwhile *outside* the
footprint — a key the action neither read, wrote nor listed in its rehearsal — is another writer's: reported, never
blamed on the action, never undone. (``policy.drift: strict`` counts every change as the action's.)

A checkpoint records by default only what a listing shows (ETag and size), so just before the action every key
the rehearsal changed is read in full (HEAD and tags): that pre-image is the checkpoint's state of the key when
its content is still the checkpoint's, and it is what an undo puts back — tags and metadata included.

The undo record names each key the run changed, what the run left there and what the checkpoint had. Undoing puts
back the checkpoint's version of exactly those keys; a key someone changed again since is a conflict, refused
unless forced. Re-running an undo skips keys already back (a killed undo is finished by running it again).

When the run is undone by restoring the whole checkpoint instead (a plan whose other target needs it), the
same records complete the checkpoint (:func:`recorded_states`): a restore built from listings cannot see a tag
the action changed in place, so the keys they name are read, and put back where they differ (:func:`settle`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adapters import sort_undo
from adapters.s3.bucket import Bucket
from adapters.s3.client import WORKERS
from adapters.s3.footprint import Footprint
from adapters.s3.observe import LISTED, by_key, describe_current, diff, list_current, same
from shadow.changes import Change

VERSION = 1
Props = dict[str, Any]


def before_action(b: Bucket, footprint: Footprint | None, rehearsed: list[Change]) -> dict[str, Any]:
    """What :func:`own_effect` needs, taken just before the action: the footprint, the keys the rehearsal
    changed, production's listing now and every property of each key the rehearsal changed (its pre-image:
    the tags and metadata the checkpoint's listing does not hold)."""
    keys = sorted(c.name.split("/", 1)[1] for c in rehearsed)
    with ThreadPoolExecutor(WORKERS) as pool:
        pre = dict(zip(keys, pool.map(lambda k: _props(b, k), keys)))
    return {"version": VERSION, "footprint": footprint.to_dict() if footprint else None, "rehearsed": keys,
            "before": list_current(b.client, b.bucket, b.prefix),
            "pre_images": {k: p for k, p in pre.items() if p is not None}}


def _props(b: Bucket, key: str) -> Props | None:
    return describe_current(b.client, b.bucket, key)


def own_effect(b: Bucket, before: dict[str, Any], checkpoint_observation: dict[str, Any],
               strict: bool) -> tuple[list[Change], list[Change], dict[str, Any]]:
    """(the action's own change set since the checkpoint, what others changed during the apply, the undo record)."""
    footprint = Footprint.from_dict(before.get("footprint"))
    listed_before: dict[str, Props] = before["before"]
    now = list_current(b.client, b.bucket, b.prefix)
    moved = {k for k in set(now) | set(listed_before) if now.get(k) != listed_before.get(k)}
    ours = set(before["rehearsed"]) | {k for k in moved if strict or footprint.covers(k)}
    at_checkpoint = _with_pre_images(by_key(checkpoint_observation), before.get("pre_images") or {})
    with ThreadPoolExecutor(WORKERS) as pool:
        left = dict(zip(sorted(ours), pool.map(lambda k: _props(b, k), sorted(ours))))
    name = f"{b.bucket}/"

    def observation(objects: dict[str, Props | None]) -> dict[str, Any]:
        return {"objects": {"object": {name + k: p for k, p in objects.items() if p is not None}}}

    changes = diff(observation({k: at_checkpoint.get(k) for k in ours}), observation(left))
    others = [c for c in diff(observation({k: listed_before.get(k) for k in moved - ours}),
                              observation({k: now.get(k) for k in moved - ours}))]
    record = {"version": VERSION, "kind": "s3",
              "keys": {k: {"left": left[k], "checkpoint": at_checkpoint.get(k)} for k in sorted(ours)
                       if not same(left[k], at_checkpoint.get(k))}}
    return changes, others, record


def _with_pre_images(at_checkpoint: dict[str, Props], pre_images: dict[str, Props]) -> dict[str, Props]:
    """The checkpoint's state of each key, completed by its pre-image where that still has the checkpoint's
    content (the properties the checkpoint recorded are the same): then its tags and metadata are the
    checkpoint's too, as far as anything saw (a tag-only change by another writer between the checkpoint and
    the apply is not seen unless the target tracks tags)."""
    out = dict(at_checkpoint)
    for key, pre in pre_images.items():
        if key in out and same(pre, out[key]):
            out[key] = {**pre, **out[key]}
    return out


def recorded_states(record: dict[str, Any] | None, at_checkpoint: dict[str, Props]) -> dict[str, Props]:
    """key → the checkpoint's state of each key the apply's record (the ``pending`` one kept before its action,
    or the undo record that replaced it) knows more of than the checkpoint's observation: the tags and metadata
    read just before the action, for keys whose content was still the checkpoint's then."""
    if not record:
        return {}
    if "pending" in record:
        pre_images = record["pending"].get("pre_images") or {}
        known = _with_pre_images(at_checkpoint, pre_images)
        return {k: known[k] for k in sorted(pre_images) if k in at_checkpoint and known[k] != at_checkpoint[k]}
    return {k: e["checkpoint"] for k, e in sorted((record.get("keys") or {}).items())
            if e.get("checkpoint") and k in at_checkpoint and e["checkpoint"].keys() > at_checkpoint[k].keys()}


def differing(b: Bucket, recorded: dict[str, Props]) -> list[str]:
    """Those of the ``recorded`` keys whose current state is not the recorded one (a HEAD and a tagging read each)."""
    keys = sorted(recorded)
    with ThreadPoolExecutor(WORKERS) as pool:
        now = dict(zip(keys, pool.map(lambda k: _props(b, k), keys)))
    return [k for k in keys if not same(now[k], recorded[k])]


def settle(b: Bucket, recorded: dict[str, Props], manifest: dict[str, Any], copy_of: Any) -> None:
    """After a restore from listings: each ``recorded`` key showing its checkpoint content but other tags gets the
    recorded tags back; other metadata over equal content (which no listing shows either), the checkpoint's
    version or copy again. A key whose content is not the checkpoint's is the restore's to settle."""
    def one(key: str) -> None:
        now, want = _props(b, key), recorded[key]
        if now is None or same(now, want) or not same({p: now[p] for p in LISTED}, want):
            return
        if same({p: v for p, v in now.items() if p != "tags"}, want):
            b.retag(key, want.get("tags") or {})
        else:
            _put_back(b, key, want, manifest, copy_of)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, sorted(recorded)))


def _put_back(b: Bucket, key: str, want: Props, manifest: dict[str, Any], copy_of: Any) -> None:
    """``key`` back to its checkpoint version (or copy), with the properties ``want`` names."""
    if "version_id" in manifest[key]:
        b.copy_back(key, manifest[key], want)
    else:
        b.put_back(key, copy_of(manifest[key]), {**(manifest[key].get("props") or {}), **want},
                   manifest[key].get("parts"))


def undo(b: Bucket, record: dict[str, Any], manifest: dict[str, Any], copy_of: Any,
         force: bool) -> tuple[list[str], list[str], list[str]]:
    """Put back the checkpoint's state of each key the run changed: (conflicts, done, problems)."""
    keys: dict[str, dict[str, Any]] = record.get("keys") or {}
    with ThreadPoolExecutor(WORKERS) as pool:
        current = dict(zip(keys, pool.map(lambda k: _props(b, k), keys)))
    todo, conflicts = sort_undo(keys, lambda k: same(current[k], keys[k]["checkpoint"]),
                                lambda k: same(current[k], keys[k]["left"]),
                                lambda k: f"object {b.bucket}/{k}: changed since the run left it "
                                          f"({_state(keys[k]['left'])} → now {_state(current[k])})", force)
    if conflicts and not force:
        return conflicts, [], []

    def put_back(key: str) -> None:
        want = keys[key]["checkpoint"]
        if want is None:
            b.client.delete_object(Bucket=b.bucket, Key=key)  # on a versioned bucket: a delete marker
        else:
            _put_back(b, key, want, manifest, copy_of)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(put_back, todo))
    with ThreadPoolExecutor(WORKERS) as pool:
        after = dict(zip(keys, pool.map(lambda k: _props(b, k), keys)))
    problems = [f"object {b.bucket}/{k}: {_state(after[k])}, the checkpoint had {_state(e['checkpoint'])}"
                for k, e in keys.items() if not same(after[k], e["checkpoint"])]
    done = [f"put back {len(todo)} object(s) the run changed"] if todo else []
    return conflicts, done, problems


def _state(props: Props | None) -> str:
    return "absent" if props is None else f"etag {props.get('etag')}, {props.get('size')} bytes"
