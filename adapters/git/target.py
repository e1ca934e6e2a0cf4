"""The git target: checkpoint a working copy without touching it, rehearse in a clone, restore exactly.

- **checkpoint**: HEAD, branches, tags and the remote's branches and tags, plus the dirty state. Dirty files are
  written as blobs (their bytes, no filters) into production's object database, and two commits are made without
  touching the working copy, the index or any branch: one of the index (staged state) and, on top of it, one of
  the working tree (staged + unstaged + untracked, ignored files left out) — what ``git stash create`` makes, but
  with untracked files and never on the stash list. Those commits, every ref in scope and the remote's refs
  (fetched, never into ``refs/remotes``) are kept alive under ``refs/shadow/<run>/<target>/`` so no gc can take
  them; a manifest naming them is a store artifact.
- **shadow**: a local clone (objects hard-linked) with the checkpoint's refs, HEAD, index and working tree; its
  remote is a throwaway bare repository holding the remote's refs at the checkpoint, so a push from the action
  never reaches the real remote.
- **restore**: refs, HEAD, working tree and index back to the checkpoint. ``rollback: revert`` (the default) undoes
  a branch that moved forward with a new commit restoring the checkpoint's tree and pushes it like any commit;
  ``rollback: reset`` moves refs back (on the remote with ``--force-with-lease``). A remote ref that moved to a
  commit this working copy never had was pushed by someone else: restore refuses before writing anything.
- ``url:`` + ``branch:``: the same, on a clone shadow keeps under the state dir (``<state>/git/``) and resets to
  the remote branch at every checkpoint; the action runs in that clone during apply and pushes from it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adapters import Checkpoint, Endpoint, fingerprint_of, fingerprint_unchanged, nothing_runs, nothing_to_prepare, nothing_warm, tempdirs
from adapters.git.checkpoint import drop_kept_refs, keep_state, refuse_uncheckpointable
from adapters.git.describe import CONTENT_DIFF_LIMIT, DIFF_FILES, DIFF_LINES, MAX_COMMITS, describe_changes
from adapters.git.endpoint import GitEndpoint, worktree_endpoint
from adapters.git import own_effect
from adapters.git.observe import diff, observe
from adapters.git.repo import Git, url_secrets, without_credentials
from adapters.git.restore import restore_checkpoint
from adapters.git.shadow import GitShadow
from adapters.git.verify import restore_problems
from shadow.changes import Change
from shadow.errors import BadInput, InfrastructureError, SnapshotCorrupt
from snapshots import Store, open_store

ROLLBACKS = ("revert", "reset")

# Names other code imports from here, now defined in the modules above.
__all__ = ["CONTENT_DIFF_LIMIT", "DIFF_FILES", "DIFF_LINES", "MAX_COMMITS", "ROLLBACKS", "GitEndpoint", "GitKind",
           "GitShadow", "GitTarget", "describe_changes", "fingerprint_of"]


class GitTarget:
    kind = "git"

    def __init__(self, name: str, spec: Mapping[str, Any], settings: Any) -> None:
        self.name = name
        self.progress: Callable[[str], None] | None = None  # nothing here takes long enough to report on
        self.url: str | None = spec.get("url") or None
        self.branch: str | None = spec.get("branch") or None
        self.rollback = str(spec.get("rollback") or "revert")
        self.settings = settings
        if self.url:
            digest = hashlib.sha256(self.url.encode()).hexdigest()[:12]
            self.path = Path(settings.state_dir) / "git" / f"{name}-{digest}"
            self.wanted_remote: str | None = "origin"
        else:
            self.path = Path(spec["path"]).absolute()
            self.wanted_remote = spec.get("remote") or None
        self._git: Git | None = None
        self.remote: str | None = None

    def describe(self) -> str:
        if self.url:
            return f"git {without_credentials(self.url)} branch {self.branch}"
        return f"git working copy {self.path}"

    # -- the repository --------------------------------------------------------------------------------------
    def repo(self) -> Git:
        if self._git is not None:
            return self._git
        if not self.path.is_dir():
            if self.url:
                raise InfrastructureError(f"shadow's clone of {without_credentials(self.url)} is missing "
                                          f"({self.path}); run `shadow plan` to make it", target=self.name)
            raise BadInput(f"path {self.path} does not exist or is not a directory", target=self.name)
        probe = Git(self.path, self.name, url_secrets(self.url))
        top = probe.run("rev-parse", "--show-toplevel", check=False)
        if top.returncode != 0:
            bare = probe.run("rev-parse", "--is-bare-repository", check=False).stdout.strip() == b"true"
            raise BadInput(f"{self.path} is a bare repository: give a working copy as `path:`, or the repository's "
                           "URL as `url:` with `branch:`" if bare else f"{self.path} is not a git working copy",
                           target=self.name)
        git = Git(Path(os.fsdecode(top.stdout.strip())), self.name, probe.secrets)
        remotes = git.out("remote").split()
        remote = self.wanted_remote
        if remote is None:
            current = git.run("symbolic-ref", "-q", "--short", "HEAD", check=False).stdout.decode().strip()
            configured = git.run("config", f"branch.{current}.remote", check=False).stdout.decode().strip()
            remote = configured if configured in remotes else "origin" if "origin" in remotes else None
        elif remote not in remotes:
            raise BadInput(f"the working copy has no remote named {remote!r} (it has: "
                           f"{', '.join(remotes) or 'none'})", target=self.name)
        if remote:
            url = git.run("remote", "get-url", remote, check=False).stdout.decode().strip()
            git.secrets = tuple(dict.fromkeys(git.secrets + url_secrets(url)))
        self.remote = remote
        self._git = git
        return git

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.repo().secrets

    @contextmanager
    def lock(self, holder: str, timeout: float, wait: Callable[[str], None]) -> Iterator[None]:
        """A lock in the repository itself (``shadow.lock`` in its git dir): runs with different state dirs on
        this machine exclude each other too."""
        from shadow.locks import file_lock

        git = self.repo()
        git_dir = Path(os.fsdecode(git.run("rev-parse", "--absolute-git-dir").stdout.strip()))
        with file_lock(git_dir / "shadow.lock", holder, timeout, wait):
            yield

    def lock_identity(self) -> str:
        return self.describe()

    def _sync_clone(self) -> None:
        """``url:`` targets: bring shadow's own clone to the remote branch (it is shadow's, so it may be reset)."""
        assert self.url and self.branch
        parent = Git(self.path.parent, self.name, url_secrets(self.url))
        if not (self.path / ".git").exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            proc = parent.run("clone", "--quiet", "--branch", self.branch, self.url, str(self.path), check=False)
            if proc.returncode != 0:
                shutil.rmtree(self.path, ignore_errors=True)
                raise InfrastructureError(f"cannot clone {without_credentials(self.url)} branch {self.branch}: "
                                          f"{parent.last_line(proc)}", target=self.name)
        git = self.repo()
        git.run("fetch", "--quiet", "--prune", "--tags", "origin")
        if not git.ok("rev-parse", "-q", "--verify", f"refs/remotes/origin/{self.branch}"):
            raise BadInput(f"{without_credentials(self.url)} has no branch {self.branch!r}", target=self.name)
        git.run("checkout", "--quiet", "--force", "-B", self.branch, f"refs/remotes/origin/{self.branch}")
        git.run("clean", "-q", "-fdx")


    def endpoint(self) -> Endpoint:
        git = self.repo()
        return worktree_endpoint(self.name, str(git.cwd), git, self.remote)

    # -- observe -----------------------------------------------------------------------------------------------
    def observe(self) -> dict[str, Any]:
        git = self.repo()
        return observe(git, self.describe(), self.remote)

    def fingerprint(self, observation: dict[str, Any] | None = None) -> str:
        return fingerprint_of(observation if observation is not None else self.observe())

    at_checkpoint = fingerprint_unchanged

    # -- checkpoint --------------------------------------------------------------------------------------------
    def checkpoint(self, store: Store, run_id: str) -> Checkpoint:
        if self.url:
            self._sync_clone()
        git = self.repo()
        observation = self.observe()
        refuse_uncheckpointable(git, observation, self.name)
        keep = f"refs/shadow/{run_id}/{self.name}"
        manifest, written = keep_state(git, observation, run_id, keep, self.describe(), self.remote, self.name)
        return Checkpoint(
            target=self.name, kind=self.kind, run_id=run_id, observation=observation,
            fingerprint=fingerprint_of(observation),
            artifacts={"manifest": {**store.put_json(manifest), "format": "git checkpoint manifest"}},
            meta={"mode": f"refs under {keep}", "objects": len(observation["objects"]["file"]),
                  "copied_bytes": written, "rollback": self.rollback, "endpoint": self.describe(),
                  "repo": str(git.cwd), "keep": keep},
        )

    def _manifest(self, checkpoint: Checkpoint, store: Store) -> dict[str, Any]:
        data: dict[str, Any] = store.get_json(checkpoint.artifacts["manifest"])
        if not self.repo().has_object(data["commit"]):
            raise SnapshotCorrupt(f"checkpoint commit {data['commit'][:12]} is gone from {self.repo().cwd} "
                                  f"(was {data['keep']} deleted?)", target=self.name)
        return data

    # -- shadow ------------------------------------------------------------------------------------------------
    @contextmanager
    def shadow(self, checkpoint: Checkpoint, store: Store, run_id: str, backend: str,
               limits: Any = None) -> Iterator[GitShadow]:
        manifest = self._manifest(checkpoint, store)
        with tempdirs.tempdir("git", run_id, f"git-shadow {self.name}") as tmp:
            yield GitShadow(self, checkpoint, manifest, tmp, backend)

    # -- production --------------------------------------------------------------------------------------------
    def end_sessions(self, tag: str) -> int:
        return 0  # nothing of a killed client's runs on here after the client is gone

    def changes_since(self, checkpoint: Checkpoint, shadow: Any | None) -> list[Change]:
        return describe_changes(diff(checkpoint.observation, self.observe()), self.repo())

    # -- an apply among other writers (adapters.git.own_effect) ---------------------------------------------------
    def before_action(self, checkpoint: Checkpoint, shadow: Any) -> dict[str, Any]:
        return {"version": own_effect.VERSION, "footprint": own_effect.footprint(getattr(shadow, "rehearsed", [])),
                "refs": self.observe()["objects"]["ref"]}

    def own_effect(self, before: dict[str, Any], checkpoint: Checkpoint,
                   strict: bool) -> tuple[list[Change], list[Change], dict[str, Any]]:
        return own_effect.own_effect(self.repo(), before, checkpoint, self.observe(), strict)

    def undo(self, record: dict[str, Any], checkpoint: Checkpoint,
             force: bool) -> tuple[list[str], list[str], list[str]]:
        if "pending" in record:  # kept before the action of an apply that was killed: what did it change?
            record = self.own_effect(record["pending"], checkpoint, bool(record.get("strict")))[2]
        manifest = self._manifest(checkpoint, open_store(self.settings))
        return own_effect.undo(self.repo(), record, checkpoint, manifest, self.observe(), self.rollback, self.remote,
                               self.name, self.observe, force)

    def restore(self, checkpoint: Checkpoint, store: Store) -> None:
        self.restore_from(checkpoint, self._manifest(checkpoint, store))

    def restore_from(self, checkpoint: Checkpoint, manifest: dict[str, Any]) -> None:
        git = self.repo()
        restore_checkpoint(git, checkpoint, manifest, self.observe(), self.rollback, self.remote, self.name)

    def verify_restored(self, checkpoint: Checkpoint) -> list[str]:
        now = self.observe()
        if fingerprint_of(now) == checkpoint.fingerprint:
            return []
        return restore_problems(self.repo(), checkpoint.observation["objects"], now["objects"], self.rollback)


class GitKind:
    name = "git"
    runs_sql = False
    keys = ("path", "url", "branch", "remote", "rollback")
    change_ops: tuple[str, ...] = ("add", "delete", "modify", "move")
    change_kinds: tuple[str, ...] = ("file", "ref")
    clear_leftovers = staticmethod(nothing_runs)  # a clone or an index in a temp dir: removing the dir is enough
    prune = staticmethod(drop_kept_refs)
    reap_warm = staticmethod(nothing_warm)  # keeps no warm copies
    prepare_warm = staticmethod(nothing_to_prepare)

    def validate(self, spec: Mapping[str, Any]) -> Iterator[tuple[str | None, str]]:
        for key in spec:
            if key not in self.keys and key != "kind":
                yield key, f"unknown key for a git target (expected: {', '.join(self.keys)})"
        has_path, has_url = bool(spec.get("path")), bool(spec.get("url"))
        if has_path == has_url:
            yield None, "a git target needs exactly one of `path:` (a working copy) and `url:` (with `branch:`)"
        for key in ("path", "url", "branch", "remote"):
            if key in spec and (not isinstance(spec[key], str) or not spec[key].strip()):
                yield key, "must be a non-empty string"
        if has_url and not spec.get("branch"):
            yield "branch", "a `url:` target needs `branch:`, the branch the action works on"
        if has_path and "branch" in spec:
            yield "branch", "only with `url:`; a working copy's branch is the one checked out"
        if has_url and "remote" in spec:
            yield "remote", "only with `path:`"
        branch = spec.get("branch")
        if isinstance(branch, str) and not re.fullmatch(r"(?!.*\.\.)(?!/)(?!.*//)[^\s~^:?*\[\\]+(?<![/.])", branch):
            yield "branch", f"{branch!r} is not a valid branch name"
        if spec.get("rollback", "revert") not in ROLLBACKS:
            yield "rollback", f"{spec.get('rollback')!r} is not one of: {', '.join(ROLLBACKS)}"

    def resolve_paths(self, spec: Mapping[str, Any], folder: Path) -> dict[str, Any]:
        """``path:`` is relative to the plan file's folder."""
        out = dict(spec)
        if isinstance(out.get("path"), str) and out["path"].strip():
            out["path"] = os.path.normpath(folder / os.path.expanduser(out["path"]))
        return out

    def target(self, name: str, spec: Mapping[str, Any], settings: Any) -> GitTarget:
        return GitTarget(name, spec, settings)

    def point_at(self, spec: Mapping[str, Any], address: str) -> dict[str, Any]:
        """Another repository: a URL (``url:``, with ``://``) or a working copy (``path:``)."""
        out = {k: v for k, v in spec.items() if k not in ("path", "url", "remote")}
        if "://" in address:
            out["url"] = address
        else:
            out["path"] = str(Path(address).absolute())
        return out
