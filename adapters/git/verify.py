"""Verifying a git restore: with ``rollback: reset`` production must equal the checkpoint; with ``revert`` a
branch may also have moved forward, by commits that restore the checkpoint's tree."""

from __future__ import annotations

from typing import Any

from adapters.git.repo import Git
from adapters.git.restore import is_branch, tree_of
from shadow.changes import differences


def restore_problems(git: Git, before: dict[str, Any], after: dict[str, Any], mode: str) -> list[str]:
    """How the observed ``after`` objects differ from the checkpoint's ``before`` in ways a restore by ``mode``
    does not allow (the caller has found their fingerprints differ)."""
    if mode == "reset":
        return differences(before, after) or ["fingerprints differ"]
    # Revert: files, HEAD and tags equal; a branch may have moved forward, by commits restoring its tree.
    problems = differences(before["file"], after["file"]) if before["file"] != after["file"] else []
    for name in sorted(set(before["ref"]) | set(after["ref"])):
        old, new = before["ref"].get(name), after["ref"].get(name)
        if old == new or (is_branch(name) and old and new and git.has_object(new)
                          and git.is_ancestor(old, new) and tree_of(git, old) == tree_of(git, new)):
            continue
        problems.append(f"ref {name}: {old} → {new}")
    return problems
