"""The git adapter's contract, on real repositories: a working copy and a bare "remote" in temp dirs.

    checkpoint (the working copy untouched) → the shadow built from it is the same working copy (fidelity) →
    production is changed in every way a change can (files, modes, symlinks, renames, binary files, the dirty
    state, commits, pushes, branches, tags) → restore → production observes equal to the checkpoint again;
    in revert mode by new commits on top, in reset mode by moving refs back.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from adapters.git.target import GitTarget
from shadow.errors import BadInput, RestoreFailed, TargetUnreachable
from shadow.settings import Settings
from snapshots import Store
from tests.gitrepos import Repo, git, make_repo

RUN_ID = "20260101-000000-contract"
BINARY = bytes(range(256)) * 40

SEED: dict[str, str | bytes] = {
    **{f"k8s/apps/app-{i:03}/deployment.yaml": f"image: registry/app-{i}:1.0.0\nreplicas: 2\n" for i in range(200)},
    "README.md": "# infra\n",
    "docs/Überblick mit Leerzeichen.md": "Grüße\n",
    "assets/logo.bin": BINARY,
    "scripts/deploy.sh": "#!/bin/sh\necho deploy\n",
    "scripts/old-name.txt": "renamed later\n",
    "doomed.txt": "deleted later\n",
    ".gitignore": "*.log\nsecrets/\n",
}


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    repo = make_repo(tmp_path / "repos", SEED)
    (repo.wc / "scripts/deploy.sh").chmod(0o755)
    (repo.wc / "current").symlink_to("k8s/apps/app-001")
    repo.commit("exec bit and a symlink", push=True)
    repo.git("tag", "v1")
    repo.git("tag", "-a", "v1-annotated", "-m", "release")
    repo.git("push", "-q", "origin", "--tags")
    # The dirty state: staged, unstaged, both, untracked (also in a new folder), deleted but not staged.
    repo.write("README.md", "# infra\nstaged line\n")
    repo.git("add", "README.md")
    repo.write("README.md", "# infra\nstaged line\nunstaged line\n")
    repo.write("k8s/apps/app-002/deployment.yaml", "image: registry/app-2:1.0.1\nreplicas: 2\n")
    repo.write("notes/untracked file.txt", "not added yet\n")
    repo.write("draft.yaml", "kind: Draft\n")
    (repo.wc / "k8s/apps/app-003/deployment.yaml").unlink()
    repo.write("debug.log", "ignored\n")
    repo.write("secrets/token", "ignored too\n")
    return repo


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def target(repo: Repo, tmp_path: Path, rollback: str = "revert", **spec: str) -> GitTarget:
    return GitTarget("infra", {"path": str(repo.wc), "rollback": rollback, **spec},
                     Settings.from_env(state_dir=str(tmp_path / "state")))


def mutate(repo: Repo) -> None:
    """Every kind of change, committed and pushed, plus new dirty state on top."""
    repo.write("k8s/apps/app-010/deployment.yaml", "image: registry/app-10:2.0.0\nreplicas: 3\n")
    repo.write("assets/logo.bin", BINARY[::-1])
    (repo.wc / "doomed.txt").unlink()
    (repo.wc / "scripts/old-name.txt").rename(repo.wc / "scripts/new name.txt")
    (repo.wc / "scripts/deploy.sh").chmod(0o644)
    (repo.wc / "current").unlink()
    (repo.wc / "current").symlink_to("k8s/apps/app-002")
    repo.write("k8s/apps/new/deployment.yaml", "image: registry/new:0.1\n")
    repo.write(".gitignore", "*.log\n")  # secrets/ is no longer ignored ...
    repo.commit("change everything", push=True)
    repo.git("checkout", "-q", "-b", "feature")
    repo.write("feature.txt", "on a branch\n")
    repo.commit("feature work", push=True)
    repo.git("checkout", "-q", "main")
    repo.git("tag", "-d", "v1")
    repo.git("tag", "v2")
    repo.git("push", "-q", "origin", "v2", ":refs/tags/v1")
    repo.write("README.md", "rewritten, unstaged\n")
    repo.write("scratch/new untracked.txt", "new\n")
    repo.write("debug.log", "ignored, changed\n")


def test_checkpoint_leaves_the_working_copy_untouched(repo: Repo, tmp_path: Path, store: Store) -> None:
    before = repo.state()
    index = (repo.wc / ".git/index").read_bytes()

    cp = target(repo, tmp_path).checkpoint(store, RUN_ID)

    assert repo.state() == before
    assert (repo.wc / ".git/index").read_bytes() == index
    assert repo.git("stash", "list") == ""
    kept = repo.git("for-each-ref", "--format=%(refname)", f"refs/shadow/{RUN_ID}/infra")
    assert f"refs/shadow/{RUN_ID}/infra/checkpoint" in kept.splitlines()
    assert f"refs/shadow/{RUN_ID}/infra/remote/refs/tags/v1" in kept.splitlines()
    files = cp.observation["objects"]["file"]
    assert "debug.log" not in files and "secrets/token" not in files
    assert files["notes/untracked file.txt"]["index"] is None
    assert files["k8s/apps/app-003/deployment.yaml"]["blob"] is None
    assert files["scripts/deploy.sh"]["mode"] == "100755" and files["current"]["mode"] == "120000"
    refs = cp.observation["objects"]["ref"]
    assert refs["HEAD"] == "ref: refs/heads/main" and refs["origin:refs/heads/main"] == refs["refs/heads/main"]
    assert cp.meta["copied_bytes"] > 0 and cp.meta["objects"] == len(files)


def test_shadow_is_the_same_working_copy_with_a_throwaway_remote(repo: Repo, tmp_path: Path, store: Store) -> None:
    t = target(repo, tmp_path)
    cp = t.checkpoint(store, RUN_ID)
    prod_status = repo.git("status", "--porcelain=v1", "--untracked-files=all")
    remote_before = git(repo.remote, "for-each-ref")
    mutate(repo)  # the shadow is built from the checkpoint, not from the working copy as it is now
    remote_after = git(repo.remote, "for-each-ref")

    with t.shadow(cp, store, RUN_ID, "local") as sh:
        assert sh.fidelity == [] and sh.changes() == []
        assert git(sh.work, "status", "--porcelain=v1", "--untracked-files=all") == prod_status
        assert (sh.work / "assets/logo.bin").read_bytes() == BINARY
        assert not (sh.work / "debug.log").exists()
        assert sh.endpoint.env["SHADOW_INFRA_WORKTREE"] == str(sh.work) == getattr(sh.endpoint, "workdir")
        assert git(sh.remote_dir, "for-each-ref") == remote_before
        git(sh.work, "commit", "-q", "-am", "in the shadow")
        git(sh.work, "push", "-q")
        addresses = {c.address for c in sh.changes()}
        assert {"move ref refs/heads/main", "move ref origin:refs/heads/main"} <= addresses
    assert git(repo.remote, "for-each-ref") == remote_after  # the real remote never saw the shadow's push
    assert not sh.work.exists()


def test_shadow_changes_have_addresses_commits_and_diffs(repo: Repo, tmp_path: Path, store: Store) -> None:
    t = target(repo, tmp_path)
    cp = t.checkpoint(store, RUN_ID)
    with t.shadow(cp, store, RUN_ID, "local") as sh:
        shadow = Repo(sh.work, sh.remote_dir)
        shadow.write("k8s/apps/app-010/deployment.yaml", "image: registry/app-10:2.0.0\nreplicas: 2\n")
        shadow.write("assets/logo.bin", BINARY[::-1])
        (sh.work / "scripts/old-name.txt").rename(sh.work / "scripts/new name.txt")
        (sh.work / "scripts/deploy.sh").chmod(0o644)
        shadow.commit("bump app-10")
        git(sh.work, "push", "-q")
        changes = {c.address: c.detail for c in sh.changes()}

    modified = changes["modify file k8s/apps/app-010/deployment.yaml"]
    assert "-image: registry/app-10:1.0.0" in modified["content_diff"]
    assert "+image: registry/app-10:2.0.0" in modified["content_diff"]
    assert changes["modify file assets/logo.bin"]["binary"] is True
    assert "content_diff" not in changes["modify file assets/logo.bin"]
    assert changes["modify file scripts/deploy.sh"]["mode"] == {"from": "100755", "to": "100644"}
    assert changes["delete file scripts/old-name.txt"]["renamed_to"] == "scripts/new name.txt"
    assert changes["add file scripts/new name.txt"]["renamed_from"] == "scripts/old-name.txt"
    moved = changes["move ref origin:refs/heads/main"]
    assert [c["subject"] for c in moved["commits"]] == ["bump app-10"] and moved["forced"] is False


@pytest.mark.parametrize("rollback", ["revert", "reset"])
def test_restore_brings_the_working_copy_and_remote_back(repo: Repo, tmp_path: Path, store: Store,
                                                          rollback: str) -> None:
    t = target(repo, tmp_path, rollback)
    before = repo.state()
    cp = t.checkpoint(store, RUN_ID)
    pushed_before = repo.remote_head()
    mutate(repo)
    ours = repo.remote_head()
    (repo.wc / "secrets").mkdir(exist_ok=True)
    assert t.verify_restored(cp) != []

    t.restore(cp, store)

    assert t.verify_restored(cp) == []
    after = repo.state()
    assert after["files"] == {**before["files"], "debug.log": after["files"]["debug.log"]}
    assert (repo.wc / "debug.log").read_text() == "ignored, changed\n"  # ignored files are never touched
    assert (repo.wc / "secrets/token").read_text() == "ignored too\n"  # ignored again once .gitignore is back
    assert after["staged"] == before["staged"] and after["head"] == before["head"]
    assert after["status"] == before["status"]
    tags = git(repo.remote, "tag", "--list")
    assert tags.split() == ["v1", "v1-annotated"]
    assert "refs/heads/feature" not in after["remote"] and "refs/heads/feature" not in after["refs"]
    if rollback == "reset":
        assert {**after, "files": None} == {**before, "files": None}
        assert repo.remote_head() == pushed_before
    else:
        head = repo.remote_head()
        assert git(repo.remote, "rev-parse", f"{head}^") == ours  # a new commit on top: nobody's history rewritten
        assert git(repo.remote, "rev-parse", f"{head}^{{tree}}") == git(repo.remote, "rev-parse",
                                                                        f"{pushed_before}^{{tree}}")
        assert "Revert shadow run" in git(repo.remote, "log", "-1", "--format=%s", head)
        assert repo.git("rev-parse", "main") == head
    # A second restore changes nothing.
    state = repo.state()
    t.restore(cp, store)
    assert repo.state() == state and t.verify_restored(cp) == []


def test_restore_refuses_when_someone_else_pushed(repo: Repo, tmp_path: Path, store: Store) -> None:
    t = target(repo, tmp_path, "reset")
    cp = t.checkpoint(store, RUN_ID)
    repo.write("ours.txt", "ours\n")
    repo.commit("ours", push=True)
    other = tmp_path / "colleague"
    git(tmp_path, "clone", "-q", str(repo.remote), str(other))
    (other / "theirs.txt").write_text("theirs\n")
    git(other, "add", "-A")
    git(other, "commit", "-q", "-m", "theirs")
    git(other, "push", "-q")
    theirs = git(other, "rev-parse", "HEAD")
    state = repo.state()

    with pytest.raises(RestoreFailed) as err:
        t.restore(cp, store)

    assert "someone else pushed" in str(err.value) and theirs[:12] in str(err.value)
    assert repo.remote_head() == theirs and repo.state() == state  # nothing was written anywhere


def test_drift_shows_in_the_fingerprint_when_the_remote_moves(repo: Repo, tmp_path: Path, store: Store) -> None:
    t = target(repo, tmp_path)
    cp = t.checkpoint(store, RUN_ID)
    other = tmp_path / "colleague"
    git(tmp_path, "clone", "-q", str(repo.remote), str(other))
    git(other, "commit", "-q", "--allow-empty", "-m", "theirs")
    git(other, "push", "-q")

    assert t.fingerprint() != cp.fingerprint
    changes = {c.address: c.detail for c in t.changes_since(cp, None)}
    assert list(changes) == ["move ref origin:refs/heads/main"]
    assert changes["move ref origin:refs/heads/main"]["commits"] is None  # never fetched: not ours


def test_an_empty_repository_round_trips(tmp_path: Path, store: Store) -> None:
    wc = tmp_path / "empty"
    git(tmp_path, "init", "-q", "-b", "main", str(wc))
    (wc / "first.txt").write_text("untracked in an empty repo\n")
    repo = Repo(wc, wc)
    t = target(repo, tmp_path, "reset")
    before = repo.state()
    cp = t.checkpoint(store, RUN_ID)
    assert cp.observation["objects"]["ref"] == {"HEAD": "ref: refs/heads/main"}
    with t.shadow(cp, store, RUN_ID, "local") as sh:
        assert sh.fidelity == []
    repo.write("second.txt", "x")
    repo.commit("first commit")
    t.restore(cp, store)
    assert t.verify_restored(cp) == [] and {**repo.state(), "remote": ""} == {**before, "remote": ""}


def test_a_detached_head_is_refused_with_a_clear_message(repo: Repo, tmp_path: Path, store: Store) -> None:
    repo.git("checkout", "-q", "--detach")
    with pytest.raises(BadInput) as err:
        target(repo, tmp_path).checkpoint(store, RUN_ID)
    assert "detached HEAD" in str(err.value) and "check out a branch" in str(err.value)


def test_not_a_working_copy_is_bad_input(tmp_path: Path, store: Store, repo: Repo) -> None:
    for path, words in ((tmp_path / "nope", "does not exist"), (tmp_path, "not a git working copy"),
                        (repo.remote, "bare repository")):
        t = GitTarget("infra", {"path": str(path)}, Settings.from_env(state_dir=str(tmp_path / "state")))
        with pytest.raises(BadInput) as err:
            t.observe()
        assert words in str(err.value) and "'infra'" in str(err.value)


def test_credentials_in_a_remote_url_never_show(repo: Repo, tmp_path: Path, store: Store) -> None:
    from adapters.postgres.cluster import free_port

    url = f"http://deploy-bot:s3cr3t-t0ken@127.0.0.1:{free_port()}/infra.git"
    repo.git("remote", "set-url", "origin", url)
    t = target(repo, tmp_path)
    with pytest.raises(TargetUnreachable) as err:
        t.checkpoint(store, RUN_ID)
    assert "s3cr3t-t0ken" not in str(err.value) and "origin" in str(err.value)
    assert "s3cr3t-t0ken" in t.endpoint().secrets
    url_target = GitTarget("infra", {"url": url, "branch": "main"}, Settings.from_env(state_dir=str(tmp_path / "s")))
    assert "s3cr3t-t0ken" not in url_target.describe()
    with pytest.raises(Exception) as err2:
        url_target.checkpoint(store, RUN_ID)
    assert "s3cr3t-t0ken" not in str(err2.value)


def test_a_url_target_works_on_shadows_own_clone(repo: Repo, tmp_path: Path, store: Store) -> None:
    t = GitTarget("infra", {"url": f"file://{repo.remote}", "branch": "main", "rollback": "reset"},
                  Settings.from_env(state_dir=str(tmp_path / "state")))
    cp = t.checkpoint(store, RUN_ID)
    assert t.path.is_relative_to(tmp_path / "state") and cp.observation["objects"]["ref"]["HEAD"] == \
        "ref: refs/heads/main"
    before = repo.remote_head()
    clone = Repo(t.path, repo.remote)
    clone.write("k8s/apps/app-001/deployment.yaml", "image: registry/app-1:9\n")
    clone.commit("bump", push=True)
    assert repo.remote_head() != before

    t.restore(cp, store)

    assert repo.remote_head() == before and t.verify_restored(cp) == []
