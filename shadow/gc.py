"""``shadow gc``: remove what killed runs left behind, and nothing a live run still uses.

A run cleans up after itself on every path it sees (errors, Ctrl-C, SIGTERM); SIGKILL, an OOM kill or a power
cut leave its shadows behind. Every one of them is labelled with the run id and the owning process
(``adapters.docker.labels``), so gc removes exactly those whose owner is gone:

* Docker containers and networks labelled ``shadow.run-id`` whose ``shadow.pid`` no longer runs on this host
  (another host's are never ours to judge);
* local throwaway clusters (``shadow-pg-*`` in the temp dir) whose ``shadow-labels.json`` names a dead owner:
  their postgres is stopped, then the dir removed. A dir without labels is left alone — it is being created,
  or an older shadow made it and its owner cannot be known;
* ``shadow-restore-*``, ``shadow-home-*`` and ``shadow-git-*`` (a git shadow's clone) temp dirs in which nothing
  changed for an hour (they carry no owner, so age is the only sign that their run is over).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from adapters import docker as dockerlib
from adapters.postgres.cluster import TEMP_PREFIX, read_labels, stop_leftover
from shadow.errors import InfrastructureError
from shadow.guard import RunRecord, is_alive
from snapshots import PRUNED, Store, atomic_write_bytes

STALE_PREFIXES = ("shadow-restore-", "shadow-home-", "shadow-git-")
STALE_AFTER = 3600.0  # seconds without a change before an unlabelled temp dir counts as abandoned


@dataclass(frozen=True)
class Leftover:
    """One thing a dead run left behind: ``kind`` is container, network, cluster or tempdir."""

    kind: str
    id: str  # container id, network name or path
    run_id: str | None
    detail: str = ""


@dataclass
class GcResult:
    """What gc removed (or, with ``dry_run``, would remove), what it could not remove and why."""

    dry_run: bool
    runs: set[str] | None = None  # only these runs' leftovers; None: every dead run's
    removed: list[Leftover] = field(default_factory=list)
    failed: list[tuple[Leftover, str]] = field(default_factory=list)
    docker_skipped: str | None = None  # why Docker was not looked at; None when it was

    def to_list(self) -> list[dict[str, Any]]:
        status = "would remove" if self.dry_run else "removed"
        rows = [{**_fields(item), "status": status, "error": None} for item in self.removed]
        return rows + [{**_fields(item), "status": "failed", "error": why} for item, why in self.failed]


def _fields(item: Leftover) -> dict[str, Any]:
    return {"kind": item.kind, "id": item.id, "run_id": item.run_id, "detail": item.detail}


def gc(dry_run: bool = False, runs: set[str] | None = None) -> GcResult:
    """Find and remove the leftovers of runs whose owning process is gone; never touch a live run's.

    ``runs``: only the leftovers labelled with one of these run ids (``shadow recover`` clears the runs it
    settled); unlabelled temp dirs are then left to a plain gc.
    """
    result = GcResult(dry_run, runs=runs)
    _collect_docker(result)
    _collect_clusters(result, Path(tempfile.gettempdir()))
    if runs is None:
        _collect_stale_dirs(result, Path(tempfile.gettempdir()), time.time())
    return result


def prune_checkpoints(settings: Any, older_than_days: float, dry_run: bool = False,
                      now: float | None = None) -> GcResult:
    """Remove the checkpoints of finished runs older than ``older_than_days``, then every store object no
    remaining checkpoint refers to. A pruned run can no longer be rolled back; the run's record and its journal
    rows stay, and a rollback names the prune.

    Never while a run is alive (its artifacts exist before its manifest does), never a run that did not finish
    (``shadow recover`` still needs its checkpoint), and never an object written or reused since this prune began
    (a run that starts meanwhile touches every object it reuses).
    """
    result = GcResult(dry_run)
    started = time.time() if now is None else now
    runs_dir, store = settings.runs_dir, Store(settings.store_dir)
    live = [p.parent.name for p in runs_dir.glob("*/alive") if is_alive(p.parent)]
    if live:
        raise InfrastructureError(f"run {live[0]} is running: prune checkpoints once no run is (nothing removed)")
    cutoff = started - older_than_days * 86400
    folders = store.manifest_dirs()
    doomed = [folder for folder in folders if not (folder / PRUNED).exists() and _finished(runs_dir, folder.name)
              and _run_started(folder) < cutoff]
    for folder in doomed:
        item = Leftover("checkpoint", folder.name, folder.name, f"run older than {older_than_days:g} day(s)")
        _remove(result, item, partial(_prune_run, folder, started), (FileNotFoundError,),
                (OSError, subprocess.SubprocessError))
    # What every manifest still on disk refers to (one whose prune failed included); a dry run counts the doomed
    # runs as gone.
    referenced: set[str] = set()
    for folder in folders:
        if dry_run and folder in doomed:
            continue
        for path in folder.glob("*.json"):
            if path.name != PRUNED:
                _references(_read_json(path), store, referenced)
    for path in store.object_paths():
        if path.name in referenced or path.stat().st_mtime >= started:
            continue
        item = Leftover("artifact", path.name[:16], None, f"{path.stat().st_size:,} bytes, no checkpoint uses it")
        _remove(result, item, partial(path.unlink), (FileNotFoundError,), (OSError,))
    return result


def _finished(runs_dir: Path, run_id: str) -> bool:
    """A run that finished (or left no record); an unreadable record counts as unfinished."""
    record = runs_dir / run_id / "run.json"
    if not record.exists():
        return True
    try:
        return RunRecord.load(record).phase == "finished"
    except (OSError, ValueError, TypeError):
        return False


def _read_json(path: Path) -> Any:
    """A kept checkpoint's manifest; unreadable, nothing can be known unused, so nothing is swept."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InfrastructureError(f"cannot read {path} ({exc}): no stored artifact was removed, since one it "
                                  "refers to might be") from exc


