"""Restoring a git target: refs, HEAD, working tree and index back to the checkpoint.

``rollback: revert`` (the default) undoes a branch that moved forward with a new commit restoring the
checkpoint's tree and pushes it like any commit; ``rollback: reset`` moves refs back (on the remote with
``--force-with-lease``). A remote ref that moved to a commit this working copy never had was pushed by someone
else: restore refuses before writing anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from adapters import Checkpoint, tempdirs
from adapters.git.describe import MAX_COMMITS
from adapters.git.observe import local_refs, present
from adapters.git.observe import files as observe_files
from adapters.git.repo import Git
from shadow.errors import RestoreFailed


def is_branch(name: str) -> bool:
    return name.split(":", 1)[-1].startswith("refs/heads/")


def tree_of(git: Git, commit: str) -> str:
    return git.out("rev-parse", f"{commit}^{{tree}}")


def restore_checkpoint(git: Git, checkpoint: Checkpoint, manifest: dict[str, Any], now: dict[str, Any],
                       mode: str, remote: str | None, name: str) -> None:
    """Production (observed as ``now``) back to ``checkpoint`` by ``mode`` (revert or reset)."""
    want, have = checkpoint.observation["objects"]["ref"], now["objects"]["ref"]
    strangers = [f"{n} is at {have[n][:12]}" for n in sorted(have)
                 if ":" in n and have[n] != want.get(n) and not git.has_object(have[n])]
    if strangers:  # checked before anything is written
        raise RestoreFailed(f"the remote moved to commits this working copy never had — someone else pushed "
                            f"({'; '.join(strangers[:3])}); shadow never pushes over their commits: restore by "
                            "hand, or fetch and re-plan", target=name, run_id=checkpoint.run_id)
    plan = _RefPlan(git, mode, checkpoint.run_id)
    updates = {n: plan.value(n, want.get(n), have.get(n)) for n in sorted(set(want) | set(have)) if n != "HEAD"}
    updates = {n: v for n, v in updates.items() if v != have.get(n)}
    _push(git, remote, name, {n: v for n, v in updates.items() if ":" in n}, have)
    local = [f"delete {n} {have[n]}" if v is None else f"update {n} {v} {have.get(n) or ''}".rstrip()
             for n, v in updates.items() if ":" not in n]
    if mode == "reset" and remote:
        current = local_refs(git, (f"refs/remotes/{remote}",))
        local += [f"update {r} {s}" for r, s in manifest["tracking"].items() if current.get(r) != s]
        local += [f"delete {r}" for r in current if r not in manifest["tracking"]]
    git.update_refs(local)
    head = want["HEAD"]
    if have.get("HEAD") != head:
        if head.startswith("ref: "):
            git.run("symbolic-ref", "HEAD", head[5:])
        else:
            git.run("update-ref", "--no-deref", "HEAD", head)
    _restore_files(git, manifest, checkpoint.observation["objects"]["file"], now["objects"]["file"],
                   checkpoint.run_id)


def _push(git: Git, remote: str | None, name: str, updates: dict[str, str | None], have: dict[str, str]) -> None:
    """Remote refs to their new values; every one leased to the value seen, so nobody's push is lost."""
    if not updates:
        return
    assert remote
    args = ["push", "--quiet", "--no-verify", "--atomic"]
    specs = []
    for ref_name, value in updates.items():
        ref = ref_name.split(":", 1)[1]
        args.append(f"--force-with-lease={ref}:{have.get(ref_name) or ''}")
        specs.append(f"{value or ''}:{ref}")
    proc = git.run(*args, remote, *specs, check=False)
    if proc.returncode != 0:
        raise RestoreFailed(f"the remote {remote!r} refused the restore (did someone push meanwhile?): "
                            f"{git.last_line(proc)}", target=name)


def _restore_files(git: Git, manifest: dict[str, Any], want: dict[str, Any], have: dict[str, Any],
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


class _RefPlan:
    """The value each ref gets on restore; revert commits are made once per (checkpoint, current) pair."""

    def __init__(self, git: Git, mode: str, run_id: str) -> None:
        self.git, self.mode, self.run_id = git, mode, run_id
        self.reverts: dict[tuple[str, str], str] = {}

    def value(self, name: str, old: str | None, now: str | None) -> str | None:
        if old == now or old is None or now is None or self.mode == "reset" or not is_branch(name):
            return old
        if not self.git.is_ancestor(old, now):
            return old  # history was rewritten: nothing to revert on top of, so it is put back
        if tree_of(self.git, old) == tree_of(self.git, now):
            return now  # already reverted
        if (old, now) not in self.reverts:
            log = self.git.out("log", "--format=%h %s", f"-{MAX_COMMITS}", now, f"^{old}")
            message = (f"Revert shadow run {self.run_id}\n\nRestores the tree of {old[:12]}, undoing:\n\n{log}\n")
            self.reverts[(old, now)] = self.git.commit_tree(tree_of(self.git, old), [now], message,
                                                            self.git.identity())
        return self.reverts[(old, now)]


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
