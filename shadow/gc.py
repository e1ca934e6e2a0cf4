"""``shadow gc``: remove what killed runs left behind, and nothing a live run still uses.

A run cleans up after itself on every path it sees (errors, Ctrl-C, SIGTERM); SIGKILL, an OOM kill or a power
cut leave its shadows behind. Every one of them is labelled with the run id and the owning process
(``adapters.docker.labels``), so gc removes exactly those whose owner is gone:

* Docker containers and networks labelled ``shadow.run-id`` whose ``shadow.pid`` no longer runs on this host
  (another host's are never ours to judge);
* shadow's temp dirs (:mod:`adapters.tempdirs`): ``shadow-<what>-<run id>-<random>`` in the temp dir, ``what``
  one of :data:`adapters.tempdirs.KINDS`. Before a dir is removed, every registered kind stops what it still
  runs inside (``Kind.clear_leftovers``: a database server a shadow or an action started there). Whose a dir is,
  and whether that run is over:

  - its ``shadow-labels.json`` names the owning process: over once that process is gone;
  - else, a ``home`` or ``scratch`` dir (the orchestrator names them, without labels) is over once the run its
    name names is not running (its liveness lock ``runs/<id>/alive`` is free);
  - else (no labels yet, a run this state dir does not know, or a name without a run id, as older shadows
    made them): over once nothing in it changed for an hour — except the dirs a server runs in
    (:data:`adapters.tempdirs.LABELS_REQUIRED`), never removed without labels;
* the checkpoint store's partial artifacts (``<store>/tmp/artifact-<pid>-<host>-…``,
  :meth:`snapshots.Store.partial_writes`) whose writing process is gone; one in an older shadow's name, which
  does not say whose it is, once unchanged for an hour.

``runs``: only those runs' leftovers (``shadow recover`` clears the runs it settled, which are over by then, so
a dir whose name names one of them goes even without labels); a labelled dir also belongs to a run when that run's record names its owning process (a rollback restores the
checkpoint of another run, and its restore dir may carry that run's id, or none).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from adapters import REGISTRY, Checkpoint, tempdirs
from adapters import docker as dockerlib
from shadow.errors import InfrastructureError
from shadow import state
from shadow.guard import RunRecord, is_alive
from shadow.settings import Settings
from snapshots import PRUNED, Store, atomic_write_bytes, open_store

STALE_AFTER = 3600.0  # seconds without a change before a temp dir whose owner cannot be known counts as abandoned
NAMED_ONLY = ("home", "scratch")  # made by the orchestrator with the run id in the name, and no labels


@dataclass(frozen=True)
class Leftover:
    """One thing a dead run left behind: ``kind`` is container, network, cluster, tempdir or partial (a half
    written store artifact)."""

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


def gc(dry_run: bool = False, runs: set[str] | None = None, settings: Settings | None = None,
       warm: bool = False) -> GcResult:
    """Find and remove the leftovers of runs whose owning process is gone; never touch a live run's. Warm servers
    (``policy.warm``, :mod:`adapters.postgres.warm`) go once their entry expired — with ``warm``, every one no run
    is using.

    ``runs``: only the leftovers of these runs (``shadow recover`` clears the runs it settled): what is labelled or
    named with one of them, or labelled with the process one of them ran in; everything else is left to a plain
    gc. ``settings``: the state dir whose run records say whether a run is alive and which process ran it.
    """
    settings = settings or Settings.from_env()
    result = GcResult(dry_run, runs=runs)
    collect_warm(result, settings, everything=warm)
    _collect_docker(result)
    owners, now = _owners(settings.runs_dir, runs), time.time()
    _collect_tempdirs(result, Path(tempfile.gettempdir()), settings.runs_dir, owners, now)
    _collect_partial_writes(result, Store(settings.store_dir), owners, now)
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
    runs_dir, store = settings.runs_dir, open_store(settings)
    state.pull_records(settings)  # shared state: every runner's records, so that no other runner's run is missed
    live = [p.parent.name for p in runs_dir.glob("*/alive") if is_alive(p.parent)] + state.running_elsewhere(settings)
    if live:
        raise InfrastructureError(f"run {live[0]} is running: prune checkpoints once no run is (nothing removed)")
    cutoff = started - older_than_days * 86400
    folders = store.manifest_dirs()
    doomed = [folder for folder in folders if not (folder / PRUNED).exists() and _finished(runs_dir, folder.name)
              and _run_started(folder) < cutoff]
    for folder in doomed:
        item = Leftover("checkpoint", folder.name, folder.name, f"run older than {older_than_days:g} day(s)")
        _remove(result, item, partial(_prune_run, store, folder, started), (FileNotFoundError,),
                (OSError, InfrastructureError))
    # What every manifest still on disk refers to (one whose prune failed included); a dry run counts the doomed
    # runs as gone.
    referenced: set[str] = set()
    for folder in folders:
        if dry_run and folder in doomed:
            continue
        for path in folder.glob("*.json"):
            if path.name != PRUNED:
                _references(_read_json(path), store, referenced)
    kept = {folder.name for folder in folders if folder not in doomed and not (folder / PRUNED).exists()}
    _prune_proposals(result, settings, cutoff, kept)
    for stored in store.stored_artifacts():
        if stored.sha256 in referenced or stored.modified >= started:
            continue
        item = Leftover("artifact", stored.sha256[:16], None, f"{stored.size:,} bytes, no checkpoint uses it")
        _remove(result, item, stored.remove, (FileNotFoundError,), (OSError, InfrastructureError))
    return result


def _prune_proposals(result: GcResult, settings: Any, cutoff: float, kept: set[str]) -> None:
    """A gateway proposal's folder (its plan and files) goes with the last checkpoint of a run made from it: once
    older than ``cutoff`` and no run planned or applied from it keeps a checkpoint, nothing can apply or roll it
    back. A folder some unfinished run was made from stays."""
    root = (Path(settings.state_dir) / "gateway" / "proposals").resolve()
    if not root.is_dir():
        return
    needed: set[Path] = set()
    for record in settings.runs_dir.glob("*/run.json"):
        try:
            plan = Path(str(json.loads(record.read_text())["plan_path"])).resolve()
        except (OSError, ValueError, KeyError, TypeError):
            return  # a run record that cannot be read might need any of them: none is removed
        if plan.parent.parent == root and (
                record.parent.name in kept or not _finished(settings.runs_dir, record.parent.name)):
            needed.add(plan.parent)
    for folder in sorted(root.iterdir()):
        if folder in needed or not folder.is_dir() or _run_started(folder) >= cutoff:
            continue
        item = Leftover("proposal", folder.name, None, "a gateway proposal no kept checkpoint was made from")
        _remove(result, item, partial(shutil.rmtree, folder), (FileNotFoundError,), (OSError,))


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


def _prune_run(store: Store, folder: Path, when: float) -> str:
    """Remove a run's checkpoint manifests (leaving a marker), and what each checkpoint keeps outside the store
    (its kind's ``prune``); returns what went besides the manifests. A store in S3 is told last (the marker goes
    there first, then the manifests)."""
    dropped = []
    for path in folder.glob("*.json"):
        checkpoint = _checkpoint_in(path)
        if checkpoint is not None and checkpoint.kind in REGISTRY:
            dropped.append(REGISTRY[checkpoint.kind].prune(checkpoint))
        path.unlink()
    applied = folder.parent.parent / "applied" / folder.name  # what production observed after the apply
    if applied.is_dir():
        shutil.rmtree(applied, ignore_errors=True)
    atomic_write_bytes(folder / PRUNED, json.dumps({"pruned_at": when}).encode())
    store.mark_pruned(folder.name)
    return "; ".join(said for said in dropped if said)


def _checkpoint_in(path: Path) -> Checkpoint | None:
    """The checkpoint a manifest holds; None when it holds none that can be read (it keeps nothing known)."""
    try:
        return Checkpoint.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _references(data: Any, store: Store, out: set[str]) -> None:
    """Every sha256 a checkpoint manifest refers to, and those its manifest artifacts (S3, git) refer to."""
    if isinstance(data, dict):
        sha = data.get("sha256")
        if isinstance(sha, str) and sha not in out:
            out.add(sha)
            if str(data.get("format", "")).endswith("manifest"):
                path = store.cached(sha)  # in S3 only: fetched into the cache, what it refers to must not be swept
                if path.exists():
                    _references(_read_json(path), store, out)
        for value in data.values():
            _references(value, store, out)
    elif isinstance(data, list):
        for value in data:
            _references(value, store, out)


def collect_warm(result: GcResult, settings: Settings, everything: bool = False) -> None:
    """Every kind's warm copies (``policy.warm``) kept for ``settings``' state dir that expired or were made by one
    of the runs gc clears (``everything``: all) and no run uses (:meth:`adapters.Kind.reap_warm`)."""
    detail = "removed on request" if everything else "expired"
    for kind in REGISTRY.values():
        try:
            for what, run, said in kind.reap_warm(settings, everything, result.dry_run, result.runs):
                result.removed.append(Leftover("warm", what, run, f"{detail}; {said}"))
        except (OSError, InfrastructureError) as exc:
            result.failed.append((Leftover("warm", str(settings.warm_dir), None, kind.name), str(exc)))


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
            _remove(result, item, partial(_remove_container, container), (NotFound, _BeingRemoved), (APIError,))
        for network in client.networks.list(filters={"label": dockerlib.LABEL_RUN}):
            found = network.attrs.get("Labels") or {}
            if dockerlib.owner_alive(found):
                continue
            item = Leftover("network", network.name, found.get(dockerlib.LABEL_RUN),
                            f"owner pid {found.get(dockerlib.LABEL_PID)} gone")
            _remove(result, item, network.remove, (NotFound,), (APIError,))
    finally:
        client.close()


class _BeingRemoved(Exception):
    """Another process removes the container already: a CLI run's remover (adapters.docker_remove), another gc."""


