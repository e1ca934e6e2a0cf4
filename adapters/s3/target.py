"""The S3 target: checkpoint by object versions (or copies), shadow on an ephemeral endpoint, restore exactly.

- **checkpoint**: on a versioned bucket, a manifest ``{key: version_id, etag, size}`` of every current object in
  scope — nothing is copied, the versions are the checkpoint. On an unversioned bucket every object in scope is
  copied into the snapshot store (content-addressed, sha256-verified before a restore); the report says so and
  what it cost. The manifest itself is a store artifact.
- **shadow**: moto's S3 server on 127.0.0.1 in a child process of its own, with throwaway credentials and the
  bucket seeded from the checkpoint (same keys, content, content type, metadata and tags).
- **restore** never destroys a version: a modified key gets its checkpoint version copied back over it, a key
  created since gets a delete marker, a key deleted since gets only the delete markers made since removed, a key
  whose tags alone changed is retagged. Only changed keys cost a write and a second restore writes nothing. On a
  versioned bucket the plan comes from a listing of the scope (plus one HEAD per key deleted since, which names
  its delete marker); on an unversioned one from an observation. A bounded thread pool sends the writes.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import secrets
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlencode

import yaml

from adapters import Checkpoint, Endpoint
from adapters.s3.observe import describe, diff, list_current, list_versions, observe, versioning
from shadow.changes import Change, differences
from shadow.errors import BadInput, InfrastructureError, TargetUnreachable
from snapshots import Artifact, Store

WORKERS = 16
RETAIN_DAYS = 30  # how long a checkpoint must stay restorable, unless the target says otherwise
LIST_PAGE = 1000  # objects per listing page on AWS (moto sends more, but each costs it a pass over the bucket)
DELETE_BATCH = 1000  # objects per DeleteObjects request: S3's limit
CONTENT_DIFF_LIMIT = 64 * 1024  # bytes: objects up to this size get a content diff in the report
REGION = "us-east-1"


def _env_name(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


# moto keeps every bucket in module globals of the process serving it (and bucket names are global across its
# accounts), so two servers in one process share their buckets and a stopped one leaves its objects to the next.
# Each shadow gets a process of its own; it exits when its stdin closes, which also happens if shadow is killed.
_SERVER = """\
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
"""
SERVER_START_TIMEOUT = 60.0


@contextmanager
def moto_server(label: str) -> Iterator[str]:
    """moto's S3 server in a child process on 127.0.0.1; yields its URL. ``label`` (with the run id) shows in ps."""
    with tempfile.TemporaryFile() as log:
        try:
            proc = subprocess.Popen([sys.executable, "-c", _SERVER, label], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log)
        except OSError as exc:
            raise InfrastructureError(f"could not start moto's S3 server for a shadow: {exc}") from exc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                line = proc.stdout.readline() if sel.select(SERVER_START_TIMEOUT) else b""
            if not line.strip().isdigit():
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
                raise InfrastructureError("moto's S3 server for a shadow did not start"
                                          + (": " + " | ".join(tail) if tail else ""))
            yield f"http://127.0.0.1:{int(line)}"
        finally:
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()


MOTO_PORT = 5000  # where moto's server listens in its image (motoserver/moto, shadow-test/moto)


class MotoContainer:
    """moto's S3 server in a labelled container (the docker backend); its port is published on 127.0.0.1 only, and
    the URL is the route this process found to it (:func:`adapters.docker.route_to`)."""

    def __init__(self, image: str, run_id: str) -> None:
        from testcontainers.core.container import DockerContainer

        from adapters.docker import labels, start_network

        self.image = image
        self._container = DockerContainer(image)
        # Published on 127.0.0.1 only: moto checks no credentials, so the port must not face the network.
        self._container.ports[f"{MOTO_PORT}/tcp"] = ("127.0.0.1",)  # type: ignore[assignment]
        network = start_network()
        self._container.with_kwargs(labels=labels(run_id, "s3-shadow"), **({"network": network} if network else {}))
        self.url = ""

    def start(self, timeout: float = SERVER_START_TIMEOUT) -> MotoContainer:
        import urllib.error
        import urllib.request

        from adapters.docker import route_to

        try:
            self._container.start()
        except Exception as exc:  # noqa: BLE001 - docker/testcontainers raise many kinds
            raise InfrastructureError(f"could not start moto's S3 server from image {self.image!r}: "
                                      f"{str(exc).strip()[:300]}") from exc
        # shadow's own route (adapters.docker), not testcontainers' guess: from inside a container that is the
        # bridge gateway, where nothing is published.
        route = route_to(self._container.get_wrapped_container(), MOTO_PORT, f"moto's S3 server from {self.image!r}")
        self.url = f"http://{route.host}:{route.port}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2):
                    return self
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise InfrastructureError(f"moto's S3 server from {self.image!r} did not answer on {self.url} "
                                              f"within {timeout:g} s: {exc}") from exc
                time.sleep(0.1)

    @property
    def container_id(self) -> str | None:
        return getattr(getattr(self._container, "_container", None), "id", None)

    def stop(self) -> None:
        try:
            self._container.stop()
        except Exception:  # noqa: BLE001 - already gone is fine; gc catches the rest by label
            pass


