"""A git shadow: a local clone (objects hard-linked) with the checkpoint's refs, HEAD, index and working tree;
its remote is a throwaway bare repository holding the remote's refs at the checkpoint, so a push from the action
never reaches the real remote."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters import Checkpoint, Endpoint
from adapters.git.describe import describe_changes
from adapters.git.endpoint import worktree_endpoint
from adapters.git.observe import diff, local_refs, observe
from adapters.git.own_effect import footprint
from adapters.git.repo import Git
from adapters.git.verify import restore_problems
from shadow.changes import Change

if TYPE_CHECKING:
    from adapters.git.target import GitTarget


class GitShadow:
    """A clone at the checkpoint — refs, HEAD, index and working tree — with a throwaway bare remote."""

    def __init__(self, target: GitTarget, checkpoint: Checkpoint, manifest: dict[str, Any], tmp: Path,
                 backend: str) -> None:
        self.name = target.name
        self.target = target
        self.backend = backend
        self.checkpoint = checkpoint
        self.warnings: list[str] = []
        self.rehearsed: list[Change] = []  # what the action changed (changes)
        self.manifest = manifest
        self.work = tmp / "work"
        self.remote_dir = tmp / "remote.git"
        self.remote: str | None = manifest["remote"]
        prod = target.repo()
        keep = manifest["keep"]
        Git(tmp, self.name, prod.secrets).run("clone", "--quiet", "--bare", "--local", str(prod.cwd),
                                              str(self.work / ".git"))
        self.git = git = Git(self.work, self.name, prod.secrets)
        git.run("config", "core.bare", "false")
        git.run("remote", "remove", "origin")  # it points at production
        git.run("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", str(prod.cwd), f"+{keep}/*:{keep}/*")
        self._copy_config(prod)
        refs = checkpoint.observation["objects"]["ref"]
        wanted = {r: s for r, s in refs.items() if r.startswith("refs/")} | manifest["tracking"]
        current = local_refs(git, ("refs/heads", "refs/tags", "refs/remotes"))
        lines = [f"update {r} {s}" for r, s in wanted.items()] + [f"delete {r}" for r in current if r not in wanted]
        git.update_refs(lines)
        git.run("symbolic-ref", "HEAD", refs["HEAD"][5:])
        if self.remote:
            Git(tmp, self.name).run("init", "--quiet", "--bare", str(self.remote_dir))
            git.run("push", "--quiet", "--no-verify", str(self.remote_dir),
                    f"+{keep}/remote/refs/heads/*:refs/heads/*", f"+{keep}/remote/refs/tags/*:refs/tags/*")
            git.run("remote", "add", self.remote, str(self.remote_dir))
        index = tmp / "worktree.index"
        git.run("read-tree", manifest["tree"], index=index)
        git.run("checkout-index", "-a", "-f", index=index)
        git.run("read-tree", manifest["index_tree"])
        git.run("update-index", "-q", "--refresh", check=False)
        self.pristine_observation = self.observe()
        self.endpoint: Endpoint = worktree_endpoint(self.name, str(self.work), prod, self.remote)

    def _copy_config(self, prod: Git) -> None:
        """Upstreams, push settings and identity, so that `git push` and `git commit` behave as in production."""
        proc = prod.run("config", "--local", "-z", "--get-regexp", r"^(branch|push|user)\.", check=False)
        for entry in proc.stdout.split(b"\0"):
            if entry:
                key, _, value = entry.partition(b"\n")
                self.git.run("config", "--add", key.decode(), value.decode("utf-8", "surrogateescape"))

    @property
    def fidelity(self) -> list[str]:
        want, got = self.checkpoint.observation["objects"], self.pristine_observation["objects"]
        return [] if want == got else restore_problems(self.git, want, got, "reset")

    def observe(self) -> dict[str, Any]:
        return observe(self.git, f"shadow of {self.target.describe()}", self.remote)

    def changes(self) -> list[Change]:
        self.rehearsed = describe_changes(diff(self.pristine_observation, self.observe()), self.git)
        return self.rehearsed

    def rehearse_rollback(self, undo: bool = False) -> list[str]:
        """Undo the rehearsal with production's own restore (same mode: reset, or revert commits pushed to the
        throwaway remote), then verify the clone as a rollback verifies production."""
        spec: dict[str, Any] = {"path": str(self.work), "rollback": self.target.rollback}
        if self.remote:
            spec["remote"] = self.remote
        from adapters.git.target import GitTarget  # the target module imports this one

        twin = GitTarget(self.name, spec, self.target.settings)
        twin.restore_from(self.checkpoint, self.manifest)
        return twin.verify_restored(self.checkpoint)

    def watch(self, sql_text: str | None = None) -> None:
        """What the action reads is not measured in a clone: its footprint is what it changed
        (:mod:`adapters.git.own_effect`)."""

    def independent(self, changes: list[Change]) -> list[Change]:
        """Production's ref moves (others' pushes) to refs the action did not move in its rehearsal; a change to
        the working copy or HEAD always counts (the working copy is the action's)."""
        ours = set(footprint(self.rehearsed))
        return [c for c in changes if c.kind == "ref" and c.name not in ours]

    def lost(self) -> str | None:
        """A clone on this host's disk has no server to lose; a removed clone is a missing working copy."""
        return None if self.work.is_dir() else f"the shadow's clone {self.work} is gone"

    def attach(self, network: Any) -> Endpoint:
        """An isolated action reaches the clone (and its throwaway remote) mounted at the same paths: nothing on
        the network, so nothing to join."""
        return self.endpoint
