"""Loading a plan: environment interpolation and defaults, every problem with its line, the SQL action's target,
expectation addresses. Pure logic."""

from __future__ import annotations

from pathlib import Path

import pytest

from shadow.errors import BadInput, PlanError
from shadow.plan import load_plan


def test_plan_interpolates_environment_and_defaults(tmp_path: Path):
    (tmp_path / "m.sql").write_text("SELECT 1;")
    plan_file = tmp_path / "p.yaml"
    plan_file.write_text(
        "version: 1\ntargets:\n  db:\n    kind: postgres\n    dsn: ${DB_URL}\n"
        "action:\n  sql: m.sql\n  env: {MODE: '${MODE:-dry}', FLAG: true}\n  timeout: 90s\n"
    )
    plan = load_plan(plan_file, {"DB_URL": "postgresql://u@h/db"})
    assert plan.targets[0].options["dsn"] == "postgresql://u@h/db"
    assert plan.action.env == {"MODE": "dry", "FLAG": "true"}
    assert plan.action.timeout == 90
    assert plan.action.sql_target == "db"
    assert not plan.expect["db"].declared


def test_plan_collects_every_problem_with_lines(tmp_path: Path):
    plan_file = tmp_path / "p.yaml"
    plan_file.write_text("version: 2\ntargets:\n  db: {kind: postgres, dsn: x, colour: red}\naction: {}\nextra: 1\n")
    with pytest.raises(PlanError) as err:
        load_plan(plan_file, {})
    problems = err.value.problems
    assert any("p.yaml:1: version" in p for p in problems)
    assert any("p.yaml:3: targets.db.colour" in p for p in problems)
    assert any("p.yaml:5: extra" in p for p in problems)
    assert any("action" in p for p in problems)


def test_plan_sql_action_needs_target_when_several_postgres_targets(tmp_path: Path):
    (tmp_path / "m.sql").write_text("SELECT 1;")
    plan_file = tmp_path / "p.yaml"
    plan_file.write_text("targets:\n  a: {kind: postgres, dsn: 'host=x'}\n  b: {kind: postgres, dsn: 'host=y'}\n"
                         "action: {sql: m.sql}\n")
    with pytest.raises(PlanError, match="needs `target:`"):
        load_plan(plan_file, {})


def test_plan_accepts_addresses_of_every_postgres_kind(tmp_path: Path):
    (tmp_path / "m.sql").write_text("SELECT 1;")
    addresses = ["add rule public.orders.redirect", "add publication app_pub", "alter statistics public.s1",
                 "drop collation public.c", "add event_trigger e", "alter default_privileges shadow"]
    plan_file = tmp_path / "p.yaml"
    plan_file.write_text("targets:\n  db: {kind: postgres, dsn: 'host=x'}\naction: {sql: m.sql}\n"
                         "expect:\n  db:\n    must: [" + ", ".join(addresses) + "]\n    may: [add gadget public.x]\n")
    with pytest.raises(PlanError) as err:
        load_plan(plan_file, {})
    # the made-up kind is refused (so addresses are checked at all), the real ones are not
    assert len(err.value.problems) == 1
    assert "expect.db.may.0: 'add gadget public.x': unknown kind 'gadget'" in err.value.problems[0]


@pytest.mark.parametrize("written, seconds", [("'off'", None), ("off", None), ("'none'", None), ("10m", 600.0),
                                              ("90", 90.0)])
def test_policy_warm_is_a_duration_or_off(tmp_path: Path, written: str, seconds: float | None):
    """`off` (quoted or not), as SHADOW_WARM and the gateway file spell it, turns warm checkpoints off."""
    (tmp_path / "m.sql").write_text("SELECT 1;")
    plan_file = tmp_path / "p.yaml"
    plan_file.write_text("version: 1\ntargets: {db: {kind: postgres, dsn: 'postgresql://u@h/db'}}\n"
                         f"action: {{sql: m.sql}}\npolicy: {{warm: {written}}}\n")
    assert load_plan(plan_file, {}).policy.warm == seconds


def test_every_kind_points_a_plan_target_elsewhere(tmp_path: Path) -> None:
    """``pytest --shadow-target NAME=ADDRESS`` asks each target's kind what the address replaces
    (``Kind.point_at``); the plan's other settings stay, and the result is valid for the kind."""
    from adapters import REGISTRY
    from shadow.plan import load_plan, with_targets

    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "plan.yaml").write_text(
        "version: 1\n"
        "targets:\n"
        "  app: {kind: postgres, dsn: 'host=127.0.0.1 port=1 dbname=a'}\n"
        "  files: {kind: s3, bucket: first-bucket, prefix: reports/}\n"
        f"  repo: {{kind: git, path: {repo}, remote: origin}}\n"
        "action: {command: 'true'}\n")
    plan = load_plan(tmp_path / "plan.yaml", {})
    assert {t.kind for t in plan.targets} == set(REGISTRY)  # every registered kind is pointed below
    moved = with_targets(plan, {"app": "host=127.0.0.1 port=2 dbname=b", "files": "second-bucket",
                                "repo": "https://example.invalid/shop.git"})
    options = {t.name: t.options for t in moved.targets}
    assert options["app"]["dsn"] == "host=127.0.0.1 port=2 dbname=b"
    assert options["files"] == {"bucket": "second-bucket", "prefix": "reports/"}
    assert options["repo"] == {"url": "https://example.invalid/shop.git"}  # path and remote belong to a working copy
    local = with_targets(plan, {"repo": "other"})
    assert {t.name: t.options for t in local.targets}["repo"] == {"path": str(Path("other").absolute())}
    for t in moved.targets:
        assert not [p for p in REGISTRY[t.kind].validate({**t.options, **({"branch": "main"} if "url" in
                                                                         t.options else {})})], t
    with pytest.raises(BadInput, match="no target named 'nope'"):
        with_targets(plan, {"nope": "x"})