@contextmanager
def moto_endpoint(backend: str, image: str, run_id: str, label: str) -> Iterator[tuple[str, MotoContainer | None]]:
    """An empty S3 endpoint for one shadow: a container in the docker backend, else a child process."""
    if backend != "docker":
        with moto_server(label) as url:
            yield url, None
        return
    container = MotoContainer(image, run_id)
    try:
        yield container.start().url, container
    finally:
        container.stop()


def fingerprint_of(observation: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(observation["objects"], sort_keys=True).encode()).hexdigest()


def _client(endpoint_url: str | None, **credentials: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 3, "mode": "standard"}, max_pool_connections=WORKERS * 2,
                    connect_timeout=10, read_timeout=60)
    session = boto3.session.Session(**credentials) if credentials else boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url, region_name=session.region_name or REGION, config=config)


class S3Target:
    kind = "s3"

    def __init__(self, name: str, spec: Mapping[str, Any], settings: Any) -> None:
        self.name = name
        self.bucket = str(spec["bucket"])
        self.prefix = str(spec.get("prefix") or "")
        self.endpoint_url = spec.get("endpoint_url") or None
        self.allow = tuple(spec.get("allow") or ())
        self.retain_days = int(spec.get("retain_days") or RETAIN_DAYS)
        self.settings = settings
        self._client: Any = None
        # Large scopes take a while: the orchestrator sets this to show progress (text lines).
        self.progress: Callable[[str], None] | None = None

    # -- connection ----------------------------------------------------------------------------------------
    def client(self) -> Any:
        if self._client is None:
            self._client = _client(self.endpoint_url)
        return self._client

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise TargetUnreachable(f"{what} failed on {self.describe()}: {code}: "
                                    f"{exc.response.get('Error', {}).get('Message', '')}", target=self.name) from exc
        except BotoCoreError as exc:
            raise TargetUnreachable(f"{what} failed on {self.describe()}: {exc}", target=self.name) from exc

    def endpoint(self) -> Endpoint:
        """Production: the caller's own AWS configuration, resolved (the plan hands this target over)."""
        client = self.client()
        creds = client._request_signer._credentials  # the resolved boto3 chain
        env: dict[str, str] = {f"SHADOW_{_env_name(self.name)}_BUCKET": self.bucket}
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
                          None, self._progress("observed"))

    def _progress(self, verb: str) -> Callable[[int, int], None] | None:
        report = self.progress
        if report is None:
            return None
        return lambda done, total: report(f"{self.name}: {verb} {done:,} of {total:,} objects")

    def fingerprint(self, observation: dict[str, Any] | None = None) -> str:
        return fingerprint_of(observation if observation is not None else self.observe())

    # -- checkpoint ----------------------------------------------------------------------------------------
    def checkpoint(self, store: Store, run_id: str) -> Checkpoint:
        client = self.client()
        status = self._call("reading versioning", versioning, client, self.bucket)
        findings = self._safety_findings(client, status)
        manifest: dict[str, dict[str, Any]] = {}
        copied = 0
        if status == "Enabled":
            seen: dict[str, list[str]] = {}
            for item in self._call("listing versions", lambda: list(list_versions(client, self.bucket, self.prefix))):
                seen.setdefault(item["key"], []).append(item["version_id"])
                if item["latest"] and not item["marker"]:
                    manifest[item["key"]] = {"version_id": item["version_id"], "etag": item["etag"],
                                             "size": item["size"]}
            for key, entry in manifest.items():
                # Every version and delete marker the key had: whatever else a restore finds was made since.
                entry["known_versions"] = sorted(seen[key])
            self._record_parts(client, manifest)
            observation = self._call("observing", observe, client, self.bucket, self.prefix,
                                     {k: v["version_id"] for k, v in manifest.items()})
        else:
            observation = self._call("observing", observe, client, self.bucket, self.prefix)
            keys = [n.split("/", 1)[1] for n in observation["objects"]["object"]]

            def copy(key: str) -> tuple[str, Artifact]:
                with store.new_artifact() as slot:
                    client.download_file(self.bucket, key, str(slot.path))
                assert slot.artifact is not None
                return key, slot.artifact

            with ThreadPoolExecutor(WORKERS) as pool:
                for key, art in self._call("copying objects", lambda: list(pool.map(copy, keys))):
                    manifest[key] = {"sha256": art.sha256, "size": art.size,
                                     "etag": observation["objects"]["object"][f"{self.bucket}/{key}"]["etag"]}
                    copied += art.size
            self._record_parts(client, manifest)
        return Checkpoint(
            target=self.name, kind=self.kind, run_id=run_id, observation=observation,
            fingerprint=fingerprint_of(observation),
            artifacts={"manifest": {**store.put_json(manifest), "format": "s3 manifest"}},
            meta={"bucket": self.bucket, "prefix": self.prefix, "versioning": status, "objects": len(manifest),
                  "copied_bytes": copied, "mode": "versions" if status == "Enabled" else "copies",
                  "findings": findings, "endpoint": self.describe(),
                  **({"versions": {k: v["version_id"] for k, v in manifest.items()}} if status == "Enabled" else {})},
        )

    def _safety_findings(self, client: Any, status: str | None) -> list[dict[str, Any]]:
        from botocore.exceptions import ClientError

        findings = []
        if status != "Enabled":
            findings.append({"id": "s3-unversioned", "allowed": "unversioned" in self.allow,
                             "message": f"bucket {self.bucket} is not versioned: the checkpoint copies every object "
                                        "in scope, and an apply overwrites objects in place"})
        try:
            rules = client.get_bucket_lifecycle_configuration(Bucket=self.bucket).get("Rules", [])
        except ClientError:
            rules = []
        for rule in rules:
            if rule.get("Status") != "Enabled":
                continue
            # A rule filtered by tags or sizes may still match objects in scope: only its prefix can rule it out.
            filt = rule.get("Filter") or {}
            scope = filt.get("Prefix", filt.get("And", {}).get("Prefix", rule.get("Prefix", ""))) or ""
            if not (scope.startswith(self.prefix) or self.prefix.startswith(scope)):
                continue
            expiry = rule.get("NoncurrentVersionExpiration", {}).get("NoncurrentDays")
            # A version the apply replaces turns noncurrent then, and the rule expires it that many days later:
            # a rule at least as long as the retention cannot take a version the rollback needs.
            if expiry is not None and int(expiry) < self.retain_days:
                findings.append({"id": "s3-lifecycle-expiry", "allowed": "lifecycle-expiry" in self.allow,
                                 "message": f"lifecycle rule {rule.get('ID', '?')!r} expires noncurrent versions "
                                            f"under {scope or '(all)'} after {expiry} day(s), before the "
                                            f"checkpoint's retention of {self.retain_days} day(s) ends: a rollback "
                                            "after that cannot restore (set the target's retain_days to accept a "
                                            "shorter window)"})
        return findings

    def _manifest(self, checkpoint: Checkpoint, store: Store) -> dict[str, dict[str, Any]]:
        data: dict[str, dict[str, Any]] = store.get_json(checkpoint.artifacts["manifest"])
        return data

    # -- shadow --------------------------------------------------------------------------------------------
    @contextmanager
    def shadow(self, checkpoint: Checkpoint, store: Store, run_id: str, backend: str,
               limits: Any = None) -> Iterator[S3Shadow]:
        manifest = self._manifest(checkpoint, store)
        with moto_endpoint(backend, self.settings.s3_image, run_id, f"shadow-s3 run={run_id} target={self.name}") \
                as (url, container):
            yield S3Shadow(self, url, checkpoint, manifest, store, backend, container)

    # -- production ----------------------------------------------------------------------------------------
    def execute_sql(self, endpoint: Endpoint, statements: list[Any], timeout: float,
                    trace: list[dict[str, Any]] | None = None, tag: str = "") -> str:
        raise BadInput("an SQL action cannot run on an s3 target", target=self.name)

    def end_sessions(self, tag: str) -> int:
        return 0  # nothing of a killed client's runs on here after the client is gone

    def changes_since(self, checkpoint: Checkpoint, shadow: Any | None) -> list[Change]:
        return diff(checkpoint.observation, self.observe())

    def _record_parts(self, client: Any, manifest: dict[str, dict[str, Any]]) -> None:
        """Part sizes of multipart objects, so a restore can rebuild them with the same parts and so the same ETag."""
        multipart = [key for key, entry in manifest.items() if "-" in str(entry.get("etag", ""))]

        def sizes(key: str) -> list[int]:
            extra = {"VersionId": manifest[key]["version_id"]} if "version_id" in manifest[key] else {}
            count = int(manifest[key]["etag"].rsplit("-", 1)[1])
            return [int(client.head_object(Bucket=self.bucket, Key=key, PartNumber=n, **extra)["ContentLength"])
                    for n in range(1, count + 1)]

        with ThreadPoolExecutor(WORKERS) as pool:
            for key, parts in zip(multipart, self._call("reading part sizes", lambda: list(pool.map(sizes, multipart)))):
                manifest[key]["parts"] = parts

    def restore(self, checkpoint: Checkpoint, store: Store) -> None:
        """Only keys that differ from the checkpoint cost a write, and a second restore writes nothing.

        On a versioned bucket the plan comes from a listing, never a read per unchanged object: a key whose
        current ETag and size are the checkpoint's has its content (content type and metadata rewritten over equal
        content, and tags, which change in place and which no S3 call lists, are checked and put back by
        :meth:`verify_restored`, which reads every object anyway).
        """
        manifest = self._manifest(checkpoint, store)
        client = self.client()
        want = _by_key(checkpoint.observation)
        if checkpoint.meta.get("mode") == "versions":
            current = self._call("listing objects", list_current, client, self.bucket, self.prefix)
            self._call("restoring", self._restore_versions, client, manifest, want, current)
            return
        have = _by_key(self.observe())
        changed = sorted(key for key, props in want.items() if have.get(key) != props)
        ops = self._plan_copy_restore(client, manifest, store, want, have, changed)
        ops += self._batched_deletes(client, [{"Key": key} for key in sorted(set(have) - set(want))])
        self._run_ops("restoring", ops)

    def _restore_versions(self, client: Any, manifest: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]],
                          current: dict[str, dict[str, Any]]) -> None:
        """Modified keys get their checkpoint version copied back, keys created since a delete marker, keys deleted
        since lose the delete marker that hides their checkpoint version — all from one bounded pool.

        A deleted key costs one HEAD, which names the marker that is its current version (S3 answers a read of a
        deleted key with the marker's version id); the markers then go in batches of 1,000. That is cheaper than
        the scope's version history, which servers list slowly (moto copies every version of the bucket for each
        page) and which is listed only for the keys the HEADs could not settle.
        """
        deleted = [key for key in manifest if key not in current]
        tick = self._progress("restoring")
        with ThreadPoolExecutor(WORKERS) as pool:
            # The HEADs go first: removing the markers waits on them, the other writes do not.
            heads = [pool.submit(self._current_marker, client, key) for key in deleted]
            futures = [pool.submit(op) for op in self._changed_ops(client, manifest, want, current)]
            try:
                markers = {key: head.result() for key, head in zip(deleted, heads)}
                futures += [pool.submit(op) for op in self._undelete(client, pool, manifest, want, markers,
                                                                      len(current))]
            except BaseException:
                wait(futures)  # what was sent finishes; the planning error is the one to report
                raise
            _await_all(futures, tick)

    def _retag(self, client: Any, key: str, tags: dict[str, str]) -> None:
        if tags:
            client.put_object_tagging(Bucket=self.bucket, Key=key,
                                      Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})
        else:  # an empty TagSet is a delete (and moto's server rejects an empty PUT)
            client.delete_object_tagging(Bucket=self.bucket, Key=key)

    def _run_ops(self, what: str, ops: list[Any]) -> None:
        """Send ``ops`` from a bounded pool, with progress."""
        tick = self._progress(what)

        def run_all() -> None:
            with ThreadPoolExecutor(WORKERS) as pool:
                _await_all([pool.submit(op) for op in ops], tick)

        self._call(what, run_all)

    def _batched_deletes(self, client: Any, objects: list[dict[str, str]]) -> list[Any]:
        """One DeleteObjects per 1,000 objects (S3's limit). Without a version id a delete on a versioned bucket
        only adds a delete marker; with one it removes exactly that version."""
        batchable = [o for o in objects if _xml_safe(o["Key"])]
        ops: list[Any] = [lambda batch=batchable[i:i + DELETE_BATCH]: self._delete_batch(client, batch)
                          for i in range(0, len(batchable), DELETE_BATCH)]
        # A key XML cannot carry as it is (control characters; a carriage return, which XML turns into a line
        # feed and so into another key) is deleted on its own: its name travels in the URL.
        return ops + [lambda o=o: client.delete_object(Bucket=self.bucket, **o)
                      for o in objects if not _xml_safe(o["Key"])]

    def _delete_batch(self, client: Any, batch: list[dict[str, str]]) -> None:
        errors = client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}).get("Errors")
        if errors:
            first = errors[0]
            raise InfrastructureError(f"{len(errors)} of {len(batch)} deletes refused by {self.describe()}, e.g. "
                                      f"{first.get('Key')!r}: {first.get('Code')}: {first.get('Message', '')}",
                                      target=self.name)

    def _changed_ops(self, client: Any, manifest: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]],
                     current: dict[str, dict[str, Any]]) -> list[Any]:
        """Modified keys get their checkpoint version copied back; keys created since get a delete marker (a
        delete without a version id only adds one: no version is lost)."""
        ops: list[Any] = []
        for key, entry in manifest.items():
            now = current.get(key)
            if now is not None and not _at_entry(now, entry):
                ops.append(lambda key=key, entry=entry: self._copy_back(client, key, entry, want[key]))
        return ops + self._batched_deletes(client, [{"Key": key} for key in current if key not in manifest])

    def _head(self, client: Any, key: str) -> tuple[dict[str, Any] | None, dict[str, str]]:
        """HEAD of ``key``: (its answer, {}) or, when it is not there, (None, the 404's headers)."""
        from botocore.exceptions import ClientError

        try:
            return client.head_object(Bucket=self.bucket, Key=key), {}
        except ClientError as exc:
            response = exc.response.get("ResponseMetadata", {})
            if response.get("HTTPStatusCode") != 404:
                raise
            return None, response.get("HTTPHeaders", {})

    def _current_marker(self, client: Any, key: str) -> str | None:
        """The version id of the delete marker that is ``key``'s current version, or None when the answer does not
        name one (the key came back meanwhile, or the server does not say)."""
        _, headers = self._head(client, key)
        return (headers.get("x-amz-version-id") or None) if headers.get("x-amz-delete-marker") == "true" else None

    def _undelete(self, client: Any, pool: ThreadPoolExecutor, manifest: dict[str, dict[str, Any]],
                  want: dict[str, dict[str, Any]], markers: dict[str, str | None], scope: int) -> list[Any]:
        """Keys deleted since: remove the marker each HEAD named, when the checkpoint never saw it (so it was made
        since), and the checkpoint version is current again without a new version written. A key left different
        (deleted twice, or re-created and deleted again since) or not settled by its HEAD is settled from the
        version history; returns the writes that takes."""
        unmarked = {key: vid for key, vid in markers.items()
                    if vid is not None and vid not in _known_versions(manifest[key])}
        for op in self._batched_deletes(client, [{"Key": key, "VersionId": vid} for key, vid in unmarked.items()]):
            op()
        rest = [key for key in markers if key not in unmarked]
        rest += self._not_back(client, pool, manifest, list(unmarked), scope)
        return self._deleted_ops(client, manifest, want, rest, set(unmarked))

    def _not_back(self, client: Any, pool: ThreadPoolExecutor, manifest: dict[str, dict[str, Any]],
                  keys: list[str], scope: int) -> list[str]:
        """Those of ``keys`` not showing their checkpoint content: from one more listing of the scope (``scope``
        objects), or from a HEAD per key when that is fewer requests — a few keys in a large scope."""
        if not keys:
            return []
        if len(keys) >= -(-scope // LIST_PAGE):
            now = list_current(client, self.bucket, self.prefix)
            return [key for key in keys if not _at_entry(now.get(key), manifest[key])]
        def back(key: str) -> bool:
            head, _ = self._head(client, key)
            return head is not None and (head.get("VersionId") == manifest[key]["version_id"] or _at_entry(
                {"etag": head["ETag"].strip('"'), "size": int(head["ContentLength"])}, manifest[key]))

        return [key for key, ok in zip(keys, pool.map(back, keys)) if not ok]

    def _deleted_ops(self, client: Any, manifest: dict[str, dict[str, Any]], want: dict[str, dict[str, Any]],
                     keys: list[str], unmarked: set[str]) -> list[Any]:
        """Keys still not at their checkpoint version: the scope's version history names exactly the delete
        markers made since, and anything else written since (which only a copy of the checkpoint version
        covers)."""
        if not keys:
            return []
        history: dict[str, list[dict[str, Any]]] = {}
        for item in list_versions(client, self.bucket, self.prefix):
            history.setdefault(item["key"], []).append(item)
        lost = [key for key in keys
                if manifest[key]["version_id"] not in {v["version_id"] for v in history.get(key, [])}]
        if lost:
            # A marker removed above must not leave an older version showing: the key reads as deleted again.
            for op in self._batched_deletes(client, [{"Key": key} for key in lost if key in unmarked]):
                op()
            raise InfrastructureError(f"checkpoint versions of {len(lost)} key(s) no longer exist (deleted or "
                                      f"expired), e.g. {lost[0]!r}; they cannot be restored", target=self.name)
        ops: list[Any] = []
        for key in keys:
            entry = manifest[key]
            # S3 lists versions with a one-second LastModified, so "made since the checkpoint" is "not among the
            # versions the checkpoint saw", never a timestamp comparison.
            known = _known_versions(entry)
            since = [v for v in history[key] if v["version_id"] not in known]
            if since and all(v["marker"] for v in since):
                ops += self._batched_deletes(client, [{"Key": key, "VersionId": v["version_id"]} for v in since])
            else:
                ops.append(lambda key=key, entry=entry: self._copy_back(client, key, entry, want[key]))
        return ops

    def _copy_back(self, client: Any, key: str, entry: dict[str, Any], props: dict[str, Any]) -> None:
        source = {"Bucket": self.bucket, "Key": key, "VersionId": entry["version_id"]}
        if entry.get("parts"):
            self._multipart(client, key, props, entry["parts"],
                            lambda n, byte_range, upload: client.upload_part_copy(
                                Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=n, CopySource=source,
                                CopySourceRange=byte_range)["CopyPartResult"]["ETag"])
            return
        # Content type and metadata never change on a version, so they come with the copy; tags can, so they are
        # set to the checkpoint's in the same request.
        client.copy_object(Bucket=self.bucket, Key=key, CopySource=source, MetadataDirective="COPY",
                           TaggingDirective="REPLACE", Tagging=urlencode(props.get("tags") or {}))

    def _multipart(self, client: Any, key: str, props: dict[str, Any], parts: list[int],
                   send_part: Callable[[int, str, str], str]) -> None:
        """Rebuild an object from parts of the checkpoint's sizes: the same parts give the same ETag."""
        upload = client.create_multipart_upload(Bucket=self.bucket, Key=key, **_object_args(props))["UploadId"]
        try:
            done, start = [], 0
            for n, size in enumerate(parts, start=1):
                done.append({"PartNumber": n, "ETag": send_part(n, f"bytes={start}-{start + size - 1}", upload)})
                start += size
            client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload,
                                             MultipartUpload={"Parts": done})
        except BaseException:
            client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
            raise

    def _plan_copy_restore(self, client: Any, manifest: dict[str, dict[str, Any]], store: Store,
                           want: dict[str, dict[str, Any]], have: dict[str, dict[str, Any]],
                           changed: list[str]) -> list[Any]:
        ops: list[Any] = []
        for key in changed:
            if _only_tags_differ(have.get(key), want[key]):
                ops.append(lambda key=key, tags=want[key]["tags"]: self._retag(client, key, tags))
                continue
            # Verified now, before the first write: a corrupt copy stops the restore before it starts.
            path = store.open_verified(Artifact(manifest[key]["sha256"], int(manifest[key]["size"])))
            ops.append(lambda key=key, path=path, props=want[key], parts=manifest[key].get("parts"):
                       self._put_back(client, key, path, props, parts))
        return ops

    def _put_back(self, client: Any, key: str, path: Any, props: dict[str, Any], parts: list[int] | None) -> None:
        if parts:
            def send(n: int, byte_range: str, upload: str) -> str:
                first, last = (int(x) for x in byte_range.removeprefix("bytes=").split("-"))
                with open(path, "rb") as fh:
                    fh.seek(first)
                    body = fh.read(last - first + 1)
                return str(client.upload_part(Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=n,
                                              Body=body)["ETag"])

            self._multipart(client, key, props, parts, send)
            return
        with open(path, "rb") as fh:
            client.put_object(Bucket=self.bucket, Key=key, Body=fh, **_object_args(props))

    def verify_restored(self, checkpoint: Checkpoint) -> list[str]:
        """Observe production against the checkpoint; on a versioned bucket, also put back drifted tags.

        Tags change in place and no S3 call lists them, so only reading every object finds a tag-only change —
        which verification does anyway. Keys still at their checkpoint version cost that one tagging read (their
        content, type and metadata are the version's); any other key costs a HEAD as well.
        """
        if "versions" not in checkpoint.meta:
            now = self.observe()
        else:
            now = self._call("verifying", self._observe_settling_tags, checkpoint)
        if fingerprint_of(now) == checkpoint.fingerprint:
            return []
        return differences(checkpoint.observation["objects"], now["objects"]) or ["fingerprints differ"]

    def _observe_settling_tags(self, checkpoint: Checkpoint) -> dict[str, Any]:
        client = self.client()
        want = _by_key(checkpoint.observation)
        pinned: dict[str, str] = checkpoint.meta["versions"]
        current = {v["key"]: v for v in list_versions(client, self.bucket, self.prefix) if v["latest"] and not v["marker"]}
        tick, done = self._progress("verified"), 0

        def one(key: str) -> tuple[str, dict[str, Any]]:
            if pinned.get(key) != current[key]["version_id"]:
                props = describe(client, self.bucket, key)
                if key in want and props != want[key] and _same_content(props, want[key]) \
                        and "-" not in str(want[key]["etag"]):
                    # Rewritten over equal content with other metadata or type: the listing cannot tell.
                    self._copy_back(client, key, {"version_id": pinned[key], "parts": None}, want[key])
                    props = describe(client, self.bucket, key)
                return key, props
            tagging = client.get_object_tagging(Bucket=self.bucket, Key=key)
            tags = {t["Key"]: t["Value"] for t in sorted(tagging.get("TagSet", []), key=lambda t: t["Key"])}
            if tags != want[key]["tags"]:
                self._retag(client, key, want[key]["tags"])
                tags = dict(want[key]["tags"])
            return key, {**want[key], "tags": tags}

        objects: dict[str, dict[str, Any]] = {}
        with ThreadPoolExecutor(WORKERS) as pool:
            for key, props in pool.map(one, sorted(current)):
                objects[f"{self.bucket}/{key}"] = props
                done += 1
                if tick and done % 500 == 0:
                    tick(done, len(current))
        return {**checkpoint.observation, "objects": {"object": objects}}


