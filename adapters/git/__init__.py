"""git targets: checkpoint a working copy (or a remote branch), rehearse in a clone, restore by revert or reset."""

from __future__ import annotations

from adapters.git.target import GitKind, GitShadow, GitTarget

KIND = GitKind()

__all__ = ["KIND", "GitKind", "GitShadow", "GitTarget"]
