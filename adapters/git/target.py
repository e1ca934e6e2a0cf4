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

import difflib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters import Checkpoint, Endpoint, tempdirs
from adapters.git.observe import blob_id, diff, local_refs, observe, present
from adapters.git.observe import files as observe_files
from adapters.git.repo import Git, url_secrets, without_credentials
from shadow.changes import Change, differences
from shadow.errors import BadInput, InfrastructureError, RestoreFailed, SnapshotCorrupt
from snapshots import Store

ROLLBACKS = ("revert", "reset")
CONTENT_DIFF_LIMIT = 64 * 1024  # bytes: text files up to this size get a unified diff in the report
DIFF_LINES = 100
DIFF_FILES = 200  # content diffs for at most this many files per change set
MAX_COMMITS = 20


@dataclass(frozen=True)
class GitEndpoint(Endpoint):
    """An endpoint with a working directory: a plan with one such endpoint runs its command there."""

    workdir: str | None = None


def fingerprint_of(observation: dict[str, Any]) -> str:
    data = {"objects": observation["objects"], "data": observation["data"]}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _env_name(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def _is_branch(name: str) -> bool:
    return name.split(":", 1)[-1].startswith("refs/heads/")


class GitTarget:
    kind = "git"

    def __init__(self, name: str, spec: Mapping[str, Any], settings: Any) -> None:
        self.name = name
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
        root = str(git.cwd)
        return GitEndpoint(env={f"SHADOW_{_env_name(self.name)}_WORKTREE": root, **git.identity()},
                           secrets=git.secrets, workdir=root)

    # -- observe -----------------------------------------------------------------------------------------------
    def observe(self) -> dict[str, Any]:
        git = self.repo()
        return observe(git, self.describe(), self.remote)

    def fingerprint(self, observation: dict[str, Any] | None = None) -> str:
        return fingerprint_of(observation if observation is not None else self.observe())

    # -- checkpoint --------------------------------------------------------------------------------------------
    def checkpoint(self, store: Store, run_id: str) -> Checkpoint:
        if self.url:
            self._sync_clone()
        git = self.repo()
        observation = self.observe()
        head = observation["objects"]["ref"]["HEAD"]
        if not str(head).startswith("ref: "):
            raise BadInput(f"the working copy {git.cwd} is on a detached HEAD at {str(head)[:12]}: check out a "
                           "branch first (shadow restores branches, not detached checkouts)", target=self.name)
        conflicts = [p for p, f in observation["objects"]["file"].items() if f["index"] == "conflict"]
        if conflicts:
            raise BadInput(f"the working copy has unresolved merge conflicts ({', '.join(conflicts[:3])}): "
                           "resolve or abort the merge first", target=self.name)
        keep = f"refs/shadow/{run_id}/{self.name}"
        with tempdirs.tempdir("git", run_id, "git-checkpoint") as tmp:
            written, index_tree, tree = _snapshot_trees(git, observation["objects"]["file"], tmp)
        commit = _commit_of(git, "HEAD")
        index_commit = git.commit_tree(index_tree, [commit] if commit else [], f"shadow {run_id}: index")
        top = git.commit_tree(tree, ([commit] if commit else []) + [index_commit],
                              f"shadow {run_id}: checkpoint of {self.describe()}")
        tracking = local_refs(git, (f"refs/remotes/{self.remote}",)) if self.remote else {}
        kept = {**{r: s for r, s in observation["objects"]["ref"].items() if r.startswith("refs/")}, **tracking}
        lines = [f"update {keep}/checkpoint {top}"] + [f"update {keep}/keep/{r} {s}" for r, s in kept.items()]
        git.update_refs(lines)
        if self.remote:
            observation["objects"]["ref"] = {**{r: s for r, s in observation["objects"]["ref"].items() if ":" not in r},
                                             **self._fetch_remote(git, keep)}
        manifest = {"commit": top, "index_tree": index_tree, "tree": tree, "remote": self.remote,
                    "tracking": tracking, "keep": keep}
        return Checkpoint(
            target=self.name, kind=self.kind, run_id=run_id, observation=observation,
            fingerprint=fingerprint_of(observation),
            artifacts={"manifest": {**store.put_json(manifest), "format": "git checkpoint manifest"}},
            meta={"mode": f"refs under {keep}", "objects": len(observation["objects"]["file"]),
                  "copied_bytes": written, "rollback": self.rollback, "endpoint": self.describe(),
                  "repo": str(git.cwd), "keep": keep},
        )

    def _fetch_remote(self, git: Git, keep: str) -> dict[str, str]:
        """The remote's branches and tags, fetched under ``keep`` (never into refs/remotes or refs/tags)."""
        assert self.remote
        proc = git.run("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--refmap=", self.remote,
                       f"+refs/heads/*:{keep}/remote/refs/heads/*", f"+refs/tags/*:{keep}/remote/refs/tags/*",
                       check=False)
        if proc.returncode != 0:
            from shadow.errors import TargetUnreachable

            raise TargetUnreachable(f"cannot fetch from remote {self.remote!r}: {git.last_line(proc)}",
                                    target=self.name)
        prefix = f"{keep}/remote/"
        return {f"{self.remote}:{r[len(prefix):]}": s for r, s in local_refs(git, (prefix + "refs",)).items()}

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
    def execute_sql(self, endpoint: Endpoint, statements: list[Any], timeout: float,
                    trace: list[dict[str, Any]] | None = None, tag: str = "") -> str:
        raise BadInput("an SQL action cannot run on a git target", target=self.name)

    def end_sessions(self, tag: str) -> int:
        return 0  # nothing of a killed client's runs on here after the client is gone

    def changes_since(self, checkpoint: Checkpoint, shadow: Any | None) -> list[Change]:
        return describe_changes(diff(checkpoint.observation, self.observe()), self.repo())

    def restore(self, checkpoint: Checkpoint, store: Store) -> None:
        self.restore_from(checkpoint, self._manifest(checkpoint, store))

    def restore_from(self, checkpoint: Checkpoint, manifest: dict[str, Any]) -> None:
        git = self.repo()
        now = self.observe()
        want, have = checkpoint.observation["objects"]["ref"], now["objects"]["ref"]
        strangers = [f"{n} is at {have[n][:12]}" for n in sorted(have)
                     if ":" in n and have[n] != want.get(n) and not git.has_object(have[n])]
        if strangers:  # checked before anything is written
            raise RestoreFailed(f"the remote moved to commits this working copy never had — someone else pushed "
                                f"({'; '.join(strangers[:3])}); shadow never pushes over their commits: restore by "
                                "hand, or fetch and re-plan", target=self.name, run_id=checkpoint.run_id)
        plan = _RefPlan(git, self.rollback, checkpoint.run_id)
        updates = {n: plan.value(n, want.get(n), have.get(n)) for n in sorted(set(want) | set(have)) if n != "HEAD"}
        updates = {n: v for n, v in updates.items() if v != have.get(n)}
        self._push(git, {n: v for n, v in updates.items() if ":" in n}, have)
        local = [f"delete {n} {have[n]}" if v is None else f"update {n} {v} {have.get(n) or ''}".rstrip()
                 for n, v in updates.items() if ":" not in n]
        if self.rollback == "reset" and self.remote:
            current = local_refs(git, (f"refs/remotes/{self.remote}",))
            local += [f"update {r} {s}" for r, s in manifest["tracking"].items() if current.get(r) != s]
            local += [f"delete {r}" for r in current if r not in manifest["tracking"]]
        git.update_refs(local)
        head = want["HEAD"]
        if have.get("HEAD") != head:
            if head.startswith("ref: "):
                git.run("symbolic-ref", "HEAD", head[5:])
            else:
                git.run("update-ref", "--no-deref", "HEAD", head)
        self._restore_files(git, manifest, checkpoint.observation["objects"]["file"], now["objects"]["file"],
                            checkpoint.run_id)

    def _push(self, git: Git, updates: dict[str, str | None], have: dict[str, str]) -> None:
        """Remote refs to their new values; every one leased to the value seen, so nobody's push is lost."""
        if not updates:
            return
        assert self.remote
        args = ["push", "--quiet", "--no-verify", "--atomic"]
        specs = []
        for name, value in updates.items():
            ref = name.split(":", 1)[1]
            args.append(f"--force-with-lease={ref}:{have.get(name) or ''}")
            specs.append(f"{value or ''}:{ref}")
        proc = git.run(*args, self.remote, *specs, check=False)
        if proc.returncode != 0:
            raise RestoreFailed(f"the remote {self.remote!r} refused the restore (did someone push meanwhile?): "
                                f"{git.last_line(proc)}", target=self.name)

    def _restore_files(self, git: Git, manifest: dict[str, Any], want: dict[str, Any], have: dict[str, Any],
                       run_id: str) -> None:
        stale = [p for p, f in want.items()
                 if present(f) and (f["blob"], f["mode"]) != ((have.get(p) or {}).get("blob"),
                                                                (have.get(p) or {}).get("mode"))]
        with tempdirs.tempdir("restore", run_id, "git-restore") as tmp:
            index = tmp / "index"
            git.run("read-tree", manifest["tree"], index=index)
            if stale:
                paths = b"".join(os.fsencode(p) + b"\0" for p in stale)
                git.run("checkout-index", "-f", "-z", "--stdin", input=paths, index=index)
        git.run("read-tree", manifest["index_tree"])
        # Listed once the checkpoint's files and index are back: a file ignored at the checkpoint (and committed
        # since) is ignored again now, and stays — ignored files are never shadow's to delete.
        for path, record in observe_files(git).items():
            if present(record) and not present(want.get(path)):
                _remove(git.cwd, path)
        git.run("update-index", "-q", "--refresh", check=False)

    def verify_restored(self, checkpoint: Checkpoint) -> list[str]:
        now = self.observe()
        if fingerprint_of(now) == checkpoint.fingerprint:
            return []
        before, after = checkpoint.observation["objects"], now["objects"]
        if self.rollback == "reset":
            return differences(before, after) or ["fingerprints differ"]
        # Revert: files, HEAD and tags equal; a branch may have moved forward, by commits restoring its tree.
        problems = differences(before["file"], after["file"]) if before["file"] != after["file"] else []
        git = self.repo()
        for name in sorted(set(before["ref"]) | set(after["ref"])):
            old, new = before["ref"].get(name), after["ref"].get(name)
            if old == new or (_is_branch(name) and old and new and git.has_object(new)
                              and git.is_ancestor(old, new) and _tree(git, old) == _tree(git, new)):
                continue
            problems.append(f"ref {name}: {old} → {new}")
        return problems


class _RefPlan:
    """The value each ref gets on restore; revert commits are made once per (checkpoint, current) pair."""

    def __init__(self, git: Git, mode: str, run_id: str) -> None:
        self.git, self.mode, self.run_id = git, mode, run_id
        self.reverts: dict[tuple[str, str], str] = {}

    def value(self, name: str, old: str | None, now: str | None) -> str | None:
        if old == now or old is None or now is None or self.mode == "reset" or not _is_branch(name):
            return old
        if not self.git.is_ancestor(old, now):
            return old  # history was rewritten: nothing to revert on top of, so it is put back
        if _tree(self.git, old) == _tree(self.git, now):
            return now  # already reverted
        if (old, now) not in self.reverts:
            log = self.git.out("log", "--format=%h %s", f"-{MAX_COMMITS}", now, f"^{old}")
            message = (f"Revert shadow run {self.run_id}\n\nRestores the tree of {old[:12]}, undoing:\n\n{log}\n")
            self.reverts[(old, now)] = self.git.commit_tree(_tree(self.git, old), [now], message,
                                                            self.git.identity())
        return self.reverts[(old, now)]


def _tree(git: Git, commit: str) -> str:
    return git.out("rev-parse", f"{commit}^{{tree}}")


def _commit_of(git: Git, rev: str) -> str | None:
    return git.run("rev-parse", "-q", "--verify", f"{rev}^{{commit}}", check=False).stdout.decode().strip() or None


def _remove(root: Path, path: str) -> None:
    full = root / path
    try:
        full.unlink()
    except FileNotFoundError:
        return
    parent = full.parent
    while parent != root:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


def _snapshot_trees(git: Git, files: dict[str, dict[str, Any]], tmp: Path) -> tuple[int, str, str]:
    """(bytes written, index tree, working tree tree): dirty blobs written with no filters, nothing else touched."""
    wanted = {f["blob"]: (path, f["mode"]) for path, f in files.items() if present(f) and f["mode"] != "160000"}
    check = git.run("cat-file", "--batch-check", input="".join(f"{b}\n" for b in wanted).encode()).stdout
    missing = [line.split()[0].decode() for line in check.splitlines() if line.endswith(b" missing")]
    written = 0
    regular = [wanted[b][0] for b in missing if wanted[b][1] != "120000"]
    if regular:
        out = git.run("hash-object", "-w", "--no-filters", "--stdin-paths",
                      input="".join(f"{p}\n" for p in regular).encode()).stdout.decode().split()
        for path, sha in zip(regular, out, strict=True):
            if sha != files[path]["blob"]:
                raise InfrastructureError(f"{path} changed while the checkpoint was taken; try again",
                                          target=git.target)
            written += (git.cwd / path).stat().st_size
    for blob in missing:
        path, mode = wanted[blob]
        if mode == "120000":
            link = os.readlink(os.fsencode(git.cwd / path))
            if git.out("hash-object", "-w", "--stdin", input=link) != blob_id(link):
                raise InfrastructureError(f"{path} changed while the checkpoint was taken; try again",
                                          target=git.target)
    entries = b""
    for path, f in files.items():
        if present(f):
            entries += f"{f['mode']} {f['blob']}\t".encode() + os.fsencode(path) + b"\0"
        elif f["mode"] == "160000" and f["index"]:
            entries += f"{f['index']}\t".encode() + os.fsencode(path) + b"\0"
    tree_index = tmp / "worktree.index"
    git.run("update-index", "-z", "--index-info", input=entries, index=tree_index)
    tree = git.out("write-tree", index=tree_index)
    index_copy = tmp / "index"
    real_index = Path(git.out("rev-parse", "--absolute-git-dir")) / "index"
    if real_index.exists():
        shutil.copyfile(real_index, index_copy)
    # write-tree on a copy: on the real index it would store its cache-tree there
    return written, git.out("write-tree", index=index_copy), tree


def describe_changes(changes: list[Change], git: Git) -> list[Change]:
    """Add what a reviewer needs: the commits a ref gained, and unified diffs of small text files."""
    known_before = [c.detail["from"] for c in changes if c.kind == "ref" and c.detail.get("from")]
    diffs = 0
    for change in changes:
        if change.kind == "ref" and change.name != "HEAD" and change.detail.get("to"):
            _describe_ref(change, git, known_before)
        elif change.kind == "file" and diffs < DIFF_FILES:
            lines = _content_diff(change, git)
            if lines is not None:
                change.detail["content_diff"] = lines
                diffs += 1
    return changes


def _describe_ref(change: Change, git: Git, known_before: list[str]) -> None:
    new, old = change.detail["to"], change.detail.get("from")
    if not git.has_object(new):
        change.detail["commits"] = None
        change.detail["note"] = "not in this repository: pushed from elsewhere"
        return
    exclude = [f"^{s}" for s in dict.fromkeys(known_before + ([old] if old else [])) if git.has_object(s)]
    log = git.out("log", "--format=%H%x00%s", f"-{MAX_COMMITS + 1}", new, *exclude)
    commits = [dict(zip(("sha", "subject"), line.split("\0", 1), strict=True)) for line in log.splitlines()]
    change.detail["commits"] = commits[:MAX_COMMITS] + ([{"sha": "…", "subject": "more"}]
                                                        if len(commits) > MAX_COMMITS else [])
    if old and git.has_object(old):
        change.detail["forced"] = not git.is_ancestor(old, new)


def _content_diff(change: Change, git: Git) -> list[str] | None:
    detail = change.detail
    mode = detail["mode"]["to"] if change.op == "modify" and "mode" in detail else detail.get("mode")
    if change.op == "delete" or mode in ("120000", "160000"):
        return None
    if change.op == "modify" and "blob" not in detail:
        return None
    new_path = git.cwd / change.name
    try:
        if new_path.is_symlink() or new_path.stat().st_size > CONTENT_DIFF_LIMIT:
            return None
        new = new_path.read_bytes()
    except OSError:
        return None
    old = b""
    if change.op == "modify" and detail["blob"]["from"]:
        proc = git.run("cat-file", "blob", detail["blob"]["from"], check=False)
        if proc.returncode != 0 or len(proc.stdout) > CONTENT_DIFF_LIMIT:
            return None
        old = proc.stdout
    if b"\0" in old[:8000] or b"\0" in new[:8000]:
        detail["binary"] = True
        return None
    try:
        old_text, new_text = old.decode("utf-8"), new.decode("utf-8")
    except UnicodeDecodeError:
        detail["binary"] = True
        return None
    lines = list(difflib.unified_diff(old_text.splitlines(), new_text.splitlines(),
                                      "/dev/null" if change.op == "add" else f"a/{change.name}",
                                      f"b/{change.name}", lineterm=""))
    if len(lines) > DIFF_LINES:
        lines = lines[:DIFF_LINES] + [f"… {len(lines) - DIFF_LINES} more lines"]
    return lines or None


class GitShadow:
    """A clone at the checkpoint — refs, HEAD, index and working tree — with a throwaway bare remote."""

    def __init__(self, target: GitTarget, checkpoint: Checkpoint, manifest: dict[str, Any], tmp: Path,
                 backend: str) -> None:
        self.name = target.name
        self.target = target
        self.backend = backend
        self.checkpoint = checkpoint
        self.warnings: list[str] = []
        self.manifest = manifest
        self.work = tmp / "work"
        self.remote_dir = tmp / "remote.git"
        self.remote: str | None = manifest["remote"]
        prod = target.repo()
        keep = manifest["keep"]
        Git(tmp, self.name, prod.secrets).run("clone", "--quiet", "--bare", "--local", str(prod.cwd),
                                              str(self.work / ".git"))
        self.git = git = Git(self.work, self.name, prod.secrets)
        git.run("config", "core.bare", "false")
        git.run("remote", "remove", "origin")  # it points at production
        git.run("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(prod.cwd), f"+{keep}/*:{keep}/*")
        self._copy_config(prod)
        refs = checkpoint.observation["objects"]["ref"]
        wanted = {r: s for r, s in refs.items() if r.startswith("refs/")} | manifest["tracking"]
        current = local_refs(git, ("refs/heads", "refs/tags", "refs/remotes"))
        lines = [f"update {r} {s}" for r, s in wanted.items()] + [f"delete {r}" for r in current if r not in wanted]
        git.update_refs(lines)
        git.run("symbolic-ref", "HEAD", refs["HEAD"][5:])
        if self.remote:
            Git(tmp, self.name).run("init", "--quiet", "--bare", str(self.remote_dir))
            git.run("push", "--quiet", "--no-verify", str(self.remote_dir),
                    f"+{keep}/remote/refs/heads/*:refs/heads/*", f"+{keep}/remote/refs/tags/*:refs/tags/*")
            git.run("remote", "add", self.remote, str(self.remote_dir))
        index = tmp / "worktree.index"
        git.run("read-tree", manifest["tree"], index=index)
        git.run("checkout-index", "-a", "-f", index=index)
        git.run("read-tree", manifest["index_tree"])
        git.run("update-index", "-q", "--refresh", check=False)
        self.pristine_observation = self.observe()
        self.endpoint: Endpoint = GitEndpoint(env={f"SHADOW_{_env_name(self.name)}_WORKTREE": str(self.work),
                                         **prod.identity()}, secrets=prod.secrets, workdir=str(self.work))

    def _copy_config(self, prod: Git) -> None:
        """Upstreams, push settings and identity, so that `git push` and `git commit` behave as in production."""
        proc = prod.run("config", "--local", "-z", "--get-regexp", r"^(branch|push|user)\.", check=False)
        for entry in proc.stdout.split(b"\0"):
            if entry:
                key, _, value = entry.partition(b"\n")
                self.git.run("config", "--add", key.decode(), value.decode("utf-8", "surrogateescape"))

    @property
    def fidelity(self) -> list[str]:
        want, got = self.checkpoint.observation["objects"], self.pristine_observation["objects"]
        return [] if want == got else differences(want, got)

    def observe(self) -> dict[str, Any]:
        return observe(self.git, f"shadow of {self.target.describe()}", self.remote)

    def changes(self) -> list[Change]:
        return describe_changes(diff(self.pristine_observation, self.observe()), self.git)

    def rehearse_rollback(self) -> list[str]:
        """Undo the rehearsal with production's own restore (same mode: reset, or revert commits pushed to the
        throwaway remote), then verify the clone as a rollback verifies production."""
        spec: dict[str, Any] = {"path": str(self.work), "rollback": self.target.rollback}
        if self.remote:
            spec["remote"] = self.remote
        twin = GitTarget(self.name, spec, self.target.settings)
        twin.restore_from(self.checkpoint, self.manifest)
        return twin.verify_restored(self.checkpoint)

    def check(self, query: str) -> Any:
        raise BadInput("`checks` run SQL and are for postgres targets", target=self.name)

    def attach(self, network: Any) -> Endpoint:
        raise BadInput("`action.isolation: container` cannot reach a git shadow yet (it is a clone on this host); "
                       "use `isolation: process` for plans with git targets", target=self.name)


class GitKind:
    name = "git"
    keys = ("path", "url", "branch", "remote", "rollback")
    change_ops: tuple[str, ...] = ("add", "delete", "modify", "move")
    change_kinds: tuple[str, ...] = ("file", "ref")

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
