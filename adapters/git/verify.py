"""Verifying a git restore: with ``rollback: reset`` production must equal the checkpoint; with ``revert`` a
branch may also have moved forward, by commits that restore the checkpoint's tree. What still differs is said in
the change set's own addresses (``add file b.txt``, ``move ref refs/heads/main``)."""

from __future__ import annotations

from typing import Any

from adapters.git.observe import diff
from adapters.git.repo import Git
from adapters.git.restore import is_branch, tree_of
from shadow.changes import listed

LIMIT = 20  # problems listed; the rest are counted


def restore_problems(git: Git, before: dict[str, Any], after: dict[str, Any], mode: str) -> list[str]:
    """How the observed ``after`` objects differ from the checkpoint's ``before`` in ways a restore by ``mode``
    does not allow (the caller has found their fingerprints differ)."""
    changes = diff({"objects": before}, {"objects": after})
    if mode == "revert":  # a branch may have moved forward, by commits restoring its tree
        changes = [c for c in changes
                   if not (c.kind == "ref" and reverted(git, c.name, c.detail["from"], c.detail["to"]))]
    elif not changes:
        return ["fingerprints differ"]
    lines = [c.summary() for c in changes]
    return listed(lines, LIMIT)


def reverted(git: Git, name: str, old: str | None, new: str | None) -> bool:
    """Branch ``name`` moved from ``old`` forward to ``new``, by commits that restore ``old``'s tree."""
    return bool(is_branch(name) and old and new and git.has_object(new) and git.is_ancestor(old, new)
                and tree_of(git, old) == tree_of(git, new))
