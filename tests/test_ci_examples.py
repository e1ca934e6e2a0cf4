"""The CI gate examples in examples/ci/ parse, and every `shadow …` command they run exists with those options."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from shadow.cli import cli
from tests.conftest import ROOT

EXAMPLES = ROOT / "examples" / "ci"
GITHUB = EXAMPLES / "github-actions.yml"
GITLAB = EXAMPLES / "gitlab-ci.yml"
# `shadow` as a command word (not `shadow-report.md`), up to a shell operator or a redirection.
COMMAND = re.compile(r"""(?:^|[\s;&|(`])shadow((?:\s+(?:"[^"]*"|'[^']*'|[^\s;&|)<>"']+))+)""")


def _github_scripts(doc: dict[str, Any]) -> dict[str, list[str]]:
    return {name: [step["run"] for step in job["steps"] if "run" in step] for name, job in doc["jobs"].items()}


def _gitlab_scripts(doc: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, job in doc.items():
        if isinstance(job, dict) and ("script" in job or "before_script" in job):
            out[name] = [line for key in ("before_script", "script", "after_script") for line in job.get(key) or []]
    return out


def _shadow_commands(scripts: list[str]) -> list[list[str]]:
    commands = []
    for script in scripts:
        text = script.replace("\\\n", " ")
        for line in text.splitlines():
            for match in COMMAND.finditer(line):
                commands.append(shlex.split(match.group(1)))
    return commands


def _check(argv: list[str]) -> click.Command:
    """Parse ``shadow <argv>`` with the real click tree: an unknown verb, option or choice raises."""
    assert isinstance(cli, click.Group)
    cmd = cli.commands.get(argv[0]) if argv else None
    if cmd is None:
        raise click.UsageError(f"no such command: shadow {' '.join(argv)}")
    with click.Context(cli, info_name="shadow") as parent:
        cmd.make_context(argv[0], list(argv[1:]), parent=parent).close()
    return cmd


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=lambda p: p.name)
def test_every_shadow_command_in_the_ci_examples_exists_with_its_options(path: Path):
    doc = yaml.safe_load(path.read_text())
    scripts = _github_scripts(doc) if path == GITHUB else _gitlab_scripts(doc)
    commands = [argv for job in scripts.values() for argv in _shadow_commands(job)]
    assert len(commands) >= 5
    for argv in commands:
        _check(argv)
    used = {(argv[0], *(a for a in argv if a.startswith("-") or a in ("md", "html", "junit"))) for argv in commands}
    assert ("plan", "-f", "--json") in used and ("apply", "-f", "--json") in used
    assert ("show", "--format", "md", "-o") in used and ("show", "--format", "html", "-o") in used


def test_the_checker_rejects_what_the_cli_does_not_have():
    for argv in (["plan", "--no-such-option"], ["show", "RUN", "--format", "pdf"], ["deploy"]):
        with pytest.raises(click.UsageError):
            _check(argv)


def test_github_workflow_plans_on_pull_requests_comments_uploads_and_applies_after_approval():
    doc = yaml.safe_load(GITHUB.read_text())
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in on and on["push"]["branches"] == ["main"]
    plan, apply = doc["jobs"]["plan"], doc["jobs"]["apply"]
    assert "pull_request" in plan["if"] and "refs/heads/main" in apply["if"]
    assert apply["environment"] == "production"  # required reviewers approve before it runs
    plan_runs = "\n".join(step.get("run", "") for step in plan["steps"])
    assert "gh pr comment" in plan_runs and "--body-file shadow-report.md" in plan_runs
    assert "-o shadow-report.md" in plan_runs and "-o shadow-report.html" in plan_runs
    uploads = [s for s in plan["steps"] + apply["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert len(uploads) == 2 and all("shadow-report.html" in s["with"]["path"] for s in uploads)
    assert all(s.get("if") == "always()" for s in uploads)


def test_gitlab_job_plans_on_merge_requests_comments_uploads_and_applies_after_approval():
    doc = yaml.safe_load(GITLAB.read_text())
    plan, apply = doc["shadow:plan"], doc["shadow:apply"]
    assert plan["rules"][0]["if"] == '$CI_PIPELINE_SOURCE == "merge_request_event"'
    assert apply["rules"][0]["if"] == "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"
    assert apply["rules"][0]["when"] == "manual" and apply["environment"]["name"] == "production"
    script = "\n".join(plan["script"])
    assert "merge_requests/$CI_MERGE_REQUEST_IID/notes" in script and "body@shadow-report.md" in script
    assert "shadow-report.html" in plan["artifacts"]["paths"] and plan["artifacts"]["when"] == "always"
    assert plan["artifacts"]["reports"]["junit"] == "shadow-junit.xml"
    assert "shadow-report.html" in apply["artifacts"]["paths"]
