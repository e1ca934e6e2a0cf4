"""Every refusal speaks in change addresses (issue 13, item 7): what a restore or an undo could not put back is
named as the change set names it (``add file b.txt``, ``move ref refs/heads/main``, ``modify object
<bucket>/<key>``), never as the diff library's internals (``dictionary item added: root['file']['b.txt']``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.git.target import GitTarget
from shadow.settings import Settings
from snapshots import Store, open_store
from tests.gitrepos import Repo, make_repo
from tests.kinds import BUILDERS

RUN_ID = "20261204-000000-refuse"


def assert_in_addresses(problems: list[str]) -> None:
    assert problems, "nothing was found to differ: the test proves nothing"
    assert not any("root[" in p or "dictionary item" in p or "values changed" in p for p in problems), problems


# -- git ------------------------------------------------------------------------------------------------------

def git_target(repo: Repo, tmp_path: Path, rollback: str) -> GitTarget:
    return GitTarget("infra", {"path": str(repo.wc), "rollback": rollback},
                     Settings.from_env(state_dir=str(tmp_path / "state")))


def _writer_of(target: GitTarget, repo: Repo, path: str) -> Callable[[], dict[str, Any]]:
    """The target's observe, with a tool that keeps writing ``path`` into the working copy (a build that
    regenerates it): whatever a restore removes is back when production is next observed."""
    observe = target.observe

    def observe_after_writing() -> dict[str, Any]:
        repo.write(path, "written again\n")
        return observe()

    return observe_after_writing


@pytest.mark.parametrize("rollback", ["revert", "reset"])
def test_an_undo_that_does_not_verify_names_the_files_it_could_not_put_back(
        rollback: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo(tmp_path / "repos", {"a.txt": "a\n"})
    target = git_target(repo, tmp_path, rollback)
    checkpoint = target.checkpoint(open_store(target.settings), RUN_ID)
    before = target.before_action(checkpoint, None)
    repo.write("a.txt", "changed by the run\n")
    repo.commit("the run's change", push=True)
    record = target.own_effect(before, checkpoint, strict=True)[2]
    monkeypatch.setattr(target, "observe", _writer_of(target, repo, "b.txt"))

    conflicts, done, problems = target.undo(record, checkpoint, force=False)

    assert conflicts == [] and (repo.wc / "a.txt").read_text() == "a\n", "the run's own change was undone"
    assert_in_addresses(problems)
    assert problems == ["add file b.txt"]


def test_a_git_restore_that_does_not_verify_names_files_and_refs(request: pytest.FixtureRequest,
                                                                  tmp_path: Path) -> None:
    with BUILDERS["git"].build(request, tmp_path) as case:
        checkpoint = case.target.checkpoint(Store(tmp_path / "store"), RUN_ID)
        case.mutate(case.target.endpoint())

        problems = case.target.verify_restored(checkpoint)

    assert_in_addresses(problems)
    assert case.changed <= set(problems), problems  # `move ref refs/heads/main`, `add file docs/…`, …


def test_a_long_list_of_differences_is_cut_and_counted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repos", {"a.txt": "a\n"})
    target = git_target(repo, tmp_path, "reset")
    checkpoint = target.checkpoint(Store(tmp_path / "store"), RUN_ID)
    for n in range(30):
        repo.write(f"new-{n:02}.txt", f"{n}\n")

    problems = target.verify_restored(checkpoint)

    assert_in_addresses(problems)
    assert problems == [f"add file new-{n:02}.txt" for n in range(20)] + ["… and 10 more"]


# -- s3 -------------------------------------------------------------------------------------------------------

def test_an_s3_restore_that_does_not_verify_names_the_objects(request: pytest.FixtureRequest,
                                                              tmp_path: Path) -> None:
    with BUILDERS["s3"].build(request, tmp_path) as case:
        checkpoint = case.target.checkpoint(Store(tmp_path / "store"), RUN_ID)
        case.mutate(case.target.endpoint())

        problems = case.target.verify_restored(checkpoint)

    assert_in_addresses(problems)
    assert set(problems) == case.changed  # `modify object <bucket>/data/a.json`, `add object …`, `delete object …`


# -- postgres: what a change set leaves out ------------------------------------------------------------------

def test_a_postgres_difference_no_change_set_shows_is_still_named_by_address(empty_db: Any, tmp_path: Path) -> None:
    """A column's position is left out of change sets (it shifts when an earlier column is dropped); when it is
    all that differs, the restore check still names the columns."""
    empty_db.execute("CREATE TABLE ordered (a int, b int)")
    target = empty_db.target()
    checkpoint = target.checkpoint(Store(tmp_path / "store"), RUN_ID)
    empty_db.execute("ALTER TABLE ordered DROP COLUMN a; ALTER TABLE ordered ADD COLUMN a int")
    assert target.changes_since(checkpoint, None) == [], "the position is not in a change set: nothing to fall back on"

    problems = target.verify_restored(checkpoint)

    assert_in_addresses(problems)
    assert problems == ["alter column public.ordered.a — position", "alter column public.ordered.b — position"]


# -- a shadow that is not faithful ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["s3", "git"])
def test_an_unfaithful_shadow_is_named_by_address(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The fidelity check says how a shadow differs from its checkpoint in the same addresses (here: a shadow
    changed after it was built, and observed again as its pristine state)."""
    with BUILDERS[kind].build(request, tmp_path) as case:
        store = Store(tmp_path / "store")
        checkpoint = case.target.checkpoint(store, RUN_ID)
        with case.target.shadow(checkpoint, store, RUN_ID, "local") as shadow:
            assert shadow.fidelity == []
            case.mutate(shadow.endpoint)
            shadow.pristine_observation = shadow.observe()

            problems = shadow.fidelity

    assert_in_addresses(problems)
    assert problems and all(line.split(" ")[0] in ("add", "delete", "modify", "move", "alter") for line in problems)
