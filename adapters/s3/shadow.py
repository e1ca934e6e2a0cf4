"""An S3 shadow: an ephemeral endpoint (moto's server) holding the target's bucket seeded from the checkpoint —
same keys, content, content type, metadata and tags — under throwaway credentials.

The seeding reads each object's content from its checkpoint version (or copy): the same GET says its content
type and metadata and how many tags it has, so only tagged objects cost one more read (of the version's tags,
unless the checkpoint recorded them). The shadow's own requests cost production nothing, so it observes every
property; after the action, it reads them only for the keys the action named in its requests (its footprint)
and those whose listing changed — no other key's tags or metadata can have changed.
"""

from __future__ import annotations

import secrets
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from adapters import Checkpoint, Endpoint, env_name
from adapters.s3.bucket import object_args
from adapters.s3.client import REGION, WORKERS, make_client
from adapters.s3.content import CONTENT_DIFF_LIMIT, content_diff
from adapters.s3.footprint import Footprint, parse
from adapters.s3.moto import MOTO_PORT, MotoContainer
from adapters.s3.observe import LISTED, Props, by_key, comparable, diff, list_current, observe, read_tags, same
from adapters.s3.verify import how_they_differ
from shadow.changes import Change
from snapshots import Artifact, Store

if TYPE_CHECKING:
    from adapters.s3.target import S3Target


