"""Observing a git working copy (and its remote), and diffing two observations.

An observation is plain JSON-able data::

    {"repo": {"where": …, "remote": "origin" | None},
     "objects": {"file": {"<path>": {"blob": sha | None, "mode": "100644" | "100755" | "120000" | None,
                                     "index": "<mode> <sha>" | "conflict" | None}},
                 "ref": {"HEAD": "ref: refs/heads/main", "refs/heads/main": sha, "refs/tags/v1": sha,
                         "origin:refs/heads/main": sha}},
     "data": {}}

``file`` covers every path git tracks or would track: the index's entries plus untracked files that are not
ignored. ``blob`` is the git blob id of the bytes in the working tree (``None``: not there), so staged, unstaged
and untracked changes all show. Ignored files are out of scope: never observed, never restored. ``ref`` holds
HEAD, local branches and tags, and the remote's branches and tags as ``<remote>:<refname>`` — remote-tracking
refs (``refs/remotes/…``) are a cache of the latter and are left out.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from adapters.git.repo import Git
from shadow.changes import Change

FILE_PROPS = ("blob", "mode", "index")
SCOPE = ("refs/heads", "refs/tags")


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _file_blob_id(path: Path, size: int) -> str:
    digest = hashlib.sha1(b"blob %d\0" % size, usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def worktree_entry(path: Path) -> tuple[str | None, str | None]:
    """(blob id, git mode) of what is at ``path`` in the working tree; (None, None) when nothing is."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    if stat.S_ISLNK(st.st_mode):
        return blob_id(os.readlink(os.fsencode(path))), "120000"
    if stat.S_ISDIR(st.st_mode):  # a submodule's checkout: out of scope, seen only by its index entry
        return None, "160000"
    # git records only the owner's execute bit (https://git-scm.com/docs/git-config#Documentation/git-config.txt-corefileMode)
    return _file_blob_id(path, st.st_size), "100755" if st.st_mode & stat.S_IXUSR else "100644"


def index_entries(git: Git) -> dict[str, str]:
    """path → "<mode> <sha>" of every index entry; "conflict" for a path with unmerged stages."""
    out: dict[str, str] = {}
    for entry in git.run("ls-files", "-s", "-z").stdout.split(b"\0"):
        if not entry:
            continue
        meta, raw = entry.split(b"\t", 1)
        mode, sha, stage = meta.decode().split()
        path = os.fsdecode(raw)
        out[path] = "conflict" if stage != "0" or out.get(path) == "conflict" else f"{mode} {sha}"
    return out


def untracked(git: Git) -> list[str]:
    listed = git.run("ls-files", "-z", "--others", "--exclude-standard").stdout.split(b"\0")
    # A nested repository is listed as "dir/": it is not ours to observe.
    return [os.fsdecode(p) for p in listed if p and not p.endswith(b"/")]


def files(git: Git) -> dict[str, dict[str, Any]]:
    index = index_entries(git)
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(set(index) | set(untracked(git))):
        blob, mode = worktree_entry(git.cwd / path)
        out[path] = {"blob": blob, "mode": mode, "index": index.get(path)}
    return out


def head(git: Git) -> str | None:
    symbolic = git.run("symbolic-ref", "-q", "HEAD", check=False)
    if symbolic.returncode == 0:
        return "ref: " + symbolic.stdout.decode().strip()
    return git.out("rev-parse", "-q", "--verify", "HEAD^{commit}") or None


def local_refs(git: Git, prefixes: tuple[str, ...] = SCOPE) -> dict[str, str]:
    lines = git.out("for-each-ref", "--format=%(objectname) %(refname)", *prefixes).splitlines()
    return {name: sha for sha, name in (line.split(" ", 1) for line in lines)}


def remote_refs(git: Git, remote: str) -> dict[str, str]:
    """``<remote>:<refname>`` → sha of the remote's branches and tags, as the remote says now."""
    proc = git.run("ls-remote", "--heads", "--tags", remote, check=False)
    if proc.returncode != 0:
        from shadow.errors import TargetUnreachable

        raise TargetUnreachable(f"cannot read the refs of remote {remote!r}: {git.last_line(proc)}",
                                target=git.target)
    out: dict[str, str] = {}
    for line in proc.stdout.decode().splitlines():
        sha, name = line.split("\t", 1)
        if not name.endswith("^{}"):
            out[f"{remote}:{name}"] = sha
    return out


def observe(git: Git, where: str, remote: str | None) -> dict[str, Any]:
    refs: dict[str, Any] = {"HEAD": head(git), **local_refs(git)}
    if remote:
        refs.update(remote_refs(git, remote))
    return {"repo": {"where": where, "remote": remote}, "objects": {"file": files(git), "ref": refs}, "data": {}}


def present(record: dict[str, Any] | None) -> bool:
    return record is not None and record.get("blob") is not None


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[Change]:
    """``add | delete | modify file <path>`` and ``add | delete | move ref <name>``.

    A file that went away and one that appeared with the same content and mode are reported as the delete and
    the add they are, each naming the other (``renamed_to`` / ``renamed_from``): expectations and ``files:`` counts
    see a rename as both.
    """
    fb, fa = before["objects"]["file"], after["objects"]["file"]
    changes: list[Change] = []
    added: list[Change] = []
    deleted: list[Change] = []
    for path in sorted(set(fb) | set(fa)):
        b, a = fb.get(path), fa.get(path)
        if b == a:
            continue
        if present(b) and not present(a):
            deleted.append(Change("delete", "file", path, {"blob": b["blob"], "mode": b["mode"]}))  # type: ignore[index]
        elif present(a) and not present(b):
            added.append(Change("add", "file", path, {"blob": a["blob"], "mode": a["mode"],  # type: ignore[index]
                                                      "staged": bool(a and a.get("index"))}))
        else:
            b, a = b or {}, a or {}
            changes.append(Change("modify", "file", path, {p: {"from": b.get(p), "to": a.get(p)}
                                                           for p in FILE_PROPS if b.get(p) != a.get(p)}))
    gone = {(c.detail["blob"], c.detail["mode"]): c for c in deleted}
    for change in added:
        twin = gone.pop((change.detail["blob"], change.detail["mode"]), None)
        if twin is not None:
            twin.detail["renamed_to"] = change.name
            change.detail["renamed_from"] = twin.name
    changes = sorted(added + deleted + changes, key=lambda c: (c.name, c.op))
    rb, ra = before["objects"]["ref"], after["objects"]["ref"]
    for name in sorted(set(rb) | set(ra), key=lambda n: (n != "HEAD", n)):
        old, new = rb.get(name), ra.get(name)
        if old != new:
            op = "add" if old is None else "delete" if new is None else "move"
            changes.append(Change(op, "ref", name, {"from": old, "to": new}))
    return changes
