"""Crash safety of a git target (issue 15 item 6): shadow SIGKILLed at every transition of an apply and of a
rollback — on the GitOps example, a working copy that commits and pushes — then ``shadow recover``. The repository
(working copy and remote) ends at the checkpoint or as rehearsed, never anywhere else, and a second ``recover``
finds nothing left to do."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import run_cli
from tests.gitrepos import Repo, git
from tests.test_git_plan import example


def content(repo: Repo) -> tuple[Any, ...]:
    """What the repository holds, by content (commit ids differ between copies of the example; trees do not): the
    remote branch's tree, the working copy's HEAD tree, its status and every file."""
    state = repo.state()
    return (git(repo.remote, "rev-parse", "main^{tree}"), repo.git("rev-parse", "HEAD^{tree}"), state["status"],
            state["staged"], state["files"])


def fresh(tmp_path: Path, name: str) -> tuple[Path, Repo]:
    folder, repo = example(tmp_path / name)
    return folder / "shadow.yaml", repo


def transitions(plan: Path, *args: str) -> list[str]:
    trace = plan.parent / "trace.txt"
    done = run_cli(*args, state=plan.parent / "traced", cwd=plan.parent, env={"SHADOW_FAULT_TRACE": str(trace)})
    assert done.code == 0, done.text
    return [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]


def killed_then_recovered(plan: Path, point: int, where: str, *args: str) -> None:
    state = plan.parent / "state"
    killed = run_cli(*args, state=state, cwd=plan.parent, env={"SHADOW_FAULT_KILL_AT": str(point)})
    assert killed.code == -signal.SIGKILL, (where, killed.text)
    recovered = run_cli("recover", state=state, cwd=plan.parent)
    assert recovered.code == 0 and "Traceback" not in recovered.err, (where, recovered.text)
    again = run_cli("recover", state=state, cwd=plan.parent)
    assert again.out.startswith("nothing to recover"), (where, again.text)


def test_sigkill_at_every_transition_of_a_git_apply_then_recover(tmp_path: Path,
                                                                evidence: Callable[[str], None]) -> None:
    plan, repo = fresh(tmp_path, "traced")
    checkpoint = content(repo)
    points = transitions(plan, "apply", "-f", str(plan))
    rehearsed = content(repo)
    assert rehearsed != checkpoint and "phase applied" in points
    outcomes = {}
    for point in range(1, len(points) + 1):
        plan, repo = fresh(tmp_path, f"point{point}")
        killed_then_recovered(plan, point, points[point - 1], "apply", "-f", str(plan))
        now = content(repo)
        assert now in (checkpoint, rehearsed), f"killed at {points[point - 1]!r}: the repository is neither"
        outcomes[points[point - 1]] = "checkpoint" if now == checkpoint else "rehearsed"
    evidence(f"covered {len(points)} kill points of a git apply: " +
             ", ".join(f"{p} → {o}" for p, o in outcomes.items()))
    assert set(outcomes.values()) == {"checkpoint", "rehearsed"}


def test_sigkill_at_every_transition_of_a_git_rollback_then_recover(tmp_path: Path,
                                                                   evidence: Callable[[str], None]) -> None:
    def applied(name: str) -> tuple[Path, Repo, str]:
        plan, repo = fresh(tmp_path, name)
        done = run_cli("apply", "-f", str(plan), "--json", state=plan.parent / "state", cwd=plan.parent)
        assert done.code == 0, done.text
        return plan, repo, json.loads(done.out)["run_id"]

    plan, repo = fresh(tmp_path, "checkpoint")
    checkpoint = content(repo)
    plan, repo, run_id = applied("traced")
    after_apply = content(repo)
    trace = plan.parent / "trace.txt"
    done = run_cli("rollback", run_id, "-f", str(plan), state=plan.parent / "state", cwd=plan.parent,
                   env={"SHADOW_FAULT_TRACE": str(trace)})
    assert done.code == 0, done.text
    points = [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]
    assert content(repo) == checkpoint  # a revert: new commits, the checkpoint's content
    outcomes = {}
    for point in range(1, len(points) + 1):
        plan, repo, run_id = applied(f"point{point}")
        killed_then_recovered(plan, point, points[point - 1], "rollback", run_id, "-f", str(plan))
        now = content(repo)
        assert now in (checkpoint, after_apply), f"killed at {points[point - 1]!r}: the repository is neither"
        outcomes[points[point - 1]] = "checkpoint" if now == checkpoint else "applied state"
    evidence(f"covered {len(points)} kill points of a git rollback: " +
             ", ".join(f"{p} → {o}" for p, o in outcomes.items()))
    assert "checkpoint" in outcomes.values()
