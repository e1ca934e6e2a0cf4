"""One mistake in a plan is reported once, at its root: a misspelt target kind does not also make the target's
expectations and the action's target "unknown"; an unset ${VAR} does not also make the value it left empty invalid.
The real CLI, no services (the plan is refused before anything is contacted)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CliResult, run_cli, write_plan


def shadow_plan(folder: Path) -> CliResult:
    return run_cli("plan", state=folder / "state", cwd=folder, backend=None, drop=("APP_DATABASE_URL",), timeout=120)


def test_a_misspelt_target_kind_is_the_only_problem_reported(tmp_path: Path) -> None:
    write_plan(tmp_path, "version: 1\ntargets:\n  app:\n    kind: postgress\n    dsn: postgresql://x@127.0.0.1/db\n"
               "  repo:\n    kind: git\n    path: .\naction:\n  sql: m.sql\n  target: app\n"
               "expect:\n  app:\n    must: [add column public.users.x]\n", {"m.sql": "SELECT 1;\n"})
    result = shadow_plan(tmp_path)
    assert result.code == 2, result.err
    assert result.err.strip() == ("shadow: error: shadow.yaml:4: targets.app.kind: unknown target kind "
                                     "'postgress' — did you mean 'postgres'?")


def test_an_unset_variable_is_the_only_problem_reported_for_the_value_it_left_empty(tmp_path: Path) -> None:
    write_plan(tmp_path, "version: 1\ntargets:\n  app:\n    kind: postgres\n    dsn: ${APP_DATABASE_URL}\n"
               "action:\n  sql: m.sql\n", {"m.sql": "SELECT 1;\n"})
    result = shadow_plan(tmp_path)
    assert result.code == 2, result.err
    assert result.err.strip() == ("shadow: error: shadow.yaml:5: targets.app.dsn: environment variable "
                                     "APP_DATABASE_URL is not set")


def test_two_unset_variables_in_one_value_are_both_named_and_other_problems_still_reported(tmp_path: Path) -> None:
    write_plan(tmp_path, "version: 1\ntargets:\n  app:\n    kind: postgres\n    dsn: postgresql://${NO_USER_X}@"
               "${NO_HOST_X}/db\naction:\n  sql: m.sql\n  timeout: soon\n", {"m.sql": "SELECT 1;\n"})
    result = shadow_plan(tmp_path)
    assert result.code == 2
    assert "3 problems" in result.err and "NO_USER_X is not set" in result.err
    assert "NO_HOST_X is not set" in result.err and "action.timeout" in result.err