class S3Shadow:
    """An ephemeral S3 endpoint holding one bucket seeded from the checkpoint."""

    def __init__(self, target: S3Target, url: str, checkpoint: Checkpoint, manifest: dict[str, dict[str, Any]],
                 store: Store, backend: str, container: MotoContainer | None = None) -> None:
        self.name = target.name
        self.container = container
        self.target = target
        self.backend = backend
        self.checkpoint = checkpoint
        self.warnings: list[str] = []
        self.url = url
        self.key_id, self.secret = "shadow" + secrets.token_hex(6), secrets.token_urlsafe(24)
        self.client = _client(self.url, aws_access_key_id=self.key_id, aws_secret_access_key=self.secret,
                              region_name=REGION)
        self.manifest = manifest
        self.store = store
        self._seed()
        self.pristine_observation = observe(self.client, target.bucket, target.prefix)
        env = {f"SHADOW_{_env_name(self.name)}_BUCKET": target.bucket,
               f"SHADOW_{_env_name(self.name)}_ENDPOINT_URL": self.url}
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
        props = self.checkpoint.observation["objects"]["object"][f"{self.target.bucket}/{key}"]
        self.client.put_object(Bucket=self.target.bucket, Key=key, Body=self._checkpoint_body(key),
                               **_object_args(props))

    @property
    def fidelity(self) -> list[str]:
        cp = _comparable(self.checkpoint.observation["objects"])
        shadow = _comparable(self.pristine_observation["objects"])
        return [] if cp == shadow else differences(cp, shadow)

    def observe(self) -> dict[str, Any]:
        return observe(self.client, self.target.bucket, self.target.prefix)

    def changes(self) -> list[Change]:
        after = self.observe()
        changes = diff(self.pristine_observation, after)
        for change in changes:
            if change.op == "modify" and "etag" in change.detail:
                content = self._content_diff(change.name.split("/", 1)[1], after)
                if content:
                    change.detail["content_diff"] = content
        return changes

    def _content_diff(self, key: str, after: dict[str, Any]) -> list[str] | None:
        name = f"{self.target.bucket}/{key}"
        sizes = (after["objects"]["object"][name]["size"], self.pristine_observation["objects"]["object"][name]["size"])
        if max(sizes) > CONTENT_DIFF_LIMIT:
            return None
        new = self.client.get_object(Bucket=self.target.bucket, Key=key)["Body"].read()
        return content_diff(key, self._checkpoint_body(key), new)

    def rehearse_rollback(self) -> list[str]:
        """Undo the rehearsal in the shadow: put back every object that differs from the checkpoint (from the
        checkpoint's own versions or copies), remove those created, and compare the shadow with the checkpoint.
        Production's restore works from versions instead; what both prove is that the checkpoint is readable
        and complete."""
        bucket = self.target.bucket
        want, have = _by_key(self.checkpoint.observation), _by_key(self.observe())

        ops = [lambda key=key: self._put_checkpoint_object(key) for key in want if have.get(key) != want[key]]
        ops += [lambda key=key: self.client.delete_object(Bucket=bucket, Key=key) for key in set(have) - set(want)]
        with ThreadPoolExecutor(WORKERS) as pool:
            self.target._call("restoring the shadow", lambda: list(pool.map(lambda op: op(), ops)))
        cp, now = _comparable(self.checkpoint.observation["objects"]), _comparable(self.observe()["objects"])
        return [] if cp == now else differences(cp, now)

    def check(self, query: str) -> Any:
        raise BadInput("`checks` run SQL and are for postgres targets", target=self.name)

    def attach(self, network: Any) -> Endpoint:
        """Join the sandbox's internal network under the target's name; the endpoint an isolated action uses."""
        from adapters.docker import join_network

        alias = join_network(network, self.container.container_id if self.container else None, self.name)
        url = f"http://{alias}:{MOTO_PORT}"
        env = {**self.endpoint.env, f"SHADOW_{_env_name(self.name)}_ENDPOINT_URL": url}
        return Endpoint(env=env, exclusive_env={**self.endpoint.exclusive_env, "AWS_ENDPOINT_URL": url})


