"""The checkpoint store in an S3 prefix (``SHADOW_STORE_URL=s3://bucket/prefix``), with the local store as this
runner's verified cache of it.

S3 holds the truth, under the prefix in the local store's layout (``objects/sha256/ab/<sha>``,
``manifests/<run-id>/<target>.json``, ``applied/<run-id>/<target>.json``). Every write goes to the cache first,
exactly as the local store writes it, then to S3: an artifact once hashed (skipped when S3 has it; boto3's managed
upload sends a large one in parts, streamed from the cache copy, so a dump never needs a second local copy), a
manifest, applied or undo record as it is. Every read the cache cannot answer fetches into the cache first: an
artifact to a temp file in ``tmp/``, sha256-verified, then moved into place — a corrupt download never enters the
cache and is refused as a corrupt local artifact is.

Endpoint, credentials and region come from the environment shadow was given (``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``AWS_REGION``/``AWS_DEFAULT_REGION``); what it lacks, boto3's own chain supplies (a profile file, an instance
role). Objects get the bucket's default encryption unless ``SHADOW_STORE_SSE``
(``AES256``, ``aws:kms``, ``aws:kms:dsse``) and ``SHADOW_STORE_KMS_KEY`` ask for more. botocore's errors become an
:class:`~shadow.errors.InfrastructureError` naming the store, never a credential.

``shadow gc --checkpoints-older-than`` prunes here too (:mod:`shadow.gc`): :meth:`S3Store.manifest_dirs` fetches
every run's manifests first, :meth:`S3Store.mark_pruned` publishes a prune, :meth:`S3Store.stored_artifacts` lists
what S3 and the cache hold.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shadow.errors import BadInput, InfrastructureError, SnapshotCorrupt, excerpt
from snapshots import (PRUNED, Artifact, Store, StoredArtifact, _fsync_dir, atomic_write_bytes, make_private_dir,
                       partial_prefix, sha256_file)

MiB = 1 << 20
SSE_CHOICES = ("AES256", "aws:kms", "aws:kms:dsse")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,254}")
_MISSING = ("404", "NoSuchKey", "NotFound")  # a HEAD's 404 has no body, hence no code beyond the status


def shown(url: str, limit: int = 80) -> str:
    """``url`` as a message may quote it: on one line, without credentials (``user:secret@``) or a query (a
    presigned URL's signature), cut to ``limit`` characters."""
    flat = re.sub(r"[?#].*", "?…", re.sub(r"//[^/@]*@", "//", " ".join(url.split())))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix`` (the prefix may be empty); :class:`BadInput` otherwise."""
    usage = f"SHADOW_STORE_URL must be s3://bucket/prefix (the prefix is optional), not {shown(url)!r}"
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "s3":
        raise BadInput(f"{usage}: only an s3:// URL names a checkpoint store (an S3-compatible endpoint goes in "
                       "AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL)")
    if not _BUCKET.fullmatch(parts.netloc):
        raise BadInput(f"{usage}: {parts.netloc!r} is not a bucket name" if parts.netloc else f"{usage}: no bucket")
    if parts.query or parts.fragment:
        raise BadInput(f"{usage}: a store URL has no query or fragment")
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise BadInput(f"{usage}: the prefix has an empty, '.' or '..' segment")
    return parts.netloc, prefix


def encryption(environ: Mapping[str, str]) -> dict[str, str]:
    """The server-side encryption arguments every put and upload carries: none unless ``SHADOW_STORE_SSE`` or
    ``SHADOW_STORE_KMS_KEY`` is set (the bucket's default encryption then applies, never overridden); a KMS key
    alone means ``aws:kms``."""
    sse = environ.get("SHADOW_STORE_SSE", "").strip()
    key = environ.get("SHADOW_STORE_KMS_KEY", "").strip()
    if sse and sse not in SSE_CHOICES:
        raise BadInput(f"SHADOW_STORE_SSE must be one of {', '.join(SSE_CHOICES)}, not {excerpt(sse, 40)!r}")
    if key and sse == "AES256":
        raise BadInput("SHADOW_STORE_KMS_KEY names a KMS key, but SHADOW_STORE_SSE=AES256 does not use one "
                       "(set SHADOW_STORE_SSE=aws:kms, or unset the key)")
    out = {"ServerSideEncryption": sse or "aws:kms"} if sse or key else {}
    if key:
        out["SSEKMSKeyId"] = key
    return out


def _named(rel: str) -> str:
    """How a message names ``rel``: an artifact by the start of its sha256, anything else by its path."""
    return f"artifact {rel.rpartition('/')[2][:12]}…" if rel.startswith("objects/") else rel


def _session_args(environ: Mapping[str, str]) -> dict[str, str]:
    """boto3 session arguments from ``environ`` — not from this process's environment behind its back."""
    found = {
        "aws_access_key_id": environ.get("AWS_ACCESS_KEY_ID"),
        "aws_secret_access_key": environ.get("AWS_SECRET_ACCESS_KEY"),
        "aws_session_token": environ.get("AWS_SESSION_TOKEN"),
        "profile_name": environ.get("AWS_PROFILE"),
        "region_name": environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION"),
    }
    return {name: value for name, value in found.items() if value}


class S3Store(Store):
    """The checkpoint store at ``url`` (``s3://bucket/prefix``), cached and verified in ``root``."""

    # boto3's managed transfers: an artifact at least this large goes in parts of this size (S3's minimum part is
    # 5 MiB). Tests lower them to see a multipart upload without writing a large file.
    multipart_threshold = 8 * MiB
    multipart_chunksize = 8 * MiB

    def __init__(self, root: Path, url: str, environ: Mapping[str, str]) -> None:
        super().__init__(root)
        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.endpoint_url = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None
        self.extra_args = encryption(environ)
        self._session_args = _session_args(environ)
        self._client: Any = None
        self._client_lock = threading.Lock()

    # -- S3 plumbing -------------------------------------------------------------------------------------------
    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {shown(self.endpoint_url)}" if self.endpoint_url else "")

    def client(self) -> Any:
        """The boto3 client, made on first use (boto3 is slow to import; a store opened for nothing needs none)."""
        with self._client_lock:
            if self._client is None:
                from adapters.s3.client import make_client

                try:
                    self._client = self._call("connecting", make_client, self.endpoint_url, **self._session_args)
                except ValueError as exc:  # botocore refuses a malformed endpoint URL
                    raise BadInput(f"the checkpoint store's endpoint {shown(str(self.endpoint_url))!r} "
                                   f"(AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) is not a URL: {exc}") from exc
            return self._client

    def _transfer(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.multipart_threshold,
                              multipart_chunksize=self.multipart_chunksize)

    def _key(self, rel: str) -> str:
        """The S3 key of ``rel``, a path in the local layout."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``; botocore's and boto3's errors become one line naming the store."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise self._failed(what, f"{error.get('Code', '?')}: {error.get('Message') or exc}") from exc
        except EndpointConnectionError as exc:  # its own message repeats the whole URL of the object
            raise self._failed(what, "could not connect to the endpoint") from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise self._failed(what, str(exc)) from exc

    def _failed(self, what: str, said: str) -> InfrastructureError:
        return InfrastructureError(f"checkpoint store {self.describe()}: {what} failed: {' '.join(said.split())}")

    def _missing(self, exc: BaseException) -> bool:
        from botocore.exceptions import ClientError

        cause = exc.__cause__
        return isinstance(cause, ClientError) and str(cause.response.get("Error", {}).get("Code")) in _MISSING

    def _head(self, rel: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._call(f"reading {_named(rel)}", self.client().head_object,
                                               Bucket=self.bucket, Key=self._key(rel))
            return found
        except InfrastructureError as exc:
            if self._missing(exc):
                return None
            raise

    def _put(self, rel: str) -> None:
        """Send the cache's ``rel`` (a manifest or record) to S3."""
        body = (self.root / rel).read_bytes()
        self._call(f"writing {rel}", self.client().put_object, Bucket=self.bucket, Key=self._key(rel), Body=body,
                   **self.extra_args)

    def _cached(self, rel: str) -> bool:
        """Whether the cache has ``rel`` (a manifest or record), fetching it from S3 when only S3 has it."""
        path = self.root / rel
        if path.exists():
            return True
        try:
            got = self._call(f"reading {rel}", self.client().get_object, Bucket=self.bucket, Key=self._key(rel))
            body = self._call(f"reading {rel}", got["Body"].read)
        except InfrastructureError as exc:
            if self._missing(exc):
                return False
            raise
        self._ensure()
        try:
            make_private_dir(path.parent)
            atomic_write_bytes(path, body)
        except OSError as exc:
            raise InfrastructureError(f"could not cache {rel} from {self.describe()} in {self.root}: "
                                      f"{exc.strerror}") from exc
        return True

    def _list(self, rel: str) -> Iterator[tuple[str, int, float]]:
        """(key below the prefix, size, LastModified as a timestamp) of every object under ``rel``."""
        start = self._key(rel)
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
        listed = self._call(f"listing {rel}", lambda: [o for page in pages for o in page.get("Contents", ())])
        for found in listed:
            yield found["Key"][len(self._key("")):], int(found["Size"]), found["LastModified"].timestamp()

    def _object_rel(self, sha256: str) -> str:
        return self.object_path(sha256).relative_to(self.root).as_posix()

    def _download(self, sha256: str) -> bool:
        """Fetch artifact ``sha256`` into the cache through ``tmp/``, verified; False when S3 does not have it."""
        self._ensure()
        try:
            fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix=partial_prefix())  # gc sweeps a killed one
        except OSError as exc:
            raise InfrastructureError(f"snapshot store {self.root} is not writable: {exc.strerror}") from exc
        os.close(fd)
        tmp = Path(name)
        rel = self._object_rel(sha256)
        try:
            try:
                self._call(f"downloading artifact {sha256[:12]}…", self.client().download_file, self.bucket,
                           self._key(rel), str(tmp), Config=self._transfer())
            except InfrastructureError as exc:
                if self._missing(exc):
                    return False
                raise
            os.chmod(tmp, 0o600)  # boto3 renames its own temp file over ours, with the umask's mode
            actual = sha256_file(tmp)
            if actual != sha256:
                raise SnapshotCorrupt(f"checkpoint artifact {sha256[:12]}… in {self.describe()} is corrupt: sha256 "
                                      f"{actual[:12]}… does not match the recorded {sha256[:12]}…; nothing was "
                                      "restored")
            dest = self.object_path(sha256)
            make_private_dir(dest.parent)
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
            return True
        except OSError as exc:
            raise InfrastructureError(f"could not cache artifact {sha256[:12]}… from {self.describe()} in "
                                      f"{self.root}: {exc.strerror}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    # -- the Store interface -----------------------------------------------------------------------------------
    def add(self, path: Path) -> Artifact:
        """Into the cache under its sha256 (as the local store), then to S3 unless S3 has it already."""
        artifact = super().add(path)
        rel = self._object_rel(artifact.sha256)
        found = self._head(rel)
        if found is None or int(found.get("ContentLength", -1)) != artifact.size:
            self._call(f"uploading artifact {artifact.sha256[:12]}…", self.client().upload_file,
                       str(self.root / rel), self.bucket, self._key(rel), ExtraArgs=self.extra_args or None,
                       Config=self._transfer())
        return artifact

    def open_verified(self, artifact: Artifact) -> Path:
        """The artifact's cache path after checking its sha256, fetched from S3 first when the cache has no good
        copy (a damaged cache copy is replaced by S3's, which is the truth)."""
        path = self.object_path(artifact.sha256)
        if path.exists():
            try:
                return super().open_verified(artifact)
            except SnapshotCorrupt:
                pass
        if self._download(artifact.sha256):
            return path  # verified on its way in
        raise SnapshotCorrupt(f"checkpoint artifact {artifact.sha256[:12]} is missing from {self.describe()} (and "
                              f"this runner's cache {self.root} has no good copy)")

    def write_manifest(self, run_id: str, target: str, manifest: dict[str, Any]) -> None:
        super().write_manifest(run_id, target, manifest)
        self._put(f"manifests/{run_id}/{target}.json")

    def read_manifest(self, run_id: str, target: str) -> dict[str, Any]:
        self._cached(f"manifests/{run_id}/{target}.json")
        return super().read_manifest(run_id, target)

    def write_applied(self, run_id: str, target: str, record: dict[str, Any]) -> None:
        super().write_applied(run_id, target, record)
        self._put(f"applied/{run_id}/{target}.json")

    def read_applied(self, run_id: str, target: str) -> dict[str, Any] | None:
        self._cached(f"applied/{run_id}/{target}.json")
        return super().read_applied(run_id, target)

    def write_undone(self, run_id: str, target: str, xid: int) -> None:
        super().write_undone(run_id, target, xid)
        self._put(f"applied/{run_id}/{target}.undone.json")

    def read_undone(self, run_id: str, target: str) -> int | None:
        self._cached(f"applied/{run_id}/{target}.undone.json")
        return super().read_undone(run_id, target)

    def write_undo(self, run_id: str, target: str, record: dict[str, Any]) -> None:
        super().write_undo(run_id, target, record)
        self._put(f"manifests/{run_id}/{target}.undo.json")

    def read_undo(self, run_id: str, target: str) -> dict[str, Any] | None:
        self._cached(f"manifests/{run_id}/{target}.undo.json")
        return super().read_undo(run_id, target)

    def refuse_if_pruned(self, run_id: str) -> None:
        """Also when another runner pruned it: its marker in S3 is fetched into the cache."""
        super().refuse_if_pruned(run_id)
        if self._cached(f"manifests/{run_id}/{PRUNED}"):
            super().refuse_if_pruned(run_id)

    # -- pruning (shadow.gc) -----------------------------------------------------------------------------------
    def manifest_dirs(self) -> list[Path]:
        """Every run's folder in S3 or in the cache; S3's manifests are fetched into the cache first (gc reads
        them there). A run another runner pruned is pruned in the cache too: only its marker is kept."""
        runs: dict[str, list[str]] = {}
        for rel, _size, _modified in self._list("manifests/"):
            run, _sep, name = rel.removeprefix("manifests/").partition("/")
            if run not in ("", ".", "..") and name.endswith(".json") and "/" not in name:
                runs.setdefault(run, []).append(name)
        for run, names in sorted(runs.items()):
            if PRUNED in names:
                self._cached(f"manifests/{run}/{PRUNED}")
                for path in (self.root / "manifests" / run).glob("*.json"):
                    if path.name != PRUNED:
                        path.unlink(missing_ok=True)
                continue
            for name in names:
                self._cached(f"manifests/{run}/{name}")
        return super().manifest_dirs()

    def mark_pruned(self, run_id: str) -> None:
        """Publish the cache's prune of ``run_id`` (its marker written, its manifests gone): the marker first, so
        every runner's rollback names the prune from then on, then the run's manifests and applied records."""
        self._put(f"manifests/{run_id}/{PRUNED}")
        for rel in ("manifests", "applied"):
            for key, _size, _modified in self._list(f"{rel}/{run_id}/"):
                if key != f"manifests/{run_id}/{PRUNED}":
                    self._call(f"deleting {key}", self.client().delete_object, Bucket=self.bucket,
                               Key=self._key(key))

    def stored_artifacts(self) -> list[StoredArtifact]:
        """Every artifact in S3 or in the cache. ``modified`` is the later of S3's LastModified, rounded up to the
        next second (listings give whole seconds), and the cache copy's mtime (a reuse here touches it);
        ``remove`` deletes both copies."""
        found: dict[str, StoredArtifact] = {}
        for rel, size, modified in self._list("objects/sha256/"):
            sha = rel.rpartition("/")[2]
            if not _SHA256.fullmatch(sha):
                continue  # not an artifact (a "folder" marker, someone else's file): not ours to delete
            found[sha] = StoredArtifact(sha, size, modified + 1, partial(self.remove_artifact, sha))
        for local in super().stored_artifacts():
            s3 = found.get(local.sha256)
            found[local.sha256] = StoredArtifact(local.sha256, s3.size if s3 else local.size,
                                                 max(local.modified, s3.modified if s3 else 0.0),
                                                 partial(self.remove_artifact, local.sha256))
        return [found[sha] for sha in sorted(found)]

    def remove_artifact(self, sha256: str) -> None:
        """Delete artifact ``sha256`` from S3, then from the cache."""
        rel = self._object_rel(sha256)
        self._call(f"deleting artifact {sha256[:12]}…", self.client().delete_object, Bucket=self.bucket,
                   Key=self._key(rel))
        self.object_path(sha256).unlink(missing_ok=True)

    def cached(self, sha256: str) -> Path:
        """Where artifact ``sha256`` is in the cache, fetched (verified) when only S3 has it; the path may not
        exist when neither has it."""
        path = self.object_path(sha256)
        if not path.exists():
            self._download(sha256)
        return path
