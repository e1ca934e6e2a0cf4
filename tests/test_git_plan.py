"""git targets in whole runs (the real CLI): the GitOps example, unexpected paths, drift, and Postgres with git."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from shadow.changes import Change, matches
from shadow.judge import judge
from shadow.plan import Comparison, Expectation, ObjectRule
from tests.conftest import ROOT, start_cli, write_plan
from tests.gitrepos import Repo, git

EXAMPLE = ROOT / "examples" / "gitops"


def example(tmp_path: Path) -> tuple[Path, Repo]:
    folder = tmp_path / "gitops"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("config-repo", "config-remote.git", ".shadow"))
    subprocess.run([str(folder / "make-config-repo.sh")], check=True, capture_output=True)
    return folder, Repo(folder / "config-repo", folder / "config-remote.git")


def manifest(repo: Repo, env: str, app: str) -> str:
    return (repo.wc / f"k8s/{env}/{app}/deployment.yaml").read_text()


def test_gitops_example_rehearses_applies_and_reverts(tmp_path: Path, shadow_cli) -> None:  # type: ignore[no-untyped-def]
    folder, repo = example(tmp_path)
    before, remote_before = repo.state(), repo.remote_head()

    planned = shadow_cli("plan", "--json", "-f", str(folder / "shadow.yaml"))
    assert planned.code == 0, planned.text
    changes = {c["address"]: c.get("detail", {}) for c in json.loads(planned.out)["targets"][0]["changes"]}
    assert set(changes) == {"modify file k8s/staging/api/deployment.yaml",
                            "modify file k8s/production/api/deployment.yaml",
                            "move ref refs/heads/main", "move ref origin:refs/heads/main"}
    assert "+          image: registry.example.com/shop/api:1.4.2" in \
        changes["modify file k8s/production/api/deployment.yaml"]["content_diff"]
    assert [c["subject"] for c in changes["move ref origin:refs/heads/main"]["commits"]] == ["api: 1.4.2"]
    undo = [v for v in json.loads(planned.out)["expectations"] if v["rule"] == "rollback"]
    assert undo and undo[0]["ok"], "the revert was rehearsed on the shadow's clone and verified"
    assert repo.state() == before and repo.remote_head() == remote_before  # a plan never writes production

    applied = shadow_cli("apply", "--json", "-f", str(folder / "shadow.yaml"))
    assert applied.code == 0, applied.text
    assert "shop/api:1.4.2" in manifest(repo, "production", "api") and "shop/web:1.4.1" in manifest(repo, "production", "web")
    assert git(repo.remote, "log", "-1", "--format=%s", "main") == "api: 1.4.2"

    rolled = shadow_cli("rollback", json.loads(applied.out)["run_id"], "-f", str(folder / "shadow.yaml"))
    assert rolled.code == 0, rolled.text
    assert "shop/api:1.4.1" in manifest(repo, "production", "api")
    assert git(repo.remote, "log", "-2", "--format=%s", "main").splitlines() == [
        f"Revert shadow run {json.loads(applied.out)['run_id']}", "api: 1.4.2"]
    assert git(repo.remote, "rev-parse", "main^{tree}") == git(repo.remote, "rev-parse", f"{remote_before}^{{tree}}")
    assert repo.git("status", "--porcelain") == ""


def test_a_file_outside_the_allowed_paths_fails_the_plan(tmp_path: Path, shadow_cli) -> None:  # type: ignore[no-untyped-def]
    folder, repo = example(tmp_path)
    plan = folder / "shadow.yaml"
    plan.write_text(plan.read_text().replace('&& git commit', '&& echo "edited" >> README.md && git commit'))
    before = repo.state()

    result = shadow_cli("apply", "-f", str(plan))

    assert result.code == 1, result.text
    assert "modify file README.md" in result.out and "unexpected" in result.out
    assert repo.state() == before


def test_files_rules_and_patterns_match_nested_paths() -> None:
    changes = [Change("delete", "file", "k8s/apps/api/old.yaml"), Change("modify", "file", "k8s/apps/api/dep.yaml"),
               Change("add", "file", "docs/Über uns.md")]
    expectation = Expectation(may=("* file k8s/**",), declared=True,
                              files=(ObjectRule("k8s/**", {"deleted": Comparison("==", 0),
                                                           "modified": Comparison("<=", 1)}, 1),))
    verdicts = {(v.rule, v.subject): v for v in judge("config", changes, expectation, None)}
    assert not verdicts[("files", "k8s/** deleted")].ok and verdicts[("files", "k8s/** modified")].ok
    assert not verdicts[("unexpected", "add file docs/Über uns.md")].ok
    assert [k for k, v in verdicts.items() if k[0] == "unexpected"] == [("unexpected", "add file docs/Über uns.md")]
    assert matches("modify file k8s/**/dep.yaml", changes[1]) and not matches("* file k8s/**", changes[2])


def test_apply_refuses_when_someone_pushed_to_the_remote(tmp_path: Path, shadow_cli) -> None:  # type: ignore[no-untyped-def]
    folder, repo = example(tmp_path)
    colleague = tmp_path / "colleague"
    git(tmp_path, "clone", "-q", str(repo.remote), str(colleague))
    plan = folder / "shadow.yaml"
    # While shadow rehearses, a colleague pushes to the real remote (to main, the branch the action pushes):
    # drift on what the action writes, so shadow rehearses again on a fresh checkpoint — where the action's
    # push is rejected (the working copy is behind): refused, nothing applied.
    plan.write_text(plan.read_text().replace(
        "command: >-\n", f"command: >-\n    git -C {colleague} commit -q --allow-empty -m theirs && git -C {colleague} "
                         "push -q &&\n"))
    before = repo.state()

    result = shadow_cli("apply", "-f", str(plan))

    assert result.code == 1, result.text
    assert "drift" in result.out and "nothing was applied" in result.out and "second rehearsal" in result.out
    assert git(repo.remote, "log", "-1", "--format=%s", "main") == "theirs"
    assert {**repo.state(), "remote": None} == {**before, "remote": None}


PG_AND_GIT = """
import os, sys, subprocess
import psycopg