def _remove_container(container: Any) -> None:
    from docker.errors import APIError

    try:
        container.remove(force=True, v=True)
    except APIError as exc:
        if exc.status_code == 409 and "already in progress" in str(exc):
            raise _BeingRemoved(str(exc)) from exc
        raise


def _collect_tempdirs(result: GcResult, tmp: Path, runs_dir: Path, owners: dict[tuple[str, str], str],
                      now: float) -> None:
    for path in sorted(tmp.glob("shadow-*")):
        named = tempdirs.parse(path.name)
        if named is None or path.is_symlink() or not path.is_dir():
            continue
        try:
            verdict = _abandoned(path, *named, runs_dir, owners, result.runs, now)
        except FileNotFoundError:
            continue  # its run removed it just now
        if verdict is not None:
            item = Leftover(tempdirs.LEFTOVER_NAMES.get(named[0], "tempdir"), str(path), *verdict)
            _remove(result, item, partial(_remove_tempdir, path), (FileNotFoundError,),
                    (OSError, InfrastructureError))


def _collect_partial_writes(result: GcResult, store: Store, owners: dict[tuple[str, str], str], now: float) -> None:
    """The artifacts a killed process was writing into the store (a remote store's local cache included)."""
    for partial in store.partial_writes():
        if partial.pid is None or partial.host is None:
            idle = now - partial.modified
            if result.runs is not None or idle < STALE_AFTER:
                continue
            verdict: tuple[str | None, str] = (None, f"unchanged for {idle / 3600:.1f} h")
        else:
            if dockerlib.owner_alive({dockerlib.LABEL_PID: partial.pid, dockerlib.LABEL_HOST: partial.host}):
                continue
            verdict = (owners.get((partial.host, partial.pid)), f"owner pid {partial.pid} gone")
        item = Leftover("partial", str(partial.path), *verdict)
        _remove(result, item, partial.path.unlink, (FileNotFoundError,), (OSError,))


