"""Real git repositories for the git adapter's tests: a bare "remote" and a working copy cloned from it."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IDENTITY = {"GIT_AUTHOR_NAME": "Ann", "GIT_AUTHOR_EMAIL": "ann@example.com",
            "GIT_COMMITTER_NAME": "Ann", "GIT_COMMITTER_EMAIL": "ann@example.com"}


def git(cwd: Path, *args: str, input: bytes | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | IDENTITY
    env["GIT_CONFIG_GLOBAL"] = "/dev/null"
    proc = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr.decode()}")
    return proc.stdout.decode("utf-8", "surrogateescape").strip()


@dataclass
class Repo:
    """A working copy (``wc``) whose ``origin`` is a bare repository (``remote``)."""

    wc: Path
    remote: Path

    def git(self, *args: str) -> str:
        return git(self.wc, *args)

    def write(self, path: str, data: str | bytes, executable: bool = False) -> None:
        full = self.wc / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(data.encode() if isinstance(data, str) else data)
        full.chmod(0o755 if executable else 0o644)

    def commit(self, message: str, push: bool = False) -> str:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        if push:
            self.git("push", "-q", "origin", "HEAD")
        return self.git("rev-parse", "HEAD")

    def remote_head(self, branch: str = "main") -> str:
        return git(self.remote, "rev-parse", f"refs/heads/{branch}")

    def state(self) -> dict[str, Any]:
        """What a user sees: status (staged, unstaged, untracked), refs, HEAD, and every file's bytes and mode."""
        files = {}
        for base, dirs, names in os.walk(self.wc):
            dirs[:] = [d for d in dirs if d != ".git"]
            for name in names + [d for d in dirs if (Path(base) / d).is_symlink()]:
                p = Path(base) / name
                rel = str(p.relative_to(self.wc))
                files[rel] = (os.readlink(p) if p.is_symlink() else p.read_bytes(), p.lstat().st_mode)
        return {
            "status": self.git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--ignored"),
            "staged": self.git("diff", "--cached", "--binary"),
            "refs": self.git("for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags",
                             "refs/remotes"),
            "head": self.git("symbolic-ref", "-q", "HEAD"),
            "files": files,
            "remote": git(self.remote, "for-each-ref", "--format=%(objectname) %(refname)"),
        }


def make_repo(root: Path, files: dict[str, str | bytes] | None = None) -> Repo:
    remote, wc = root / "remote.git", root / "working copy"
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "--bare", "-b", "main", str(remote))
    git(root, "clone", "-q", str(remote), str(wc))
    repo = Repo(wc, remote)
    repo.git("checkout", "-q", "-b", "main")
    for path, data in (files or {}).items():
        repo.write(path, data)
    repo.commit("initial", push=True)
    repo.git("branch", "-q", "--set-upstream-to=origin/main")
    return repo
