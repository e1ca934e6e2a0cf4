"""The S3 target: checkpoint by object versions (or copies), shadow on an ephemeral endpoint, restore exactly.

- **checkpoint**: on a versioned bucket, a manifest ``{key: version_id, etag, size}`` of every current object in
  scope — nothing is copied, the versions are the checkpoint. On an unversioned bucket every object in scope is
  copied into the snapshot store (content-addressed, sha256-verified before a restore); the report says so and
  what it cost. The manifest itself is a store artifact.
- **shadow**: moto's S3 server on 127.0.0.1 in this process, with throwaway credentials and the bucket seeded
  from the checkpoint (same keys, content, content type, metadata and tags).
- **restore** never destroys a version: a modified key gets its checkpoint version copied back over it, a key
  created since gets a delete marker, a key deleted since gets only the delete markers made since removed. Only
  changed keys cost requests (plus the listing pages); a bounded thread pool sends them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
import secrets
from urllib.parse import urlencode
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import yaml

from adapters import Checkpoint, Endpoint
from adapters.s3.observe import describe, diff, list_current, list_versions, observe, versioning
from shadow.changes import Change, differences
from shadow.errors import BadInput, InfrastructureError, SnapshotCorrupt, TargetUnreachable
from snapshots import Artifact, Store

WORKERS = 16
CONTENT_DIFF_LIMIT = 64 * 1024  # bytes: objects up to this size get a content diff in the report
REGION = "us-east-1"


def _env_name(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


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
        self.settings = settings
        self._client: Any = None

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
        return self._call("observing", observe, self.client(), self.bucket, self.prefix)  # type: ignore[no-any-return]

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
            for item in self._call("listing versions", lambda: list(list_versions(client, self.bucket, self.prefix))):
                if item["latest"] and not item["marker"]:
                    manifest[item["key"]] = {"version_id": item["version_id"], "etag": item["etag"],
                                             "size": item["size"]}
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
        with store.new_artifact() as slot:
            slot.path.write_text(json.dumps(manifest, sort_keys=True))
        assert slot.artifact is not None
        return Checkpoint(
            target=self.name, kind=self.kind, run_id=run_id, observation=observation,
            fingerprint=fingerprint_of(observation),
            artifacts={"manifest": {"sha256": slot.artifact.sha256, "size": slot.artifact.size,
                                    "format": "s3 manifest"}},
            meta={"bucket": self.bucket, "prefix": self.prefix, "versioning": status, "objects": len(manifest),
                  "copied_bytes": copied, "mode": "versions" if status == "Enabled" else "copies",
                  "findings": findings, "endpoint": self.describe()},
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
            scope = rule.get("Filter", {}).get("Prefix", rule.get("Prefix", "")) or ""
            if not (scope.startswith(self.prefix) or self.prefix.startswith(scope)):
                continue
            expiry = rule.get("NoncurrentVersionExpiration", {}).get("NoncurrentDays")
            if expiry is not None:
                findings.append({"id": "s3-lifecycle-expiry", "allowed": "lifecycle-expiry" in self.allow,
                                 "message": f"lifecycle rule {rule.get('ID', '?')!r} expires noncurrent versions "
                                            f"under {scope or '(all)'} after {expiry} day(s): a checkpoint older "
                                            "than that cannot be restored"})
        return findings

    def _manifest(self, checkpoint: Checkpoint, store: Store) -> dict[str, dict[str, Any]]:
        art = checkpoint.artifacts["manifest"]
        path = store.open_verified(Artifact(art["sha256"], int(art["size"])))
        try:
            data: dict[str, dict[str, Any]] = json.loads(path.read_text())
            return data
        except ValueError as exc:
            raise SnapshotCorrupt(f"checkpoint manifest {path} is unreadable: {exc}") from exc

    # -- shadow --------------------------------------------------------------------------------------------
    @contextmanager
    def shadow(self, checkpoint: Checkpoint, store: Store, run_id: str, backend: str,
               limits: Any = None) -> Iterator[S3Shadow]:
        from moto.server import ThreadedMotoServer

        manifest = self._manifest(checkpoint, store)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            yield S3Shadow(self, server, checkpoint, manifest, store, backend)
        finally:
            server.stop()

    # -- production ----------------------------------------------------------------------------------------
    def execute_sql(self, endpoint: Endpoint, statements: list[Any], timeout: float) -> str:
        raise BadInput("an SQL action cannot run on an s3 target", target=self.name)

    def changes_since(self, checkpoint: Checkpoint, shadow: Any | None) -> list[Change]:
        return diff(checkpoint.observation, self.observe())

    def restore(self, checkpoint: Checkpoint, store: Store) -> None:
        manifest = self._manifest(checkpoint, store)
        client = self.client()
        props = {n.split("/", 1)[1]: p for n, p in checkpoint.observation["objects"]["object"].items()}
        versioned = checkpoint.meta.get("mode") == "versions"
        if versioned:
            ops = self._plan_versioned_restore(client, manifest)
        else:
            ops = self._plan_copy_restore(client, manifest, store, props)
        self._run_ops("restoring", ops)
        # What a new version does not show: tags, metadata or content type changed in place (tagging never
        # makes a version; an unversioned bucket has none). Put back exactly the keys that still differ.
        now = self.observe()["objects"]["object"]
        fixes: list[Callable[..., Any]] = []
        for key, want in props.items():
            have = now.get(f"{self.bucket}/{key}")
            if have is None or have == want:
                continue
            if {k: v for k, v in have.items() if k != "tags"} == {k: v for k, v in want.items() if k != "tags"}:
                # Everything but the tags matches, so the current object is the checkpoint's: retag it.
                fixes.append(lambda key=key, tags=want["tags"]: self._retag(client, key, tags))
            elif versioned:
                fixes.append(lambda key=key: self._copy_back(client, key, manifest[key]["version_id"]))
            else:
                path = store.open_verified(Artifact(manifest[key]["sha256"], int(manifest[key]["size"])))
                fixes.append(lambda key=key, path=path: self._put_back(client, key, path, props[key]))
        self._run_ops("restoring tags and metadata", fixes)

    def _retag(self, client: Any, key: str, tags: dict[str, str]) -> None:
        if tags:
            client.put_object_tagging(Bucket=self.bucket, Key=key,
                                      Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})
        else:  # an empty TagSet is a delete (and moto's server rejects an empty PUT)
            client.delete_object_tagging(Bucket=self.bucket, Key=key)

    def _run_ops(self, what: str, ops: list[Any]) -> None:
        with ThreadPoolExecutor(WORKERS) as pool:
            self._call(what, lambda: list(pool.map(lambda op: op(), ops)))

    def _plan_versioned_restore(self, client: Any, want: dict[str, dict[str, Any]]) -> list[Any]:
        history: dict[str, list[dict[str, Any]]] = {}
        for item in self._call("listing versions", lambda: list(list_versions(client, self.bucket, self.prefix))):
            history.setdefault(item["key"], []).append(item)
        ops: list[Any] = []
        for key, versions in history.items():
            current = next((v for v in versions if v["latest"]), None)
            target = want.get(key)
            if target is None:
                if current is not None and not current["marker"]:
                    ops.append(lambda key=key: client.delete_object(Bucket=self.bucket, Key=key))
                continue
            if current is not None and current["version_id"] == target["version_id"]:
                continue
            cp_version = next((v for v in versions if v["version_id"] == target["version_id"]), None)
            if cp_version is None:
                raise InfrastructureError(f"checkpoint version {target['version_id']} of {key!r} no longer exists "
                                          "(deleted or expired); it cannot be restored", target=self.name)
            # Delete markers made since the checkpoint, and nothing else on top of its version: removing exactly
            # those markers makes the checkpoint version current again, without copying a byte.
            newer = [v for v in versions if v is not cp_version and v["modified"] >= cp_version["modified"]]
            if newer and all(v["marker"] for v in newer):
                for marker in newer:
                    ops.append(lambda key=key, vid=marker["version_id"]:
                               client.delete_object(Bucket=self.bucket, Key=key, VersionId=vid))
            else:
                ops.append(lambda key=key, vid=target["version_id"]: self._copy_back(client, key, vid))
        missing = set(want) - set(history)
        if missing:
            raise InfrastructureError(f"checkpoint versions of {len(missing)} key(s) no longer exist, e.g. "
                                      f"{sorted(missing)[0]!r}; they cannot be restored", target=self.name)
        return ops

    def _copy_back(self, client: Any, key: str, version_id: str) -> None:
        # Metadata and tags come with the copy (MetadataDirective / TaggingDirective COPY).
        client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key,
                                                                     "VersionId": version_id},
                           MetadataDirective="COPY", TaggingDirective="COPY")

    def _plan_copy_restore(self, client: Any, want: dict[str, dict[str, Any]], store: Store,
                           props: dict[str, dict[str, Any]]) -> list[Any]:
        current = self._call("listing", list_current, client, self.bucket, self.prefix)
        ops: list[Any] = []
        for key in set(current) - set(want):
            ops.append(lambda key=key: client.delete_object(Bucket=self.bucket, Key=key))
        for key, target in want.items():
            if key in current and current[key]["etag"] == target["etag"]:
                continue
            path = store.open_verified(Artifact(target["sha256"], int(target["size"])))
            ops.append(lambda key=key, path=path: self._put_back(client, key, path, props.get(key, {})))
        return ops

    def _put_back(self, client: Any, key: str, path: Any, props: dict[str, Any]) -> None:
        extra: dict[str, Any] = {"Metadata": props.get("metadata") or {}}
        if props.get("content_type"):
            extra["ContentType"] = props["content_type"]
        if props.get("tags"):
            extra["Tagging"] = urlencode(props["tags"])
        with open(path, "rb") as fh:
            client.put_object(Bucket=self.bucket, Key=key, Body=fh, **extra)

    def verify_restored(self, checkpoint: Checkpoint) -> list[str]:
        now = self.observe()
        if fingerprint_of(now) == checkpoint.fingerprint:
            return []
        return differences(checkpoint.observation["objects"], now["objects"]) or ["fingerprints differ"]


class S3Shadow:
    """An ephemeral S3 endpoint holding one bucket seeded from the checkpoint."""

    def __init__(self, target: S3Target, server: Any, checkpoint: Checkpoint, manifest: dict[str, dict[str, Any]],
                 store: Store, backend: str) -> None:
        self.name = target.name
        self.target = target
        self.backend = backend
        self.checkpoint = checkpoint
        self.warnings: list[str] = []
        host, port = server.get_host_and_port()
        self.url = f"http://{host}:{port}"
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
        props = self.checkpoint.observation["objects"]["object"]

        def seed(item: tuple[str, dict[str, Any]]) -> None:
            key, entry = item
            p = props[f"{t.bucket}/{key}"]
            extra: dict[str, Any] = {"Metadata": p.get("metadata") or {}}
            if p.get("content_type"):
                extra["ContentType"] = p["content_type"]
            if p.get("tags"):
                extra["Tagging"] = urlencode(p["tags"])
            self.client.put_object(Bucket=t.bucket, Key=key, Body=self._checkpoint_body(key), **extra)

        with ThreadPoolExecutor(WORKERS) as pool:
            t._call("seeding the shadow", lambda: list(pool.map(seed, self.manifest.items())))

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

    def check(self, query: str) -> Any:
        raise BadInput("`checks` run SQL and are for postgres targets", target=self.name)


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
    keys = ("bucket", "prefix", "endpoint_url", "allow")
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

    def target(self, name: str, spec: Mapping[str, Any], settings: Any) -> S3Target:
        return S3Target(name, spec, settings)