def _run_started(folder: Path) -> float:
    """When a run started: its id begins with the UTC time (YYYYMMDD-HHMMSS); else the folder's mtime."""
    try:
        return datetime.strptime(folder.name[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return folder.stat().st_mtime


def _prune_run(folder: Path, when: float) -> str:
    """Remove a run's checkpoint manifests (leaving a marker), and the refs its git checkpoints keep in their
    repositories; returns what went besides the manifests."""
    dropped = []
    for path in folder.glob("*.json"):
        try:
            meta = json.loads(path.read_text()).get("meta") or {}
        except (OSError, ValueError, AttributeError):
            meta = {}
        if meta.get("keep") and meta.get("repo"):
            dropped.append(_drop_refs(Path(meta["repo"]), str(meta["keep"])))
        path.unlink()
    atomic_write_bytes(folder / PRUNED, json.dumps({"pruned_at": when}).encode())
    return "; ".join(dropped)


def _drop_refs(repo: Path, keep: str) -> str:
    """Delete the refs under ``keep`` (``refs/shadow/<run>/<target>``) in ``repo``: they hold a git checkpoint's
    commits, which git's own gc may then collect. A repository that is gone has nothing to drop."""
    def git(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(repo), *args], input=stdin, capture_output=True, text=True,
                              timeout=120)

    if not repo.is_dir():
        return f"{repo} is gone"
    listed = git("for-each-ref", "--format=%(refname)", keep + "/")
    refs = listed.stdout.split() if listed.returncode == 0 else []
    if refs:
        done = git("update-ref", "--stdin", stdin="".join(f"delete {ref}\n" for ref in refs))
        if done.returncode != 0:
            raise OSError(f"git update-ref in {repo}: {done.stderr.strip()}")
    return f"{len(refs)} ref(s) under {keep} in {repo}"


def _references(data: Any, store: Store, out: set[str]) -> None:
    """Every sha256 a checkpoint manifest refers to, and those its manifest artifacts (S3, git) refer to."""
    if isinstance(data, dict):
        sha = data.get("sha256")
        if isinstance(sha, str) and sha not in out:
            out.add(sha)
            if str(data.get("format", "")).endswith("manifest"):
                path = store.object_path(sha)
                if path.exists():
                    _references(_read_json(path), store, out)
        for value in data.values():
            _references(value, store, out)
    elif isinstance(data, list):
        for value in data:
            _references(value, store, out)


def _collect_docker(result: GcResult) -> None:
    try:
        containers = dockerlib.leftover_containers()
        client = dockerlib.client()
    except InfrastructureError as exc:
        result.docker_skipped = str(exc)
        return
    from docker.errors import APIError, NotFound

    try:
        # Containers first: a network cannot be removed while a container is attached to it.
        for container in containers:
            item = Leftover("container", container.short_id, container.labels.get(dockerlib.LABEL_RUN),
                            f"owner pid {container.labels.get(dockerlib.LABEL_PID)} gone")
            _remove(result, item, partial(container.remove, force=True, v=True), (NotFound,), (APIError,))
        for network in client.networks.list(filters={"label": dockerlib.LABEL_RUN}):
            found = network.attrs.get("Labels") or {}
            if dockerlib.owner_alive(found):
                continue
            item = Leftover("network", network.name, found.get(dockerlib.LABEL_RUN),
                            f"owner pid {found.get(dockerlib.LABEL_PID)} gone")
            _remove(result, item, network.remove, (NotFound,), (APIError,))
    finally:
        client.close()


def _collect_clusters(result: GcResult, tmp: Path) -> None:
    for root in sorted(tmp.glob(TEMP_PREFIX + "*")):
        found = read_labels(root)
        if not root.is_dir() or found is None or dockerlib.owner_alive(found):
            continue
        item = Leftover("cluster", str(root), found.get(dockerlib.LABEL_RUN),
                        f"owner pid {found.get(dockerlib.LABEL_PID)} gone")
        _remove(result, item, partial(_remove_cluster, root), (FileNotFoundError,), (OSError, InfrastructureError))


def _remove_cluster(root: Path) -> str:
    stopped = stop_leftover(root)
    shutil.rmtree(root)
    return stopped


def _collect_stale_dirs(result: GcResult, tmp: Path, now: float) -> None:
    for prefix in STALE_PREFIXES:
        for path in sorted(tmp.glob(prefix + "*")):
            if not path.is_dir() or path.is_symlink():
                continue
            try:
                idle = now - _newest_mtime(path)
            except FileNotFoundError:
                continue  # its run removed it just now
            if idle < STALE_AFTER:
                continue
            item = Leftover("tempdir", str(path), None, f"unchanged for {idle / 3600:.1f} h")
            _remove(result, item, partial(shutil.rmtree, path), (FileNotFoundError,), (OSError,))


def _remove(result: GcResult, item: Leftover, remove: Callable[[], object], gone: tuple[type[BaseException], ...],
            failure: tuple[type[BaseException], ...]) -> None:
    """Remove one leftover (unless dry run) and record it; ``gone`` means someone else removed it first."""
    if result.runs is not None and item.run_id not in result.runs:
        return
    if result.dry_run:
        result.removed.append(item)
        return
    try:
        said = remove()
    except gone:
        return
    except failure as exc:
        result.failed.append((item, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__))
        return
    if isinstance(said, str) and said:
        item = Leftover(item.kind, item.id, item.run_id, f"{item.detail}; {said}")
    result.removed.append(item)


def _newest_mtime(root: Path) -> float:
    """When anything in the tree last changed (a dir's own mtime misses writes to files already in it)."""
    newest = root.lstat().st_mtime
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
            except OSError:
                continue
    return newest