def _owners(runs_dir: Path, runs: set[str] | None) -> dict[tuple[str, str], str]:
    """(host, pid) → run id, from the records of ``runs`` (every run's when None): whose process made a dir."""
    paths = [runs_dir / run / "run.json" for run in runs] if runs is not None else list(runs_dir.glob("*/run.json"))
    out = {}
    for path in sorted(paths):  # run ids sort by start time: a reused pid is the latest run's
        try:
            record = RunRecord.load(path)
        except (OSError, ValueError, TypeError):
            continue
        if record.pid:
            out[(record.host, str(record.pid))] = record.run_id
    return out


def _abandoned(path: Path, what: str, named_run: str | None, runs_dir: Path, owners: dict[tuple[str, str], str],
               runs: set[str] | None, now: float) -> tuple[str | None, str] | None:
    """(the run a temp dir belongs to, why that run is over), or None while the dir may still be in use."""
    found = tempdirs.read_labels(path) or {}
    run = found.get(dockerlib.LABEL_RUN) or named_run
    if found.get(dockerlib.LABEL_PID):
        if dockerlib.owner_alive(found):
            return None
        pid = found[dockerlib.LABEL_PID]
        return owners.get((found.get(dockerlib.LABEL_HOST, ""), pid), run), f"owner pid {pid} gone"
    if run and runs is not None:
        return (run, f"run {run} settled") if run in runs else None
    if run and what in NAMED_ONLY and (runs_dir / run).is_dir():
        return None if is_alive(runs_dir / run) else (run, f"run {run} is not running")
    if what in tempdirs.LABELS_REQUIRED:
        return None  # being created, or an older shadow's: whether its server is still in use cannot be known
    if runs is not None:
        return None
    idle = now - _newest_mtime(path)
    return (run, f"unchanged for {idle / 3600:.1f} h") if idle >= STALE_AFTER else None


def _remove_tempdir(root: Path) -> str:
    """Stop what any kind still runs inside ``root``, then remove it; say what was stopped."""
    stopped = [said for kind in REGISTRY.values() for said in kind.clear_leftovers(root)]
    shutil.rmtree(root)
    return "; ".join(stopped)


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