def _by_key(observation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """key → properties of an observation's objects (their names are ``<bucket>/<key>``)."""
    return {name.split("/", 1)[1]: props for name, props in observation["objects"]["object"].items()}


def _object_args(props: dict[str, Any]) -> dict[str, Any]:
    """put_object / create_multipart_upload arguments that give an object these observed properties."""
    args: dict[str, Any] = {"Metadata": props.get("metadata") or {}}
    if props.get("content_type"):
        args["ContentType"] = props["content_type"]
    if props.get("tags"):
        args["Tagging"] = urlencode(props["tags"])
    return args


_XML_UNSAFE = re.compile("[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_safe(key: str) -> bool:
    """``key`` survives an XML request body unchanged (DeleteObjects sends keys as XML text)."""
    return _XML_UNSAFE.search(key) is None


def _await_all(futures: list[Any], tick: Callable[[int, int], None] | None) -> None:
    """Wait for every future in order (the first failure raises), ticking progress every 500."""
    for done, future in enumerate(futures, 1):
        future.result()
        if tick and done % 500 == 0:
            tick(done, len(futures))


def _known_versions(entry: dict[str, Any]) -> set[str]:
    """Every version and delete marker a key had at the checkpoint: anything else was made since."""
    return set(entry.get("known_versions") or [entry["version_id"]])


def _at_entry(now: dict[str, Any] | None, entry: dict[str, Any]) -> bool:
    """A listed object has a manifest entry's content (same ETag and size)."""
    return now is not None and now["etag"] == entry["etag"] and now["size"] == entry["size"]


def _same_content(have: dict[str, Any], want: dict[str, Any]) -> bool:
    return have.get("etag") == want.get("etag") and have.get("size") == want.get("size")


def _only_tags_differ(have: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    """The current object is the checkpoint's but for its tags (tagging changes an object in place)."""
    return have is not None and {k: v for k, v in have.items() if k != "tags"} == \
        {k: v for k, v in want.items() if k != "tags"}


def _comparable(objects: dict[str, Any]) -> dict[str, Any]:
    # Multipart uploads have an ETag that is not the content's MD5; a shadow seeded with single PUTs cannot
    # reproduce it, so those are compared by size, type, metadata and tags.
    return {n: {k: v for k, v in props.items() if not (k == "etag" and "-" in str(v))}
            for n, props in objects.get("object", {}).items()}


def content_diff(key: str, old: bytes, new: bytes, limit: int = 40) -> list[str] | None:
    """A short, human diff of a small JSON / YAML / text object."""
    from deepdiff import DeepDiff

    try:
        old_text, new_text = old.decode("utf-8"), new.decode("utf-8")
    except UnicodeDecodeError:
        return None
    loader = json.loads if key.endswith(".json") else yaml.safe_load if key.endswith((".yaml", ".yml")) else None
    if loader is not None:
        try:
            report = DeepDiff(loader(old_text), loader(new_text), verbose_level=2)
            lines = [line for line in report.pretty().splitlines() if line.strip()]
            return lines[:limit]
        except Exception:  # noqa: BLE001 - not valid JSON/YAML after all: fall back to a text diff
            pass
    lines = list(difflib.unified_diff(old_text.splitlines(), new_text.splitlines(), "before", "after", lineterm=""))
    return lines[:limit] if lines else None


class S3Kind:
    name = "s3"
    keys = ("bucket", "prefix", "endpoint_url", "allow", "retain_days")
    change_ops: tuple[str, ...] = ("add", "delete", "modify")
    change_kinds: tuple[str, ...] = ("object",)

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
        days = spec.get("retain_days")
        if days is not None and (isinstance(days, bool) or not isinstance(days, int) or days < 1):
            yield "retain_days", f"{days!r} is not a whole number of days (1 or more)"

    def target(self, name: str, spec: Mapping[str, Any], settings: Any) -> S3Target:
        return S3Target(name, spec, settings)
