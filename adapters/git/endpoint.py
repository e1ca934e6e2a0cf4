"""The endpoint of a git target or shadow: the working copy an action runs in, and the identity it commits as."""

from __future__ import annotations

from dataclasses import dataclass

from adapters import Endpoint, env_name
from adapters.git.repo import Git


@dataclass(frozen=True)
class GitEndpoint(Endpoint):
    """An endpoint with a working directory (``Endpoint.workdir``): a plan with one such endpoint runs its command
    there."""


def worktree_endpoint(name: str, root: str, identity_of: Git) -> GitEndpoint:
    """``SHADOW_<NAME>_WORKTREE`` is ``root``; commits carry ``identity_of``'s identity; its secrets are masked."""
    return GitEndpoint(env={f"SHADOW_{env_name(name)}_WORKTREE": root, **identity_of.identity()},
                       secrets=identity_of.secrets, workdir=root)
