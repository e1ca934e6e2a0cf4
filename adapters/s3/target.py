"""The S3 target: checkpoint by object versions (or copies), shadow on an ephemeral endpoint, restore exactly.

- **checkpoint**: on a versioned bucket, a manifest ``{key: version_id, etag, size}`` of every current object in
  scope, from listing pages alone — nothing is copied or read, the versions are the checkpoint. Tags and
  metadata are read for every key only when the target tracks them (``track: [tags, metadata]``); otherwise
  only for the keys an apply changes, just before it writes them (:mod:`adapters.s3.own_effect`). On an
  unversioned bucket every object in scope is copied into the snapshot store (content-addressed,
  sha256-verified before a restore); the report says so and what it cost. The manifest itself is a store
  artifact.
- **shadow**: moto's S3 server on 127.0.0.1 in a child process of its own, with throwaway credentials and the
  bucket seeded from the checkpoint (same keys, content, content type, metadata and tags).
- **restore** never destroys a version: a modified key gets its checkpoint version copied back over it, a key
  created since gets a delete marker, a key deleted since gets only the delete markers made since removed, a key
  whose tags alone changed is retagged. Only changed keys cost a write and a second restore writes nothing. On a
  versioned bucket the plan comes from a listing of the scope (plus one HEAD per key deleted since, which names
  its delete marker); on an unversioned one from an observation. A bounded thread pool sends the writes. After
  an apply, the keys it recorded just before its action are read too, and their recorded tags and metadata put
  back (:func:`adapters.s3.own_effect.recorded_states`): no listing shows what the action changed in place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from adapters import (Checkpoint, Endpoint, env_name, no_lock, nothing_kept, nothing_runs, nothing_to_prepare, nothing_warm, paths_as_given,
                      tempdirs)
from adapters.s3.bucket import DELETE_BATCH, Bucket
from adapters.s3.checkpoint import copies_manifest, record_parts, safety_findings, versions_manifest
from adapters.s3.client import REGION, WORKERS, make_client, translated
from adapters.s3.content import CONTENT_DIFF_LIMIT, content_diff
from adapters.s3.moto import MOTO_IMAGE, MOTO_PORT, SERVER_START_TIMEOUT, MotoContainer, moto_endpoint, moto_server
from adapters.s3 import own_effect
from adapters.s3.observe import (TRACKABLE, by_key, comparable, diff, fingerprint_of, list_current, observe,
                                 tracked_only, versioning)
from adapters.s3.restore import copy_restore_ops, restore_versions, run_ops
from adapters.s3.shadow import S3Shadow
from adapters.s3.verify import how_they_differ, observe_settling_tags
from shadow.changes import Change
from shadow.errors import BadInput, SnapshotCorrupt
from snapshots import Artifact, Store, open_store

# Names other code imports from here, now defined in the modules above.
__all__ = ["CONTENT_DIFF_LIMIT", "DELETE_BATCH", "MOTO_PORT", "REGION", "RETAIN_DAYS", "SERVER_START_TIMEOUT",
           "WORKERS", "MotoContainer", "S3Kind", "S3Shadow", "S3Target", "content_diff", "fingerprint_of",
           "moto_endpoint", "moto_server"]

RETAIN_DAYS = 30  # how long a checkpoint must stay restorable, unless the target says otherwise
_client = make_client  # the benchmark's name for it


class S3Target:
    kind = "s3"

    def __init__(self, name: str, spec: Mapping[str, Any], settings: Any) -> None:
        self.name = name
        self.bucket = str(spec["bucket"])
        self.prefix = str(spec.get("prefix") or "")
        self.endpoint_url = spec.get("endpoint_url") or None
        self.allow = tuple(spec.get("allow") or ())
        self.retain_days = int(spec.get("retain_days") or RETAIN_DAYS)
        # What an observation of production reads beyond the listing, for every object (a request each).
        self.track: tuple[str, ...] = tuple(t for t in TRACKABLE if t in (spec.get("track") or ()))
        self.settings = settings
        self._client: Any = None
        # Large scopes take a while: the orchestrator sets this to show progress (text lines).
        self.progress: Callable[[str], None] | None = None

    # -- connection ----------------------------------------------------------------------------------------
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client(self.endpoint_url)
        return self._client

    def _bucket(self, client: Any = None) -> Bucket:
        """The scope through ``client`` (by default this target's own)."""
        return Bucket(client if client is not None else self.client(), self.bucket, self.prefix, self.name,
                      self.describe())

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return translated(self.name, self.describe(), what, fn, *args, **kwargs)

    def endpoint(self) -> Endpoint:
        """Production: the caller's own AWS configuration, resolved (the plan hands this target over)."""
        client = self.client()
        creds = client._request_signer._credentials  # the resolved boto3 chain
        env: dict[str, str] = {f"SHADOW_{env_name(self.name)}_BUCKET": self.bucket}
        exclusive = {"AWS_DEFAULT_REGION": client.meta.region_name}
        secrets_: tuple[str, ...] = ()
        if self.endpoint_url:
            exclusive["AWS_ENDPOINT_URL"] = str(self.endpoint_url)
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            exclusive["AWS_ACCESS_KEY_ID"] = frozen.access_key
            exclusive["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
            if frozen.token:
                exclusive["AWS_SESSION_TOKEN"] = frozen.token
            secrets_ = tuple(s for s in (frozen.secret_key, frozen.token) if s)
        return Endpoint(env=env, exclusive_env=exclusive, secrets=secrets_)

    # -- observe -------------------------------------------------------------------------------------------
    def observe(self) -> dict[str, Any]:
        return self._call("observing", observe, self.client(), self.bucket, self.prefix,  # type: ignore[no-any-return]
                          self.track, progress=self._progress("observed"))

    def _progress(self, verb: str) -> Callable[[int, int], None] | None:
        report = self.progress
        if report is None:
            return None
        return lambda done, total: report(f"{self.name}: {verb} {done:,} of {total:,} objects")

    def fingerprint(self, observation: dict[str, Any] | None = None) -> str:
        """Of what this target records of each object (a shadow's observation holds more)."""
        return fingerprint_of(tracked_only(observation, self.track) if observation is not None else self.observe())

    # -- checkpoint ----------------------------------------------------------------------------------------
    def checkpoint(self, store: Store, run_id: str) -> Checkpoint:
        client = self.client()
        b = self._bucket(client)
        status = self._call("reading versioning", versioning, client, self.bucket)
        findings = safety_findings(b, status, self.allow, self.retain_days)
        copied = 0
        if status == "Enabled":
            manifest = versions_manifest(self._call, b)
            observation = self._call("observing", observe, client, self.bucket, self.prefix, self.track,
                                     listed=manifest, versions={k: v["version_id"] for k, v in manifest.items()},
                                     progress=self._progress("observed"))
        else:
            observation = self._call("listing objects", observe, client, self.bucket, self.prefix, ())
            manifest, copied = copies_manifest(self._call, b, store, observation, self.track)
            record_parts(self._call, b, manifest)
        return Checkpoint(
            target=self.name, kind=self.kind, run_id=run_id, observation=observation,
            fingerprint=fingerprint_of(observation),
            artifacts={"manifest": {**store.put_json(manifest), "format": "s3 manifest"}},
            meta={"bucket": self.bucket, "prefix": self.prefix, "versioning": status, "objects": len(manifest),
                  "copied_bytes": copied, "mode": "versions" if status == "Enabled" else "copies",
                  "findings": findings, "endpoint": self.describe(), "track": list(self.track),
                  **({"versions": {k: v["version_id"] for k, v in manifest.items()}} if status == "Enabled" else {})},
        )

    def _manifest(self, checkpoint: Checkpoint, store: Store) -> dict[str, dict[str, Any]]:
        data: dict[str, dict[str, Any]] = store.get_json(checkpoint.artifacts["manifest"])
        return data

    # -- shadow --------------------------------------------------------------------------------------------
    @contextmanager
    def shadow(self, checkpoint: Checkpoint, store: Store, run_id: str, backend: str,
               limits: Any = None) -> Iterator[S3Shadow]:
        manifest = self._manifest(checkpoint, store)
        image = self.settings.image_for(self.kind, MOTO_IMAGE)
        with tempdirs.tempdir("s3", run_id, f"s3-shadow {self.name}") as tmp, \
                moto_endpoint(backend, image, run_id, f"shadow-s3 run={run_id} target={self.name}",
                              tmp / "requests.log") as (url, container):
            yield S3Shadow(self, url, checkpoint, manifest, store, backend, container, tmp / "requests.log")

    # -- production ----------------------------------------------------------------------------------------
    def end_sessions(self, tag: str) -> int:
        return 0  # nothing of a killed client's runs on here after the client is gone

    def lock(self, holder: str, timeout: float, wait: Callable[[str], None]) -> AbstractContextManager[None]:
        return no_lock(holder, timeout, wait)  # S3 has no lock; shadow's lock file excludes runs on this machine

    def lock_identity(self) -> str:
        return self.describe()

    def changes_since(self, checkpoint: Checkpoint, shadow: Any | None) -> list[Change]:
        """Production's changes since ``checkpoint``, in what both observations recorded: with the default
        tracking a tag-only change (or a copy over equal content with other metadata) is not seen."""
        return diff(checkpoint.observation, self.observe())

    # -- an apply among other writers (adapters.s3.own_effect) ---------------------------------------------------
    def before_action(self, checkpoint: Checkpoint, shadow: Any) -> dict[str, Any]:
        return self._call("listing objects", own_effect.before_action, self._bucket(),  # type: ignore[no-any-return]
                          getattr(shadow, "footprint", None), getattr(shadow, "rehearsed", []))

    def own_effect(self, before: dict[str, Any], checkpoint: Checkpoint,
                   strict: bool) -> tuple[list[Change], list[Change], dict[str, Any]]:
        return self._call("observing the apply's own writes", own_effect.own_effect,  # type: ignore[no-any-return]
                          self._bucket(), before, checkpoint.observation, strict)

    def undo(self, record: dict[str, Any], checkpoint: Checkpoint,
             force: bool) -> tuple[list[str], list[str], list[str]]:
        if "pending" in record:  # kept before the action of an apply that was killed: what did it write?
            record = self.own_effect(record["pending"], checkpoint, bool(record.get("strict")))[2]
        store = open_store(self.settings)
        manifest = self._manifest(checkpoint, store)
        return self._call("undoing the run's own writes", own_effect.undo,  # type: ignore[no-any-return]
                          self._bucket(), record, manifest, _copies_in(store), force)

    def _recorded(self, checkpoint: Checkpoint, store: Store) -> dict[str, dict[str, Any]]:
        """key → the checkpoint's state of each key the checkpoint's run recorded more of just before its apply's
        action than the checkpoint holds (its tags and metadata); empty when that run applied nothing."""
        try:
            record = store.read_undo(checkpoint.run_id, self.name)
        except SnapshotCorrupt as exc:
            # Restoring from the listing still puts content back; only in-place tag changes stay unseen.
            if self.progress:
                self.progress(f"{self.name}: the apply's record is damaged ({exc}); tags and metadata it changed "
                              "in place are not put back")
            return {}
        return own_effect.recorded_states(record, by_key(checkpoint.observation))

    def at_checkpoint(self, checkpoint: Checkpoint, store: Store) -> bool:
        """The listing's fingerprint is the checkpoint's, and so are the tags and metadata of the keys an apply
        of the checkpoint's run recorded (a tag change in place leaves the listing as it was)."""
        if self.fingerprint() != checkpoint.fingerprint:
            return False
        recorded = self._recorded(checkpoint, store)
        return not recorded or not self._call("reading the apply's keys", own_effect.differing, self._bucket(),
                                              recorded)

    def restore(self, checkpoint: Checkpoint, store: Store) -> None:
        """Only keys that differ from the checkpoint cost a write, and a second restore writes nothing.

        On a versioned bucket the plan comes from a listing, never a read per unchanged object: a key whose
        current ETag and size are the checkpoint's has its content. Tags, which change in place and which no S3
        call lists, are put back by :meth:`verify_restored` when the checkpoint recorded them (``track:
        [tags]``), and here for the keys an apply of the checkpoint's run recorded before its action (the only
        keys read one by one); a key copied back from its checkpoint version gets that version's tags otherwise.
        """
        manifest = self._manifest(checkpoint, store)
        b = self._bucket()
        recorded = self._recorded(checkpoint, store)
        want = {**by_key(checkpoint.observation), **recorded}
        if checkpoint.meta.get("mode") == "versions":
            current = self._call("listing objects", list_current, b.client, self.bucket, self.prefix)
            self._call("restoring", restore_versions, b, manifest, want, current, self._progress("restoring"))
        else:
            have = by_key(self.observe())
            ops = copy_restore_ops(b, manifest, store, want, have)
            self._call("restoring", run_ops, ops, self._progress("restoring"))
        if recorded:
            self._call("restoring the apply's keys", own_effect.settle, b, recorded, manifest, _copies_in(store))

    def _batched_deletes(self, client: Any, objects: list[dict[str, str]]) -> list[Any]:
        """One DeleteObjects per 1,000 objects, alone for a key XML cannot carry (:meth:`Bucket.batched_deletes`)."""
        return self._bucket(client).batched_deletes(objects)

    def verify_restored(self, checkpoint: Checkpoint) -> list[str]:
        """Observe production against the checkpoint, on what the checkpoint recorded; on a versioned bucket,
        also put back drifted tags when it recorded them (:mod:`adapters.s3.verify`: the listing alone when
        it recorded no more than the listing shows)."""
        if "versions" not in checkpoint.meta:
            now = self.observe()
        else:
            now = self._call("verifying", lambda: observe_settling_tags(self._bucket(), checkpoint,
                                                                        self._progress("verified")))
        recorded = self._recorded(checkpoint, open_store(self.settings))
        off = self._call("verifying the apply's keys", own_effect.differing, self._bucket(), recorded) \
            if recorded else []
        problems = [f"modify object {self.bucket}/{k} — its tags or metadata are not the ones recorded before the "
                    "apply" for k in off]
        if fingerprint_of(now) == checkpoint.fingerprint:
            return problems
        return how_they_differ(*comparable(checkpoint.observation["objects"], now["objects"])) + problems


def _copies_in(store: Store) -> Callable[[dict[str, Any]], Any]:
    """An unversioned checkpoint's copy of a key (its manifest entry), sha256-verified, from ``store``."""
    return lambda entry: store.open_verified(Artifact(entry["sha256"], int(entry["size"])))


class S3Kind:
    name = "s3"
    runs_sql = False
    resolve_paths = staticmethod(paths_as_given)
    keys = ("bucket", "prefix", "endpoint_url", "allow", "retain_days", "track")
    change_ops: tuple[str, ...] = ("add", "delete", "modify")
    change_kinds: tuple[str, ...] = ("object",)
    clear_leftovers = staticmethod(nothing_runs)  # moto's local server ends when its run's process does
    prune = staticmethod(nothing_kept)  # object copies are store objects; object versions stay the bucket's
    reap_warm = staticmethod(nothing_warm)  # keeps no warm copies
    prepare_warm = staticmethod(nothing_to_prepare)

    def validate(self, spec: Mapping[str, Any]) -> Iterator[tuple[str | None, str]]:
        for key in spec:
            if key not in self.keys and key != "kind":
                yield key, f"unknown key for an s3 target (expected: {', '.join(self.keys)})"
        bucket = spec.get("bucket")
        if bucket is None:
            yield None, "an s3 target needs `bucket:`"
        elif not isinstance(bucket, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
            yield "bucket", f"{bucket!r} is not a valid bucket name"
        if "prefix" in spec and not isinstance(spec["prefix"], str):
            yield "prefix", "must be a key prefix like invoices/2026/"
        url = spec.get("endpoint_url")
        if url not in (None, "") and (not isinstance(url, str) or not re.match(r"https?://", url)):
            yield "endpoint_url", f"{url!r} is not an http(s) URL"
        allow = spec.get("allow")
        if allow is not None and (not isinstance(allow, list) or
                                  any(a not in ("unversioned", "lifecycle-expiry") for a in allow)):
            yield "allow", "a list of: unversioned, lifecycle-expiry"
        track = spec.get("track")
        what = "a list of what to read of every object beyond its listing: tags, metadata"
        if track is not None and not isinstance(track, list):
            yield "track", f"{track!r} is not a list ({what})"
        elif track is not None:
            for bad in [t for t in track if t not in TRACKABLE]:
                yield "track", f"{bad!r} cannot be tracked ({what})"
        days = spec.get("retain_days")
        if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 1):
            yield "retain_days", f"{days!r} is not a whole number of days (1 or more)"

    def target(self, name: str, spec: Mapping[str, Any], settings: Any) -> S3Target:
        return S3Target(name, spec, settings)

    def point_at(self, spec: Mapping[str, Any], address: str) -> dict[str, Any]:
        """Another bucket: ``address`` is its name."""
        return {**spec, "bucket": address}
