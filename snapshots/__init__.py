"""The checkpoint store: content-addressed artifacts plus one manifest per (run, target).

Layout under the store root (``<state-dir>/snapshots``)::

    objects/sha256/ab/abcdef…      artifacts (pg_dump archives, object copies …), named by their sha256
    manifests/<run-id>/<target>.json
    tmp/                           partial writes; never read (an artifact's is named after the process writing it)

Every write goes to ``tmp/`` first, is fsynced and moved into place with ``os.replace`` — a crash leaves either
the old state or the new one, never half a file. ``open_verified`` re-hashes an artifact before anything is
restored from it and refuses a mismatch.

Checkpoints hold production data, so the store is private whatever the umask: directories are 0700 and files
0600, set with ``chmod`` after creation (a umask can only take permissions away from ``mkdir``/``open`` modes, and
a directory created by someone else's ``mkdir`` keeps its mode until shadow tightens it).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from shadow.errors import InfrastructureError, SnapshotCorrupt

CHUNK = 1 << 20
PRUNED = "pruned.json"  # left in manifests/<run-id>/ when `shadow gc --checkpoints-older-than` removed the rest
README = """This directory is shadow's checkpoint store. Artifacts are named by their sha256 and verified before
any restore; do not edit them. Remove old checkpoints with `shadow gc --checkpoints-older-than DAYS`, not by
hand.
"""


@dataclass(frozen=True)
class Artifact:
    sha256: str
    size: int


class PartialWrite(NamedTuple):
    """An artifact being written in ``tmp/`` (or left there by a killed process), as ``shadow gc`` sees it: the
    process writing it (``pid``, ``host``; None in an older shadow's name, which does not say) and when it last
    changed."""

    path: Path
    pid: str | None
    host: str | None
    modified: float


class StoredArtifact(NamedTuple):
    """One stored artifact as ``shadow gc`` sees it: ``modified`` is when it was last written or reused."""

    sha256: str
    size: int
    modified: float
    remove: Callable[[], object]


@dataclass
class Slot:
    path: Path
    artifact: Artifact | None = None


# A partial artifact is ``artifact-<pid>-<host>-<random>``: mkstemp's random part has no "-", a host name may.
_PARTIAL = re.compile(r"artifact-(?:(?P<pid>\d+)-(?P<host>.+)-)?[^-]+")


def partial_prefix() -> str:
    """Whose a partial artifact is, as its name says it; a host name's odd characters (never in a DNS name) are
    replaced, and gc then takes the file for another host's, which it never removes."""
    return f"artifact-{os.getpid()}-{re.sub(r'[^A-Za-z0-9.-]', '_', socket.gethostname())}-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents as 0700 directories, and make ``path`` itself 0700."""
    missing: list[Path] = []
    probe = Path(path)
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            if not directory.is_dir():
                raise
        os.chmod(directory, 0o700)
    if not missing:
        os.chmod(path, 0o700)


def make_private_file(path: Path) -> None:
    """Create ``path`` (empty) if it does not exist, and make it 0600."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _out_of_space(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is ENOSPC — raised here, or reported by a tool such as pg_dump."""
    while exc is not None:
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or os.strerror(errno.ENOSPC) in str(exc):
            return True
        exc = exc.__cause__
    return False


class Store:
    """A local checkpoint store rooted at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _ensure(self) -> None:
        try:
            for sub in ("objects/sha256", "manifests", "tmp"):
                make_private_dir(self.root / sub)
            for directory in (self.root, self.root / "objects"):
                os.chmod(directory, 0o700)
            readme = self.root / "README"
            if not readme.exists():
                atomic_write_bytes(readme, README.encode())
        except OSError as exc:
            raise InfrastructureError(f"snapshot store {self.root} is not writable: {exc.strerror}") from exc

    def object_path(self, sha256: str) -> Path:
        return self.root / "objects" / "sha256" / sha256[:2] / sha256

    def object_paths(self) -> list[Path]:
        """Every stored artifact, by path."""
        return sorted((self.root / "objects" / "sha256").glob("*/*"))

    def stored_artifacts(self) -> list[StoredArtifact]:
        """Every stored artifact, with when it was last written or reused (``shadow gc``)."""
        out = []
        for path in self.object_paths():
            try:
                found = path.stat()
            except FileNotFoundError:
                continue  # removed just now
            out.append(StoredArtifact(path.name, found.st_size, found.st_mtime, path.unlink))
        return out

    def partial_writes(self) -> list[PartialWrite]:
        """Every artifact being written, or half written by a process that was killed (``shadow gc``)."""
        out = []
        for path in sorted((self.root / "tmp").glob("artifact-*")):
            found = _PARTIAL.fullmatch(path.name)
            try:
                modified = path.lstat().st_mtime
            except FileNotFoundError:
                continue  # stored or removed just now
            if found:
                out.append(PartialWrite(path, found["pid"], found["host"], modified))
        return out

    def cached(self, sha256: str) -> Path:
        """Where artifact ``sha256`` is on this machine (the path may not exist)."""
        return self.object_path(sha256)

    def mark_pruned(self, run_id: str) -> None:
        """Publish a prune of ``run_id`` already made in this directory (a remote store's; nothing here)."""

    def manifest_dirs(self) -> list[Path]:
        """One folder per run that wrote checkpoint manifests (or whose manifests were pruned)."""
        return sorted(p for p in (self.root / "manifests").glob("*") if p.is_dir())

    @contextmanager
    def new_artifact(self) -> Iterator[Slot]:
        """Yield a slot whose ``path`` the caller writes; on success it is hashed and moved into the store
        and ``slot.artifact`` is set. On failure the partial file is removed."""
        self._ensure()
        try:
            fd, tmp = tempfile.mkstemp(dir=self.root / "tmp", prefix=partial_prefix())
        except OSError as exc:
            raise InfrastructureError(f"snapshot store {self.root} is not writable: {exc.strerror}") from exc
        os.close(fd)
        slot = Slot(Path(tmp))
        try:
            yield slot
            slot.artifact = self.add(slot.path)
        except Exception as exc:
            if _out_of_space(exc):
                raise InfrastructureError(f"the snapshot store {self.root} is out of disk space: {exc}; no partial "
                                          "checkpoint was kept (free space there, or move the state dir with "
                                          "--state-dir)") from exc
            raise
        finally:
            if slot.path.exists():
                slot.path.unlink()

    def add(self, path: Path) -> Artifact:
        """Move ``path`` (a file inside ``tmp/``) into the store under its sha256."""
        try:
            os.chmod(path, 0o600)
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
            sha = sha256_file(path)
            size = path.stat().st_size
            dest = self.object_path(sha)
            make_private_dir(dest.parent)
            if dest.exists():
                try:
                    # Reused now: a checkpoint prune that began before this moment leaves it alone.
                    os.utime(dest)
                    path.unlink()
                    return Artifact(sha, size)
                except FileNotFoundError:
                    pass  # pruned just now: store this copy instead
            os.replace(path, dest)
            _fsync_dir(dest.parent)
            return Artifact(sha, size)
        except OSError as exc:
            raise InfrastructureError(f"could not store a checkpoint artifact in {self.root}: {exc.strerror}") from exc

    def open_verified(self, artifact: Artifact) -> Path:
        """The artifact's path, after checking its sha256 — refuse to restore from a corrupt file."""
        path = self.object_path(artifact.sha256)
        if not path.exists():
            raise SnapshotCorrupt(f"checkpoint artifact {artifact.sha256[:12]} is missing from {self.root}")
        actual = sha256_file(path)
        if actual != artifact.sha256:
            raise SnapshotCorrupt(
                f"checkpoint artifact {path} is corrupt: sha256 {actual[:12]}… does not match the recorded "
                f"{artifact.sha256[:12]}…; nothing was restored"
            )
        return path

    def put_json(self, data: Any) -> dict[str, Any]:
        """Store ``data`` as a JSON artifact; its reference (``sha256``, ``size``) for a checkpoint's artifacts."""
        with self.new_artifact() as slot:
            slot.path.write_text(json.dumps(data, sort_keys=True))
        assert slot.artifact is not None
        return {"sha256": slot.artifact.sha256, "size": slot.artifact.size}

    def get_json(self, ref: dict[str, Any]) -> Any:
        """A JSON artifact stored with :meth:`put_json`, sha256-verified."""
        path = self.open_verified(Artifact(ref["sha256"], int(ref["size"])))
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise SnapshotCorrupt(f"checkpoint artifact {path} is unreadable: {exc}") from exc

    def write_manifest(self, run_id: str, target: str, manifest: dict[str, Any]) -> None:
        self._ensure()
        body = json.dumps(manifest, indent=1, sort_keys=True, default=str).encode()
        try:
            make_private_dir(self.root / "manifests" / run_id)
            atomic_write_bytes(self.root / "manifests" / run_id / f"{target}.json", body)
        except OSError as exc:
            raise InfrastructureError(f"could not write a checkpoint manifest: {exc.strerror}") from exc

    def write_applied(self, run_id: str, target: str, record: dict[str, Any]) -> None:
        """What production observed after run ``run_id`` applied and verified (``shadow rollback`` and
        ``recover`` compare production with it). Kept beside, never inside, the checkpoint's manifest: a
        checkpoint is written once and never edited."""
        self._write_applied(run_id, f"{target}.json", json.dumps(record, indent=1, sort_keys=True, default=str),
                            "the applied state")

    def _write_applied(self, run_id: str, name: str, body: str, what: str) -> None:
        """``applied/<run_id>/<name>``, written atomically (:meth:`write_applied`, :meth:`write_undone`)."""
        self._ensure()
        try:
            make_private_dir(self.root / "applied")
            make_private_dir(self.root / "applied" / run_id)
            atomic_write_bytes(self.root / "applied" / run_id / name, body.encode())
        except OSError as exc:
            raise InfrastructureError(f"could not record {what}: {exc.strerror}") from exc

    def read_applied(self, run_id: str, target: str) -> dict[str, Any] | None:
        """:meth:`write_applied`'s record; None when the run never got that far. (Runs recorded before it was
        kept apart carry it in the manifest as ``after_apply``.)"""
        path = self.root / "applied" / run_id / f"{target}.json"
        try:
            record: dict[str, Any] = json.loads(path.read_text())
            return record
        except FileNotFoundError:
            legacy = self.read_manifest(run_id, target).get("after_apply")
            return dict(legacy) if legacy else None
        except (OSError, ValueError) as exc:
            raise SnapshotCorrupt(f"the applied state {path} is unreadable: {exc}") from exc

    def write_undone(self, run_id: str, target: str, xid: int) -> None:
        """The transaction undoing run ``run_id``'s own change to ``target`` — written before it commits, so a
        killed rollback's ``recover`` asks the server whether it did (an undo that matches rows by value must
        never run twice)."""
        self._write_applied(run_id, f"{target}.undone.json", json.dumps({"xid": int(xid)}),
                            f"the undo of run {run_id}")

    def read_undone(self, run_id: str, target: str) -> int | None:
        """:meth:`write_undone`'s transaction id; None when no undo of that run began."""
        path = self.root / "applied" / run_id / f"{target}.undone.json"
        try:
            return int(json.loads(path.read_text())["xid"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SnapshotCorrupt(f"the undo's transaction record {path} is unreadable: {exc}") from exc

    def write_undo(self, run_id: str, target: str, record: dict[str, Any]) -> None:
        """What undoing run ``run_id``'s own change to ``target`` needs (an adapter's capture), as an artifact; its
        reference sits beside the checkpoint's manifest (``<target>.undo.json``), so that pruning the run drops it
        and the store keeps the artifact as long as the reference is there."""
        with self.new_artifact() as slot:
            slot.path.write_bytes(json.dumps(record, sort_keys=True, default=str).encode())
        assert slot.artifact is not None
        body = json.dumps({"undo": {"sha256": slot.artifact.sha256, "size": slot.artifact.size}}).encode()
        try:
            make_private_dir(self.root / "manifests" / run_id)
            atomic_write_bytes(self.root / "manifests" / run_id / f"{target}.undo.json", body)
        except OSError as exc:
            raise InfrastructureError(f"could not record the undo of run {run_id}: {exc.strerror}") from exc

    def read_undo(self, run_id: str, target: str) -> dict[str, Any] | None:
        """:meth:`write_undo`'s record, sha256-verified; None when the run kept none."""
        path = self.root / "manifests" / run_id / f"{target}.undo.json"
        try:
            ref = json.loads(path.read_text())["undo"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SnapshotCorrupt(f"the undo record {path} is unreadable: {exc}") from exc
        data = self.open_verified(Artifact(str(ref["sha256"]), int(ref["size"]))).read_bytes()
        record: dict[str, Any] = json.loads(data)
        return record

    def refuse_if_pruned(self, run_id: str) -> None:
        """Raise :class:`SnapshotCorrupt` when ``shadow gc --checkpoints-older-than`` pruned the run's checkpoint."""
        if (self.root / "manifests" / run_id / PRUNED).exists():
            raise SnapshotCorrupt(f"the checkpoint of run {run_id} was pruned (`shadow gc "
                                  "--checkpoints-older-than`): it can no longer be restored")

    def read_manifest(self, run_id: str, target: str) -> dict[str, Any]:
        path = self.root / "manifests" / run_id / f"{target}.json"
        try:
            result: dict[str, Any] = json.loads(path.read_text())
            return result
        except FileNotFoundError as exc:
            self.refuse_if_pruned(run_id)
            raise SnapshotCorrupt(f"no checkpoint manifest for run {run_id} target {target!r} at {path}") from exc
        except (OSError, ValueError) as exc:
            raise SnapshotCorrupt(f"checkpoint manifest {path} is unreadable: {exc}") from exc


def open_store(settings: Any) -> Store:
    """The checkpoint store ``settings`` name: ``<state dir>/snapshots``, or — with ``SHADOW_STORE_URL`` set — the
    S3 prefix it names, with ``<state dir>/snapshots`` as this runner's verified cache of it."""
    url = getattr(settings, "store_url", None)
    if not url:
        return Store(settings.store_dir)
    from snapshots.s3 import S3Store

    return S3Store(settings.store_dir, url, settings.environ)
