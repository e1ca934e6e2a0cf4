"""Where a run's time went: every step's seconds (per target) in ``--json``, ``report.json`` (against its schema),
the Markdown and HTML reports and one line of the terminal summary — through the real CLI on a real PostgreSQL.

Nothing here asserts how long anything took: only that each step is there, named, non-negative, and that the
steps add up to no more than the run's wall time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema

from shadow import reports
from shadow.result import timing
from tests.conftest import ProdDb, write_plan

SQL = """
SET lock_timeout = '5s';
ALTER TABLE users ADD COLUMN email_verified boolean NOT NULL DEFAULT false;
UPDATE users SET email_verified = true WHERE id % 3 = 0;
"""

PLAN = """
version: 1
targets:
  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}
action:
  sql: migrations/0042_add_email_verified.sql
expect:
  app:
    must: [add column public.users.email_verified]
    may: [update rows public.users]
"""

PER_TARGET_OF_A_PLAN = ("checkpoint", "shadow", "fidelity check", "observe", "judge", "rehearse rollback",
                        "shadow teardown")


def _env(db: ProdDb) -> dict[str, str]:
    return {"APP_DATABASE_URL": db.dsn}


def _validates(model: dict[str, Any]) -> None:
    schema = reports.json_schema()
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    assert [e.message for e in validator.iter_errors(model)] == []


def _adds_up(model: dict[str, Any]) -> dict[tuple[str, str | None], dict[str, Any]]:
    """The run's ``timing``, checked against its steps and its wall time; by (step, target)."""
    timing = model["timing"]
    total = timing["total_seconds"]
    assert isinstance(total, (int, float)) and total >= 0
    by_step = {(s["step"], s["target"]): s for s in timing["by_step"]}
    assert len(by_step) == len(timing["by_step"]), "each step (per target) once"
    assert set(by_step) == {(s["step"], s["target"]) for s in model["steps"]}
    for s in timing["by_step"]:
        assert isinstance(s["seconds"], (int, float)) and s["seconds"] >= 0, s
        assert 0 <= s["share"] <= 1, s
    in_steps = sum(s["seconds"] for s in timing["by_step"])
    assert abs(timing["in_steps_seconds"] - in_steps) < 0.01
    assert in_steps <= total + 0.01, "steps run one after another: together never longer than the run"
    assert abs(timing["outside_steps_seconds"] - (total - timing["in_steps_seconds"])) < 0.01
    return by_step


def test_plan_json_and_its_reports_say_where_the_time_went(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, PLAN, {"migrations/0042_add_email_verified.sql": SQL})
    r = shadow_cli("plan", "--json", env=_env(prod_db))
    assert r.code == 0, r.text
    model = json.loads(r.out)
    _validates(model)
    by_step = _adds_up(model)
    for step in PER_TARGET_OF_A_PLAN:  # the per-target steps name their target
        assert (step, "app") in by_step, (step, sorted(by_step, key=str))
    assert ("rehearse", None) in by_step  # the action runs once for the whole run

    stored = Path(model["report_dir"])
    assert json.loads((stored / "report.json").read_text())["timing"] == model["timing"]
    md = (stored / "report.md").read_text()
    assert "## Where the time went" in md
    table = md.split("## Where the time went", 1)[1].split("\n## ", 1)[0]
    assert "| step | target | seconds | share |" in table
    for step in PER_TARGET_OF_A_PLAN:
        assert re.search(rf"^\| {step} \| app \| \d+\.\d\d \| (\d+|<1) % \|$", table, re.M), (step, table)
    assert re.search(r"^\| rehearse \|  \| \d+\.\d\d \| (\d+|<1) % \|$", table, re.M), table
    assert re.search(r"^\d[\d,]*\.\d\d s in all: \d[\d,]*\.\d\d s in the steps below", table, re.M), table

    html = (stored / "report.html").read_text()
    section = html.split('<section id="time">', 1)[1].split("</section>", 1)[0]
    assert "<h2>Where the time went</h2>" in section
    for step in PER_TARGET_OF_A_PLAN:
        assert re.search(rf"<tr><td>{step}</td><td>app</td><td class=\"num\">\d+\.\d\d</td>"
                         rf"<td class=\"num\">(\d+|&lt;1) %</td>", section), (step, section)
    assert re.search(r'<tr><th colspan="2">total</th><td class="num">\d+\.\d\d</td>', section), section


def test_apply_prints_one_time_line_and_a_rollback_times_its_steps(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, PLAN, {"migrations/0042_add_email_verified.sql": SQL})
    applied = shadow_cli("apply", env=_env(prod_db))
    assert applied.code == 0, applied.text
    lines = [line for line in applied.out.splitlines() if line.startswith("time: ")]
    assert len(lines) == 1, applied.out
    assert re.fullmatch(r"time: checkpoint \d+\.\d s · shadow \d+\.\d s · .* · apply \d+\.\d s · .*"
                        r"· other \d+\.\d s · total \d+\.\d s", lines[0]), lines[0]
    run_id = re.search(r"^run (\S+) · report:", applied.out, re.M)
    assert run_id, applied.out
    model = json.loads((shadow_cli.state_dir / "runs" / run_id[1] / "report.json").read_text())
    _validates(model)
    by_step = _adds_up(model)
    for step in ("drift check", "apply", "record applied"):  # one transaction: the apply is the target's own
        assert (step, "app") in by_step, (step, sorted(by_step, key=str))

    rolled = shadow_cli("rollback", run_id[1], "--json", env=_env(prod_db))
    assert rolled.code == 0, rolled.text
    back = json.loads(rolled.out)
    _validates(back)
    assert any(target == "app" for _step, target in _adds_up(back)), back["timing"]


def test_a_step_run_twice_is_one_row_with_its_seconds_summed_and_a_running_run_has_no_share():
    steps = [{"step": "checkpoint", "target": "app", "seconds": 1.25, "state": "done"},
             {"step": "rehearse", "target": None, "seconds": 0.5, "state": "done"},
             {"step": "checkpoint", "target": "app", "seconds": 0.75, "state": "done"},  # a second rehearsal
             {"step": "checkpoint", "target": "files", "seconds": 0.5, "state": "done"}]
    done = timing(steps, 4.0)
    assert done["by_step"] == [{"step": "checkpoint", "target": "app", "seconds": 2.0, "share": 0.5},
                               {"step": "rehearse", "target": None, "seconds": 0.5, "share": 0.125},
                               {"step": "checkpoint", "target": "files", "seconds": 0.5, "share": 0.125}]
    assert (done["in_steps_seconds"], done["outside_steps_seconds"]) == (3.0, 1.0)
    assert reports.time_line({"timing": done}) == "time: checkpoint 2.5 s · rehearse 0.5 s · other 1.0 s · total 4.0 s"

    running = timing(steps, None)
    assert running["total_seconds"] is None and running["outside_steps_seconds"] is None
    assert {s["share"] for s in running["by_step"]} == {None}
    assert reports.time_line({"timing": running}) == "time: checkpoint 2.5 s · rehearse 0.5 s"