with psycopg.connect(os.environ["SHADOW_APP_URL"], autocommit=True) as conn:
    conn.execute("INSERT INTO audit_log VALUES (now(), 'api 1.4.2 rolled out')")
subprocess.run([sys.executable, os.path.join(os.environ["SHADOW_PLAN_DIR"], "bump_image.py"),
                "registry.example.com/shop/api", "1.4.2"], check=True)
subprocess.run("git commit -q -am 'api: 1.4.2' && git push -q origin HEAD", shell=True, check=True)
if os.environ.get("FAIL_IN_PRODUCTION") and os.getcwd() == os.environ["PROD_WORKTREE"]:
    sys.exit("the deploy hook failed after the push")
"""


def test_postgres_and_git_roll_back_together(tmp_path: Path, shadow_cli, prod_db) -> None:  # type: ignore[no-untyped-def]
    import sys

    folder, repo = example(tmp_path)
    write_plan(folder, f"""
version: 1
targets:
  app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}
  config: {{kind: git, path: ./config-repo, rollback: revert}}
action:
  command: "{sys.executable} $SHADOW_PLAN_DIR/deploy.py"
  env: {{FAIL_IN_PRODUCTION: "1", PROD_WORKTREE: "{repo.wc}"}}
expect:
  app:
    may: [insert rows public.audit_log]
  config:
    may: ["modify file k8s/**", "move ref *main"]
    files:
      "k8s/**": {{modified: 2, added: 0, deleted: 0}}
""", {"deploy.py": PG_AND_GIT}, name="both.yaml")
    pg_before, files_before, remote_before = prod_db.fingerprint(), repo.state()["files"], repo.remote_head()

    result = shadow_cli("apply", "-f", str(folder / "both.yaml"), env={"APP_DATABASE_URL": prod_db.dsn})

    assert result.code == 1, result.text
    assert "ROLLED BACK" in result.out and "deploy hook failed" in result.out
    assert prod_db.fingerprint() == pg_before
    assert repo.state()["files"] == files_before and repo.git("status", "--porcelain") == ""
    head = repo.remote_head()
    assert git(repo.remote, "log", "-1", "--format=%s", f"{head}^") == "api: 1.4.2"  # pushed, then reverted
    assert git(repo.remote, "rev-parse", f"{head}^{{tree}}") == git(repo.remote, "rev-parse", f"{remote_before}^{{tree}}")


def test_bad_git_target_settings_are_reported_with_their_lines(tmp_path: Path, shadow_cli) -> None:  # type: ignore[no-untyped-def]
    write_plan(tmp_path, """
version: 1
targets:
  config:
    kind: git
    path: ./repo
    url: https://example.invalid/repo.git
    rollback: rebase
action: {command: "true"}
""")
    result = shadow_cli("plan")
    assert result.code == 2, result.text
    assert "shadow.yaml:4: targets.config: a git target needs exactly one of `path:`" in result.text
    assert "shadow.yaml:8: targets.config.rollback: 'rebase' is not one of: revert, reset" in result.text
    assert "Traceback" not in result.text


WAIT = """
import os, pathlib, time
pathlib.Path(os.environ["STARTED"]).write_text("x")
deadline = time.time() + 120
while not pathlib.Path(os.environ["RELEASE"]).exists() and time.time() < deadline:
    time.sleep(0.1)
"""


def test_two_state_dirs_cannot_apply_to_one_working_copy_at_once(tmp_path: Path) -> None:
    import os
    import sys
    import time

    _folder, repo = example(tmp_path)
    write_plan(tmp_path, f"""
targets: {{config: {{kind: git, path: "{repo.wc}"}}}}
action:
  command: "{sys.executable} {tmp_path / 'wait.py'}"
  env: {{STARTED: "{tmp_path / 'started'}", RELEASE: "{tmp_path / 'release'}"}}
policy: {{rehearse_rollback: false}}
""", {"wait.py": WAIT})
    def shadow(state: str, *args: str) -> subprocess.Popen[str]:
        return start_cli(*args, state=tmp_path / state, cwd=tmp_path)

    first = shadow("state-a", "apply")
    deadline = time.monotonic() + 90
    while not (tmp_path / "started").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = shadow("state-b", "apply", "--lock-timeout", "0")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 3 and "holds the lock" in err, out + err
    (tmp_path / "release").write_text("go")
    out, err = first.communicate(timeout=180)
    assert first.returncode == 0, out + err
