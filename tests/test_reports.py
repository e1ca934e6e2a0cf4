"""Report formats from one real failed run: Markdown for pull requests, JUnit XML for CI, JSON against its schema.

The run is real (the demo shop on a real PostgreSQL, rehearsed on a local shadow): schema changes, row changes, a
failed expectation and static findings of every kind. The huge-report cases grow that run's model synthetically.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
from markdown_it import MarkdownIt

from adapters.postgres.cluster import LocalCluster
from shadow import reports, run
from shadow.reports import markdown
from shadow.result import FORMAT_VERSION
from shadow.settings import Settings
from tests.conftest import DEMO_SCHEMA, write_plan

SQL = """
SET lock_timeout = '5s';
ALTER TABLE users ADD COLUMN email_verified boolean NOT NULL DEFAULT false;
UPDATE users SET email_verified = true WHERE id % 3 = 0;
UPDATE audit_log SET message = message || ' <b>&"quoted"</b>';
CREATE INDEX users_full_name_idx ON users (full_name);
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
    may: [update rows public.users, add index public.*]
    checks:
      - sql: select count(*) from public.users where email_verified
        equals: 5
policy:
  backend: local
  allow: [create-index-blocking]
"""


@dataclass
class Run:
    settings: Settings
    run_id: str
    model: dict[str, Any]  # as stored in runs/<id>/report.json


@pytest.fixture(scope="module")
def failed_run(pg_server: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One real `shadow plan` (through the library verb) that fails: rendered by every test in this module."""
    folder = tmp_path_factory.mktemp("reports")
    name = "prod_" + uuid.uuid4().hex[:10]
    dsn = pg_server.create_database(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(DEMO_SCHEMA.read_text())
        write_plan(folder, PLAN, {"migrations/0042_add_email_verified.sql": SQL})
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
        settings = Settings.from_env({**env, "APP_DATABASE_URL": dsn}, state_dir=folder / "state")
        result = run.plan(folder / "shadow.yaml", settings)
        stored = json.loads((settings.runs_dir / result.run_id / "report.json").read_text())
        yield Run(settings, result.run_id, stored)
    finally:
        with pg_server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_real_run_has_schema_changes_row_changes_a_failed_expectation_and_findings(failed_run):
    m = failed_run.model
    assert m["outcome"] == "failed" and m["exit_code"] == 1
    addresses = [c["address"] for c in m["targets"][0]["changes"]]
    assert "add column public.users.email_verified" in addresses and "add index public.users_full_name_idx" in addresses
    assert "update rows public.users" in addresses and "insert rows public.audit_log" in addresses
    assert any(v["rule"] == "check" and not v["ok"] for v in m["expectations"])
    assert {(f["severity"], f["allowed"]) for f in m["findings"]} >= {("error", False), ("warning", False),
                                                                       ("warning", True)}


# --- JSON ---------------------------------------------------------------------------------------------------------


def _validator() -> jsonschema.Draft202012Validator:
    schema = reports.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_json_schema_is_shipped_in_the_package_and_is_draft_2020_12():
    schema = reports.json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["format_version"]["const"] == FORMAT_VERSION == 1
    assert Path(reports.__file__).parent.joinpath(reports.SCHEMA).is_file()
    assert '"shadow.reports" = ["schema/*.json"]' in (Path(__file__).parent.parent / "pyproject.toml").read_text()


def test_json_report_of_a_real_run_validates_against_the_schema(failed_run):
    validator = _validator()
    assert list(validator.iter_errors(failed_run.model)) == []
    shown = json.loads(run.show(failed_run.run_id, failed_run.settings, "json"))
    assert shown == failed_run.model
    assert list(validator.iter_errors(shown)) == []


def test_json_schema_allows_unknown_keys_but_rejects_a_broken_report(failed_run):
    validator = _validator()
    newer = copy.deepcopy(failed_run.model)
    newer["added_in_a_later_release"] = {"anything": [1, 2]}
    newer["targets"][0]["changes"][0]["new_field"] = True
    newer["expectations"][0]["severity_hint"] = "x"
    assert list(validator.iter_errors(newer)) == []

    broken = copy.deepcopy(failed_run.model)
    del broken["outcome"]
    broken["expectations"][0]["ok"] = "yes"
    broken["format_version"] = 2
    errors = {"/".join(map(str, e.absolute_path)) or e.validator for e in validator.iter_errors(broken)}
    assert errors == {"required", "expectations/0/ok", "format_version"}


# --- JUnit --------------------------------------------------------------------------------------------------------


def test_junit_has_one_case_per_expectation_and_finding_and_failures_carry_the_message(failed_run):
    m = failed_run.model
    root = ET.fromstring(reports.render(m, "junit"))
    suites = root.findall("testsuite")
    assert len(suites) == 1 and failed_run.run_id in suites[0].get("name", "")
    cases = suites[0].findall("testcase")
    assert len(cases) == len(m["expectations"]) + len(m["findings"])
    by_name = {c.get("name"): c for c in cases}

    check = by_name["check select count(*) from public.users where email_verified"]
    assert check.get("classname") == "expectations.app"
    failure = check.find("failure")
    assert failure is not None and failure.get("message") == "returned 166, expected 5"
    assert by_name["must add column public.users.email_verified"].find("failure") is None

    error = by_name["update-without-where at migrations/0042_add_email_verified.sql:5"]
    failure = error.find("failure")
    assert failure is not None and failure.get("message") == "UPDATE audit_log without WHERE rewrites every row"
    assert '<b>&"quoted"</b>' in (failure.text or "")  # the statement, unescaped again by the parser
    allowed = by_name["create-index-blocking at migrations/0042_add_email_verified.sql:6"]
    assert allowed.find("failure") is None and "allowed" in (allowed.findtext("system-out") or "")
    warning = by_name["no-statement-timeout at migrations/0042_add_email_verified.sql:3"]
    assert warning.find("failure") is None and "statement_timeout" in (warning.findtext("system-out") or "")

    failed = sum(1 for c in cases if c.find("failure") is not None)
    assert failed == sum(not v["ok"] for v in m["expectations"]) + 1
    assert suites[0].get("tests") == str(len(cases)) and suites[0].get("failures") == str(failed)


def test_junit_escapes_markup_and_characters_xml_cannot_hold(failed_run):
    m = copy.deepcopy(failed_run.model)
    nasty = 'a <tag attr="x"> & ]]> \x00\x1b\x7f \ud800 \uffff ok'
    m["expectations"][0].update(subject=nasty, message=nasty, ok=False)
    m["findings"][0]["message"] = nasty
    m["reason"] = nasty
    root = ET.fromstring(reports.render(m, "junit").encode("utf-8"))
    case = root.find("testsuite/testcase")
    assert case is not None
    failure = case.find("failure")
    assert failure is not None
    for text in (case.get("name", ""), failure.get("message", ""), failure.text or ""):
        assert 'a <tag attr="x"> & ]]> \\x00\\x1B\x7f \\xD800 \\xFFFF ok' in text


def test_junit_fails_a_run_that_failed_without_a_failing_expectation(failed_run):
    m = copy.deepcopy(failed_run.model)
    m.update(outcome="refused", exit_code=1, reason="production 'app' changed since the checkpoint (drift)",
             findings=[], expectations=[v for v in m["expectations"] if v["ok"]])
    suite = ET.fromstring(reports.render(m, "junit")).find("testsuite")
    assert suite is not None
    outcome = [c for c in suite.findall("testcase") if c.get("name") == "run outcome"]
    failure = outcome[0].find("failure") if len(outcome) == 1 else None
    assert failure is not None and "drift" in failure.get("message", "")
    assert suite.get("failures") == "1"
    passed = copy.deepcopy(m)
    passed.update(outcome="passed", exit_code=0, reason="")
    assert ET.fromstring(reports.render(passed, "junit")).findall("testsuite")[0].get("failures") == "0"


def test_show_writes_junit_to_a_file_through_the_cli(failed_run, shadow_cli, tmp_path):
    runs = shadow_cli.state_dir / "runs"
    shutil.copytree(failed_run.settings.runs_dir / failed_run.run_id, runs / failed_run.run_id)
    r = shadow_cli("show", failed_run.run_id, "--format", "junit", "-o", "out.xml")
    assert r.code == 0, r.text
    assert r.out == "" and "out.xml" in r.err
    suite = ET.parse(tmp_path / "out.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == str(
        sum(not v["ok"] for v in failed_run.model["expectations"]) + 1)

    printed = shadow_cli("show", failed_run.run_id, "--format", "junit")
    assert printed.code == 0 and printed.out == (tmp_path / "out.xml").read_text()
    md = shadow_cli("show", failed_run.run_id, "--output", str(tmp_path / "pr" / "comment.md"))
    assert md.code == 0 and (tmp_path / "pr" / "comment.md").read_text().startswith("# shadow plan")
    (tmp_path / "a-file").write_text("")
    bad = shadow_cli("show", failed_run.run_id, "--format", "json", "-o", str(tmp_path / "a-file" / "report.json"))
    assert bad.code == 2 and "cannot write the report" in bad.err, bad.text


# --- Markdown -----------------------------------------------------------------------------------------------------


def test_markdown_of_the_real_run_keeps_its_sections_and_collapses_the_lock_trace(failed_run):
    md = reports.render(failed_run.model, "md")
    for heading in ("# shadow plan — run", "## Expectations", "## Static findings", "## Target `app` (postgres)",
                    "### Changes in the rehearsal", "## Lock trace (rehearsal)", "## Steps"):
        assert heading in md
    assert ("| ❌ | app | check | `select count(*) from public.users where email_verified` "
            "| returned 166, expected 5 |") in md
    assert "- `update rows public.users` — 500 row(s)" in md
    assert "<details>\n<summary>5 statements, 8 rows</summary>" in md and "ACCESS EXCLUSIVE" in md
    assert "… and" not in md  # nothing left out of a small report
    _assert_well_formed(md)
    assert (failed_run.settings.runs_dir / failed_run.run_id / "report.md").read_text() == md


def _walk(changes: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for c in changes:
        yield c
        yield from _walk(c.get("implied") or [])


def _huge(m: dict[str, Any], n: int = 50_000) -> dict[str, Any]:
    """The real model with ``n`` more changes (some implying nested ones), as many failed expectations, and long
    lock trace, divergence and step lists."""
    big = copy.deepcopy(m)
    target = big["targets"][0]
    for i in range(n):
        key = f"assets/invoices/{i % 9000:04}/{i:05}.json"
        implied = [{"address": f"add column public.t{i}.c{j}", "op": "add", "kind": "column",
                    "name": f"public.t{i}.c{j}", "implied": [{"address": f"add index public.t{i}_c{j}_idx", "op": "add",
                                                              "kind": "index", "name": f"public.t{i}_c{j}_idx"}]}
                   for j in range(i % 17)]
        target["changes"].append({"address": f"modify object {key}", "op": "modify", "kind": "object", "name": key,
                                  "detail": {"content_diff": [f"total: 10 → {i} | <b>{'x' * (i % 700)}"]},
                                  "implied": implied})
        big["expectations"].append({"target": "app", "rule": "unexpected", "subject": f"modify object {key}",
                                    "ok": False, "message": "not covered by must/may | </details>"})
    big["action"]["rehearsal"]["locks"] *= 3_000
    big["divergence"] = [f"update rows public.t{i}: rehearsal {i}, production {i + 1}" for i in range(20_000)]
    big["steps"] *= 4_000
    return big


def test_markdown_of_50000_changes_fits_a_pull_request_comment_with_counts_and_whole_tables(failed_run):
    big = _huge(failed_run.model)
    md = reports.render_markdown(big)
    assert len(md) < markdown.MD_LIMIT and len(md.encode("utf-16-le")) // 2 < 65_536
    _assert_well_formed(md)

    # Changes: every change shown (nested ones included) plus every count in a note adds up to all of them.
    section = md.split("### Changes in the rehearsal", 1)[1].split("\n## ", 1)[0]
    shown = len(re.findall(r"^ *- `", section, re.M))
    implied_notes = sum(int(x) for x in re.findall(r"^ *- … (\d+) more implied changes$", section, re.M))
    more = re.findall(r"^… and ([\d,]+) more changes — report.json has them all$", section, re.M)
    assert len(more) == 1
    total = len(list(_walk(big["targets"][0]["changes"])))
    assert shown + implied_notes + int(more[0].replace(",", "")) == total
    assert shown > 50  # the budget is shared, not given to the first section
    assert "  <details><summary>16 implied changes</summary>" in section

    # Expectations: failed ones first; the count of the rest says how many of them failed.
    expectations = md.split("## Expectations", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in expectations.splitlines() if line.startswith("| ❌") or line.startswith("| ✅")]
    assert all(row.startswith("| ❌") for row in rows)
    rest = re.search(r"^… and ([\d,]+) more expectations \(([\d,]+) failed\)", expectations, re.M)
    assert rest is not None
    assert len(rows) + int(rest[1].replace(",", "")) == len(big["expectations"])
    assert "&lt;/details>" in expectations  # text cannot close our <details>

    for noun in ("prefixes", "lock trace rows", "differences", "steps"):
        assert re.search(rf"^… and [\d,]+ more {noun} — report.json has them all$", md, re.M), noun
    for heading in ("## Static findings", "## Lock trace (rehearsal)", "## Divergence", "## Steps"):
        assert heading in md
    assert f"<summary>{len(big['steps']):,} steps" in md  # the real run's steps, 4,000 times


def test_markdown_with_hundreds_of_targets_leaves_out_whole_sections_only(failed_run):
    m = copy.deepcopy(failed_run.model)
    target = m["targets"][0]
    m["targets"] = [dict(target, name=f"db{i}", endpoint="postgresql://" + "h" * 400, warnings=["w" * 600] * 3)
                    for i in range(400)]
    md = reports.render_markdown(m)
    assert len(md) < markdown.MD_LIMIT
    assert md.rstrip().endswith("… " + markdown.LEFT_OUT)
    _assert_well_formed(md)


def _assert_well_formed(md: str) -> None:
    """Tables whole (header, delimiter, rows with as many cells, a blank line after); <details> balanced."""
    lines = md.splitlines()
    tables = 0
    i = 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        end = i
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        header, delimiter, *rows = lines[i:end]
        cells = _cells(header)
        assert re.fullmatch(r"\|(---\|)+", delimiter) and _cells(delimiter) == cells, lines[i:i + 2]
        for row in rows:
            assert row.endswith(" |") and _cells(row) == cells, row
        assert end == len(lines) or lines[end] == "", lines[end]
        tables += 1
        i = end
    assert md.count("<details>") == md.count("</details>")
    html = MarkdownIt("commonmark").enable("table").render(md)
    assert html.count("<table>") == tables
    assert html.count("<details>") == html.count("</details>") == md.count("</details>")


def _cells(row: str) -> int:
    return len(re.split(r"(?<!\\)\|", row)) - 2
