"""Production never stands still, on git (issue 15, item 7): apply and roll back while a colleague keeps pushing to
another branch of the same remote.

Drift is judged on the refs the action moved in its rehearsal, verification on the action's own refs (and the
trees they hold), and undo moves back only the refs the run moved — never a branch someone else pushed since.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.conftest import ROOT
from tests.gitrepos import Repo, git

EXAMPLE = ROOT / "examples" / "gitops"


def example(tmp_path: Path, fail: bool = False) -> tuple[Path, Repo]:
    folder = tmp_path / "gitops"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("config-repo", "config-remote.git", ".shadow"))
    subprocess.run([str(folder / "make-config-repo.sh")], check=True, capture_output=True)
    if fail:  # the deploy hook fails after the push, in production only
        plan = folder / "shadow.yaml"
        plan.write_text(plan.read_text().replace(
            "&& git push -q origin HEAD",
            f'&& git push -q origin HEAD && test "$PWD" != "{folder / "config-repo"}"'))
    return folder, Repo(folder / "config-repo", folder / "config-remote.git")


class Pusher:
    """A colleague committing and pushing to their own branch of the remote, over and over; ``pushed`` is the
    last commit the remote accepted."""

    def __init__(self, remote: Path, folder: Path, branch: str = "colleague") -> None:
        self.clone, self.branch = folder, branch
        git(folder.parent, "clone", "-q", str(remote), str(folder))
        self.pushed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            (self.clone / "notes.txt").write_text(f"note {n}\n")
            git(self.clone, "add", "-A")
            git(self.clone, "commit", "-q", "-m", f"colleague {n}")
            sha = git(self.clone, "rev-parse", "HEAD")
            try:
                git(self.clone, "push", "-q", "origin", f"HEAD:refs/heads/{self.branch}")
            except AssertionError:
                continue
            self.pushed.append(sha)
            self._stop.wait(0.1)

    def __enter__(self) -> Pusher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def assert_kept(self, remote: Path) -> None:
        assert self.pushed, "the colleague pushed nothing: the test proves nothing"
        assert git(remote, "rev-parse", f"refs/heads/{self.branch}") == self.pushed[-1]


def _target(report: dict[str, Any]) -> dict[str, Any]:
    return dict(report["targets"][0])


def test_apply_and_rollback_keep_a_colleagues_pushes_to_another_branch(tmp_path: Path, shadow_cli) -> None:  # type: ignore[no-untyped-def]
    folder, repo = example(tmp_path)
    plan = str(folder / "shadow.yaml")
    start = repo.remote_head()
    with Pusher(repo.remote, tmp_path / "colleague") as colleague:
        applied = shadow_cli("apply", "--json", "-f", plan)
        assert applied.code == 0, applied.text
        report = json.loads(applied.out)
        assert report["outcome"] == "applied", report["reason"]
        moved = {c["address"] for c in _target(report)["production_changes"] if c["kind"] == "ref"}
        assert moved == {"move ref refs/heads/main", "move ref origin:refs/heads/main"}, \
            "the colleague's branch is not the action's change"
        assert any("origin:refs/heads/colleague" in w for w in _target(report)["warnings"])
        rolled = shadow_cli("rollback", report["run_id"], "--json", "-f", plan)
        colleague.stop()
    assert rolled.code == 0, rolled.text
    back = json.loads(rolled.out)
    assert back["outcome"] == "restored" and _target(back)["restore"]["mode"] == "undo", back["reason"]
    assert git(repo.remote, "rev-parse", "main^{tree}") == git(repo.remote, "rev-parse", f"{start}^{{tree}}")
    assert git(repo.remote, "log", "-1", "--format=%s", "main") == f"Revert shadow run {report['run_id']}"
    colleague.assert_kept(repo.remote)
    assert repo.git("status", "--porcelain") == ""


def test_a_push_on_top_of_the_runs_commit_is_a_conflict_unless_forced(tmp_path: Path, shadow_cli) -> None:  # type: ignore[no-untyped-def]
    folder, repo = example(tmp_path)
    plan = str(folder / "shadow.yaml")
    start = repo.remote_head()
    applied = shadow_cli("apply", "--json", "-f", plan)
    assert applied.code == 0, applied.text
    run = json.loads(applied.out)["run_id"]
    colleague = tmp_path / "colleague"
    git(tmp_path, "clone", "-q", str(repo.remote), str(colleague))
    git(colleague, "commit", "-q", "--allow-empty", "-m", "theirs, on top")
    git(colleague, "push", "-q", "origin", "HEAD")
    theirs = git(colleague, "rev-parse", "HEAD")
    refused = shadow_cli("rollback", run, "--json", "-f", plan)
    assert refused.code != 0
    assert "origin:refs/heads/main" in json.loads(refused.out)["reason"]
    assert repo.remote_head() == theirs, "a refused rollback leaves the remote untouched"
    forced = shadow_cli("rollback", run, "--force", "--json", "-f", plan)
    assert forced.code == 0, forced.text
    assert any("overwrote" in w for w in _target(json.loads(forced.out))["warnings"])
    assert git(repo.remote, "rev-parse", "main^{tree}") == git(repo.remote, "rev-parse", f"{start}^{{tree}}")
    assert git(repo.remote, "merge-base", "--is-ancestor", theirs, "main") == "", "their commit stays in history"


def test_a_failure_in_production_undoes_only_the_runs_own_refs(tmp_path: Path, shadow_cli) -> None:  # type: ignore[no-untyped-def]
    folder, repo = example(tmp_path, fail=True)
    start = repo.remote_head()
    with Pusher(repo.remote, tmp_path / "colleague") as colleague:
        failed = shadow_cli("apply", "--json", "-f", str(folder / "shadow.yaml"))
        colleague.stop()
    report = json.loads(failed.out)
    assert report["outcome"] == "rolled_back", report["reason"]
    assert "undid run" in report["reason"]
    assert git(repo.remote, "rev-parse", "main^{tree}") == git(repo.remote, "rev-parse", f"{start}^{{tree}}")
    colleague.assert_kept(repo.remote)
    assert repo.git("status", "--porcelain") == ""


def test_reset_mode_moves_back_only_the_runs_refs(tmp_path: Path, shadow_cli) -> None:  # type: ignore[no-untyped-def]
    """``rollback: reset``: the run's branch goes back exactly (a leased force push), the colleague's stays."""
    folder, repo = example(tmp_path)
    plan = folder / "shadow.yaml"
    plan.write_text(plan.read_text().replace("rollback: revert ", "rollback: reset  "))
    assert "rollback: reset" in plan.read_text()
    start = repo.remote_head()
    with Pusher(repo.remote, tmp_path / "colleague") as colleague:
        applied = shadow_cli("apply", "--json", "-f", str(plan))
        assert applied.code == 0, applied.text
        rolled = shadow_cli("rollback", json.loads(applied.out)["run_id"], "--json", "-f", str(plan))
        colleague.stop()
    assert rolled.code == 0, rolled.text
    assert repo.remote_head() == start and repo.git("rev-parse", "main") == start
    colleague.assert_kept(repo.remote)
    assert repo.git("status", "--porcelain") == ""
