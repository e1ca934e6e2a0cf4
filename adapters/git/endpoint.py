"""The endpoint of a git target or shadow: the working copy an action runs in, and the identity it commits as."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters import Endpoint, env_name
from adapters.git.repo import Git


@dataclass(frozen=True)
class GitEndpoint(Endpoint):
    """An endpoint with a working directory (``Endpoint.workdir``): a plan with one such endpoint runs its command
    there."""

    target: str = ""
    remote: str | None = None  # the remote's name, if any

    def mounts(self) -> tuple[str, ...]:
        assert self.workdir is not None
        return _mounts(Git(Path(self.workdir), self.target), self.remote)


def worktree_endpoint(name: str, root: str, identity_of: Git, remote: str | None = None) -> GitEndpoint:
    """``SHADOW_<NAME>_WORKTREE`` is ``root``; commits carry ``identity_of``'s identity; its secrets are masked.

    Its mounts (for an isolated action) are the working copy, the repository when it lives elsewhere (a linked
    worktree) and ``remote``'s URL when that is a directory on this host."""
    return GitEndpoint(env={f"SHADOW_{env_name(name)}_WORKTREE": root, **identity_of.identity()},
                       secrets=identity_of.secrets, workdir=root, target=name, remote=remote)


def _mounts(git: Git, remote: str | None) -> tuple[str, ...]:
    root = Path(git.cwd).resolve()
    out = [root]
    common = git.run("rev-parse", "--path-format=absolute", "--git-common-dir", check=False).stdout.decode().strip()
    if common and not Path(common).resolve().is_relative_to(root):
        out.append(Path(common).resolve())
    if remote:
        url = git.run("remote", "get-url", remote, check=False).stdout.decode().strip()
        path = Path(url[len("file://"):] if url.startswith("file://") else url)
        if "://" not in url and not _scp_like(url):
            path = path if path.is_absolute() else root / path
            if path.is_dir():
                out.append(path.resolve())
    return tuple(dict.fromkeys(str(p) for p in out))


def _scp_like(url: str) -> bool:
    """``user@host:path`` / ``host:path``: git's scp-like syntax (a colon before any slash)."""
    colon, slash = url.find(":"), url.find("/")
    return colon > 0 and (slash < 0 or colon < slash)
