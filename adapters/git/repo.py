"""Running the git CLI in one repository: a clean environment, errors translated, secrets redacted.

Every command runs with the caller's ``GIT_*`` variables removed (a stray ``GIT_DIR`` or ``GIT_INDEX_FILE`` would
point it at another repository or index) and with ``GIT_OPTIONAL_LOCKS=0``, so that reading a working copy never
rewrites its index.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from shadow.errors import InfrastructureError
from shadow.redact import mask_secrets

# Internal commits (checkpoints) carry this identity; the user's own is used for revert commits when it is set.
SHADOW_IDENTITY = ("shadow", "shadow@localhost")
TIMEOUT = 600.0


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The credentials written into a remote URL (``https://user:token@host/…``): never shown anywhere."""
    if not url or "://" not in url:
        return ()
    parts = urlsplit(url)
    return tuple(s for s in (parts.password, parts.username if parts.password is None else None) if s)


def without_credentials(url: str) -> str:
    if "://" not in url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


class Git:
    """``git`` in ``cwd``; failures raise :class:`InfrastructureError` naming the target, credentials redacted."""

    def __init__(self, cwd: Path, target: str | None = None, secrets: tuple[str, ...] = ()) -> None:
        self.cwd = cwd
        self.target = target
        self.secrets = secrets

    def env(self, index: Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update({"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
        if index is not None:
            env["GIT_INDEX_FILE"] = str(index)
        env.update(extra or {})
        return env

    def run(self, *args: str, input: bytes | None = None, index: Path | None = None, check: bool = True,
            extra_env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        cmd = ["git", "-c", "core.quotepath=off", "-c", "gc.auto=0", "-c", "maintenance.auto=false", *args]
        try:
            proc = subprocess.run(cmd, cwd=self.cwd, input=input, capture_output=True, timeout=TIMEOUT,
                                  env=self.env(index, extra_env))
        except FileNotFoundError as exc:
            raise InfrastructureError("the git command is not installed (or not on PATH)", target=self.target) from exc
        except subprocess.TimeoutExpired as exc:
            raise InfrastructureError(f"git {args[0]} did not finish within {TIMEOUT:g} s in {self.cwd}",
                                      target=self.target) from exc
        if check and proc.returncode != 0:
            raise InfrastructureError(f"git {args[0]} failed in {self.cwd}: {self.last_line(proc)}",
                                      target=self.target)
        return proc

    def out(self, *args: str, **kwargs: object) -> str:
        return self.run(*args, **kwargs).stdout.decode("utf-8", "surrogateescape").strip()  # type: ignore[arg-type]

    def ok(self, *args: str) -> bool:
        return self.run(*args, check=False).returncode == 0

    def last_line(self, proc: subprocess.CompletedProcess[bytes]) -> str:
        text = (proc.stderr or proc.stdout).decode(errors="replace").strip()
        lines = [line for line in text.splitlines() if line.strip()]
        return mask_secrets(lines[-1] if lines else f"exit status {proc.returncode}", self.secrets)

    def identity(self) -> dict[str, str]:
        """Author and committer for commits made in this repository: its configured user, else shadow's."""
        name = self.run("config", "user.name", check=False).stdout.decode().strip() or SHADOW_IDENTITY[0]
        email = self.run("config", "user.email", check=False).stdout.decode().strip() or SHADOW_IDENTITY[1]
        return {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
                "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}

    def commit_tree(self, tree: str, parents: list[str], message: str, identity: Mapping[str, str] | None = None) -> str:
        args = ["commit-tree", tree, *(a for p in parents for a in ("-p", p)), "-F", "-"]
        who = identity or dict(zip(("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
                                     "GIT_COMMITTER_EMAIL"), SHADOW_IDENTITY * 2, strict=True))
        return self.out(*args, input=message.encode(), extra_env=who)

    def update_refs(self, lines: list[str]) -> None:
        """``git update-ref --stdin``: every line (update / create / delete) in one transaction."""
        if lines:
            self.run("update-ref", "--stdin", input=("\n".join(lines) + "\n").encode())

    def has_object(self, sha: str) -> bool:
        return self.ok("cat-file", "-e", sha)

    def is_ancestor(self, older: str, newer: str) -> bool:
        return self.ok("merge-base", "--is-ancestor", older, newer)