class S3Shadow:
    """An ephemeral S3 endpoint holding one bucket seeded from the checkpoint."""

    def __init__(self, target: S3Target, url: str, checkpoint: Checkpoint, manifest: dict[str, dict[str, Any]],
                 store: Store, backend: str, container: MotoContainer | None = None,
                 requests: Path | None = None) -> None:
        self.name = target.name
        self.requests = requests  # the local server's request log (a container's is its own log)
        self._mark: int | None = None  # where the request log stood when the action started (watch)
        self.footprint: Footprint | None = None  # what the action read and wrote, once it ended (changes)
        self.rehearsed: list[Change] = []  # what the action changed (changes)
        self.container = container
        self.target = target
        self.backend = backend
        self.checkpoint = checkpoint
        self.warnings: list[str] = []
        self.url = url
        self.key_id, self.secret = "shadow" + secrets.token_hex(6), secrets.token_urlsafe(24)
        self.client = make_client(self.url, aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
                              region_name=REGION)
        self.manifest = manifest
        self.store = store
        self._seed()
        self.pristine_observation = observe(self.client, target.bucket, target.prefix)
        env = {f"SHADOW_{env_name(self.name)}_BUCKET": target.bucket,
               f"SHADOW_{env_name(self.name)}_ENDPOINT_URL": self.url}
        exclusive = {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": self.key_id,
                     "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": REGION}
        self.endpoint = Endpoint(env=env, exclusive_env=exclusive)

    def _checkpoint_body(self, key: str) -> bytes:
        entry = self.manifest[key]
        if "version_id" in entry:
            body: bytes = self.target.client().get_object(Bucket=self.target.bucket, Key=key,
                                                          VersionId=entry["version_id"])["Body"].read()
            return body
        return self.store.open_verified(Artifact(entry["sha256"], int(entry["size"]))).read_bytes()

    def _seed(self) -> None:
        t = self.target
        self.client.create_bucket(Bucket=t.bucket)
        if self.checkpoint.meta.get("versioning") == "Enabled":
            self.client.put_bucket_versioning(Bucket=t.bucket, VersioningConfiguration={"Status": "Enabled"})
        with ThreadPoolExecutor(WORKERS) as pool:
            t._call("seeding the shadow", lambda: list(pool.map(self._put_checkpoint_object, self.manifest)))

    def _put_checkpoint_object(self, key: str) -> None:
        """The checkpoint's object at ``key`` — content, content type, metadata, tags — into the shadow."""
        body, props = self._checkpoint_object(key)
        self.client.put_object(Bucket=self.target.bucket, Key=key, Body=body, **object_args(props))

    def _checkpoint_object(self, key: str) -> tuple[bytes, Props]:
        """The content and properties of the checkpoint's object at ``key``: a version's come with its GET (and
        its tags, when it has any and the checkpoint did not record them, from one more read); a copy's were
        kept with it (in a checkpoint from before that, in its observation)."""
        t = self.target
        entry = self.manifest[key]
        recorded = self.checkpoint.observation["objects"]["object"].get(f"{t.bucket}/{key}", {})
        if "version_id" not in entry:
            path = self.store.open_verified(Artifact(entry["sha256"], int(entry["size"])))
            return path.read_bytes(), entry.get("props") or recorded
        got = t.client().get_object(Bucket=t.bucket, Key=key, VersionId=entry["version_id"])
        props: Props = {"content_type": got.get("ContentType"),
                        "metadata": dict(sorted((got.get("Metadata") or {}).items()))}
        if "tags" in recorded:
            props["tags"] = recorded["tags"]
        elif int(got.get("TagCount") or 0):
            props["tags"] = read_tags(t.client(), t.bucket, key, entry["version_id"])
        return got["Body"].read(), props

    @property
    def fidelity(self) -> list[str]:
        """How the pristine shadow differs from the checkpoint, in what the checkpoint recorded."""
        cp, shadow = _both_recorded(self.checkpoint.observation["objects"], self.pristine_observation["objects"])
        return how_they_differ({"object": cp}, {"object": shadow})

    def observe(self) -> dict[str, Any]:
        return observe(self.client, self.target.bucket, self.target.prefix)

    def _request_log(self) -> bytes:
        if self.container is not None:
            return self.container.requests()
        try:
            return self.requests.read_bytes() if self.requests else b""
        except FileNotFoundError:
            return b""

    def changes(self) -> list[Change]:
        if self._mark is not None and self.footprint is None:  # read first: observing reads objects
            self.footprint = parse(self._request_log()[self._mark:], self.target.bucket)
        after = self._after()
        changes = diff(self.pristine_observation, after)
        for change in changes:
            if change.op == "modify" and "etag" in change.detail:
                content = self._content_diff(change.name.split("/", 1)[1], after)
                if content:
                    change.detail["content_diff"] = content
        self.rehearsed = changes
        return changes

    def _after(self) -> dict[str, Any]:
        """The shadow after the action: its listing, and every property of the keys the action named in a
        request or whose listing changed (all keys when its footprint is unknown or could not be placed)."""
        t, fp = self.target, self.footprint
        if fp is None or fp.everything:
            return self.observe()
        listed = list_current(self.client, t.bucket, t.prefix)
        pristine = by_key(self.pristine_observation)
        named = {k: v for k, v in listed.items() if k in fp.keys or not same(v, pristine.get(k))}
        full = observe(self.client, t.bucket, t.prefix, listed=named)
        objects = {f"{t.bucket}/{k}": {p: v[p] for p in LISTED} for k, v in listed.items()}
        objects.update(full["objects"]["object"])
        return {**full, "objects": {"object": objects}}

    def _content_diff(self, key: str, after: dict[str, Any]) -> list[str] | None:
        name = f"{self.target.bucket}/{key}"
        sizes = (after["objects"]["object"][name]["size"], self.pristine_observation["objects"]["object"][name]["size"])
        if max(sizes) > CONTENT_DIFF_LIMIT:
            return None
        new = self.client.get_object(Bucket=self.target.bucket, Key=key)["Body"].read()
        return content_diff(key, self._checkpoint_body(key), new)

    def rehearse_rollback(self, undo: bool = False) -> list[str]:
        """Undo the rehearsal in the shadow: put back every object that differs from the checkpoint (from the
        checkpoint's own versions or copies), remove those created, and compare the shadow with the checkpoint.
        Production's restore works from versions instead; what both prove is that the checkpoint is readable
        and complete."""
        bucket = self.target.bucket
        # The pristine shadow holds every property of the checkpoint's objects (the checkpoint itself may
        # hold only their listing).
        want, have = by_key(self.pristine_observation), by_key(self.observe())

        ops = [lambda key=key: self._put_checkpoint_object(key) for key in want if have.get(key) != want[key]]
        ops += [lambda key=key: self.client.delete_object(Bucket=bucket, Key=key) for key in set(have) - set(want)]
        with ThreadPoolExecutor(WORKERS) as pool:
            self.target._call("restoring the shadow", lambda: list(pool.map(lambda op: op(), ops)))
        after = self.observe()["objects"]
        now, pristine = _comparable(after), _comparable(self.pristine_observation["objects"])
        cp, seen = _both_recorded(self.checkpoint.observation["objects"], after)
        return how_they_differ({"object": cp}, {"object": seen}) or how_they_differ({"object": pristine},
                                                                                   {"object": now})

    def watch(self, sql_text: str | None = None) -> None:
        """From here on the server's requests are the action's (:mod:`adapters.s3.footprint`)."""
        self._mark = len(self._request_log())

    def independent(self, changes: list[Change]) -> list[Change]:
        """Production's changes to keys the action neither read nor wrote, under no prefix it listed."""
        if self.footprint is None:
            return []
        return [c for c in changes if not self.footprint.covers(c.name.split("/", 1)[1])]

    def lost(self) -> str | None:
        """Why the shadow's S3 server no longer answers (its process or container gone), or None while it does."""
        where = urlsplit(self.url)
        try:
            socket.create_connection((where.hostname or "127.0.0.1", where.port or 80), timeout=2).close()
        except OSError as exc:
            return f"the S3 server at {self.url} does not answer ({exc.strerror or exc})"
        return None

    def attach(self, network: Any) -> Endpoint:
        """Join the sandbox's internal network under the target's name; the endpoint an isolated action uses."""
        from adapters.docker import join_network

        alias = join_network(network, self.container.container_id if self.container else None, self.name)
        url = f"http://{alias}:{MOTO_PORT}"
        env = {**self.endpoint.env, f"SHADOW_{env_name(self.name)}_ENDPOINT_URL": url}
        return Endpoint(env=env, exclusive_env={**self.endpoint.exclusive_env, "AWS_ENDPOINT_URL": url})


def _comparable(objects: dict[str, Any]) -> dict[str, Any]:
    # Multipart uploads have an ETag that is not the content's MD5; a shadow seeded with single PUTs cannot
    # reproduce it, so those are compared by size, type, metadata and tags.
    return {n: {k: v for k, v in props.items() if not (k == "etag" and "-" in str(v))}
            for n, props in objects.get("object", {}).items()}


def _both_recorded(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`_comparable` of two observations' objects, each cut down to the properties both recorded."""
    x, y = comparable({"object": _comparable(a)}, {"object": _comparable(b)})
    return x["object"], y["object"]
