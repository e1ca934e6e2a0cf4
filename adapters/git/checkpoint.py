"""What a git checkpoint keeps: two commits of the dirty state (index, then working tree) made without touching
the working copy, the index or any branch, and every ref in scope plus the remote's refs, all kept alive under
``refs/shadow/<run>/<target>/``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from adapters import Checkpoint, tempdirs
from adapters.git.observe import blob_id, local_refs, present
from adapters.git.repo import Git
from shadow.errors import BadInput, InfrastructureError, TargetUnreachable


def refuse_uncheckpointable(git: Git, observation: dict[str, Any], name: str) -> None:
    """A detached HEAD or unresolved conflicts: nothing a restore could put back faithfully."""
    head = observation["objects"]["ref"]["HEAD"]
    if not str(head).startswith("ref: "):
        raise BadInput(f"the working copy {git.cwd} is on a detached HEAD at {str(head)[:12]}: check out a "
                       "branch first (shadow restores branches, not detached checkouts)", target=name)
    conflicts = [p for p, f in observation["objects"]["file"].items() if f["index"] == "conflict"]
    if conflicts:
        raise BadInput(f"the working copy has unresolved merge conflicts ({', '.join(conflicts[:3])}): "
                       "resolve or abort the merge first", target=name)


def keep_state(git: Git, observation: dict[str, Any], run_id: str, keep: str, where: str,
               remote: str | None, name: str) -> tuple[dict[str, Any], int]:
    """(manifest, bytes written): the checkpoint commits and refs kept under ``keep``; with a remote, the
    observation's remote refs become the ones fetched there."""
    with tempdirs.tempdir("git", run_id, "git-checkpoint") as tmp:
        written, index_tree, tree = snapshot_trees(git, observation["objects"]["file"], tmp)
    commit = commit_of(git, "HEAD")
    index_commit = git.commit_tree(index_tree, [commit] if commit else [], f"shadow {run_id}: index")
    top = git.commit_tree(tree, ([commit] if commit else []) + [index_commit],
                          f"shadow {run_id}: checkpoint of {where}")
    tracking = local_refs(git, (f"refs/remotes/{remote}",)) if remote else {}
    kept = {**{r: s for r, s in observation["objects"]["ref"].items() if r.startswith("refs/")}, **tracking}
    lines = [f"update {keep}/checkpoint {top}"] + [f"update {keep}/keep/{r} {s}" for r, s in kept.items()]
    git.update_refs(lines)
    if remote:
        observation["objects"]["ref"] = {**{r: s for r, s in observation["objects"]["ref"].items() if ":" not in r},
                                         **fetch_remote(git, remote, keep, name)}
    manifest = {"commit": top, "index_tree": index_tree, "tree": tree, "remote": remote,
                "tracking": tracking, "keep": keep}
    return manifest, written


def fetch_remote(git: Git, remote: str, keep: str, name: str) -> dict[str, str]:
    """The remote's branches and tags, fetched under ``keep`` (never into refs/remotes or refs/tags)."""
    proc = git.run("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--refmap=", remote,
                   f"+refs/heads/*:{keep}/remote/refs/heads/*", f"+refs/tags/*:{keep}/remote/refs/tags/*",
                   check=False)
    if proc.returncode != 0:
        raise TargetUnreachable(f"cannot fetch from remote {remote!r}: {git.last_line(proc)}", target=name)
    prefix = f"{keep}/remote/"
    return {f"{remote}:{r[len(prefix):]}": s for r, s in local_refs(git, (prefix + "refs",)).items()}


def commit_of(git: Git, rev: str) -> str | None:
    return git.run("rev-parse", "-q", "--verify", f"{rev}^{{commit}}", check=False).stdout.decode().strip() or None


def snapshot_trees(git: Git, files: dict[str, dict[str, Any]], tmp: Path) -> tuple[int, str, str]:
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


def drop_kept_refs(checkpoint: Checkpoint) -> str:
    """``prune`` of a git checkpoint: delete the refs it keeps under ``refs/shadow/<run>/<target>`` in its
    repository, so that git's own gc may collect the commits only they held. A repository that is gone has nothing
    to drop; a checkpoint that names none (an older shadow's) keeps nothing."""
    repo, keep = checkpoint.meta.get("repo"), checkpoint.meta.get("keep")
    if not (repo and keep):
        return ""
    git = Git(Path(repo))
    if not git.cwd.is_dir():
        return f"{git.cwd} is gone"
    listed = git.run("for-each-ref", "--format=%(refname)", f"{keep}/", check=False)
    refs = listed.stdout.decode("utf-8", "surrogateescape").split() if listed.returncode == 0 else []
    git.update_refs([f"delete {ref}" for ref in refs])
    return f"{len(refs)} ref(s) under {keep} in {git.cwd}"
