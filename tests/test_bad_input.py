"""Bad input: one clear line naming the place, a documented exit code, no traceback, production untouched."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import ProdDb, write_plan

GOOD_TARGETS = """
version: 1
targets:
  app:
    kind: postgres
    dsn: ${APP_DATABASE_URL}
"""


def _env(db: ProdDb) -> dict[str, str]:
    return {"APP_DATABASE_URL": db.dsn}


def _assert_clean_failure(r, code: int, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert r.code == code, r.text
    assert "Traceback" not in r.text
    for needle in needles:
        assert needle in r.text, r.text


@pytest.mark.parametrize(
    ("plan", "needles"),
    [
        pytest.param(GOOD_TARGETS, ["shadow.yaml:2: action", "missing"], id="missing-action"),
        pytest.param("version: 1\naction: {sql: m.sql}\n", ["shadow.yaml:1: targets", "missing"], id="missing-targets"),
        pytest.param(GOOD_TARGETS + "action: {sql: m.sql}\nexpect:\n  app:\n    mustt: [x]\n",
                     ["shadow.yaml:10: expect.app.mustt", "unknown key"], id="misspelt-key"),
        pytest.param(GOOD_TARGETS + "action: {sql: m.sql}\nexpect:\n  app:\n    must: [drop the table]\n",
                     ["shadow.yaml:10: expect.app.must.0"], id="bad-address"),
        pytest.param(GOOD_TARGETS + "action: {sql: m.sql}\nexpect:\n  app:\n    rows: {public.t: {deleted: lots}}\n",
                     ["expect.app.rows.public.t.deleted", "'lots' is not a count"], id="bad-row-count"),
        pytest.param("version: 1\ntargets:\n  app:\n    kind: mysql\n    dsn: x\naction: {sql: m.sql}\n",
                     ["shadow.yaml:4: targets.app.kind", "unknown target kind 'mysql'"], id="unknown-kind"),
        pytest.param("version: 1\ntargets:\n  app:\n    kind: postgres\n    dsn: ${NOT_SET_ANYWHERE}\naction: {sql: m.sql}\n",
                     ["shadow.yaml:5: targets.app.dsn", "NOT_SET_ANYWHERE is not set"], id="var-not-set"),
        pytest.param(GOOD_TARGETS + "action: {sql: missing.sql}\n",
                     ["shadow.yaml:7: action.sql", "SQL file not found: missing.sql"], id="sql-file-missing"),
        pytest.param(GOOD_TARGETS + "action: {sql: m.sql, command: ls}\n", ["exactly one of"], id="sql-and-command"),
        pytest.param(GOOD_TARGETS + "action: {sql: m.sql}\npolicy: {backend: cloud}\n",
                     ["policy.backend", "'cloud' is not one of"], id="bad-backend"),
        pytest.param("targets: [1, 2\n", ["not valid YAML"], id="broken-yaml"),
    ],
)
def test_invalid_plan_is_exit_2_with_location(prod_db, shadow_cli, tmp_path, plan, needles):
    write_plan(tmp_path, plan, {"m.sql": "SELECT 1;"})
    before = prod_db.fingerprint()
    r = shadow_cli("plan", env=_env(prod_db))
    _assert_clean_failure(r, 2, *needles)
    assert len([line for line in r.err.splitlines() if line.strip()]) == 1
    assert prod_db.fingerprint() == before


def test_missing_plan_file_is_exit_2(shadow_cli):
    _assert_clean_failure(shadow_cli("plan", "-f", "nope.yaml"), 2, "nope.yaml", "plan file not found")


def test_every_problem_is_reported_at_once(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, "version: 1\ntargets:\n  app: {kind: postgres}\n  other: {kind: nosql}\n")
    r = shadow_cli("plan", env=_env(prod_db))
    _assert_clean_failure(r, 2, "needs `dsn:`", "unknown target kind 'nosql'", "action")


def test_sql_that_fails_names_file_line_statement_and_server_error(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, GOOD_TARGETS + "action: {sql: m.sql}\n", {
        "m.sql": "ALTER TABLE users ADD COLUMN nickname text;\n\n-- oops\nUPDATE users\n   SET nickname = no_such_column;\n",
    })
    before = prod_db.fingerprint()
    r = shadow_cli("apply", env=_env(prod_db))
    _assert_clean_failure(r, 2, "m.sql:5", 'column "no_such_column" does not exist', "UPDATE users SET nickname")
    assert prod_db.fingerprint() == before


def test_sql_that_cannot_be_tokenized_is_bad_input(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, GOOD_TARGETS + "action: {sql: m.sql}\n", {"m.sql": "SELECT 1;\nSELECT 'unterminated;\n"})
    r = shadow_cli("plan", env=_env(prod_db))
    _assert_clean_failure(r, 2, "m.sql")


def test_unreachable_production_is_exit_3(shadow_cli, tmp_path):
    from adapters.postgres.cluster import free_port

    write_plan(tmp_path, GOOD_TARGETS + "action: {sql: m.sql}\n", {"m.sql": "SELECT 1;"})
    dsn = f"postgresql://someone:hunter2@127.0.0.1:{free_port()}/prod?connect_timeout=3"
    r = shadow_cli("plan", env={"APP_DATABASE_URL": dsn})
    _assert_clean_failure(r, 3, "target 'app'", "cannot connect to postgresql://someone@127.0.0.1")
    assert "hunter2" not in r.text


def test_action_exiting_non_zero_fails_the_plan_and_shows_its_output(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, GOOD_TARGETS + f"action:\n  command: \"{sys.executable} -c 'import sys; print(42); sys.exit(7)'\"\n")
    before = prod_db.fingerprint()
    r = shadow_cli("apply", env=_env(prod_db))
    _assert_clean_failure(r, 1, "exited with status 7", "42", "REFUSED")
    assert prod_db.fingerprint() == before


def test_action_timing_out_is_killed_and_fails(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, GOOD_TARGETS + "action:\n  command: \"sleep 30\"\n  timeout: 1s\n")
    before = prod_db.fingerprint()
    r = shadow_cli("apply", env=_env(prod_db))
    _assert_clean_failure(r, 1, "timed out after 1 s")
    assert prod_db.fingerprint() == before


def test_sql_action_timing_out_fails(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, GOOD_TARGETS + "action:\n  sql: m.sql\n  timeout: 1s\n", {"m.sql": "SELECT pg_sleep(5);"})
    r = shadow_cli("plan", env=_env(prod_db))
    _assert_clean_failure(r, 1, "timed out")


def test_state_dir_not_writable_is_exit_3(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, GOOD_TARGETS + "action: {sql: m.sql}\n", {"m.sql": "SELECT 1;"})
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    before = prod_db.fingerprint()
    r = shadow_cli("--state-dir", str(blocker / "state"), "plan", env=_env(prod_db))
    _assert_clean_failure(r, 3, "not writable")
    assert prod_db.fingerprint() == before


def test_unknown_cli_argument_is_exit_2(shadow_cli):
    r = shadow_cli("plan", "--no-such-flag")
    assert r.code == 2 and "no such option" in r.err.lower()


@pytest.mark.parametrize("verb", ["plan", "apply", "rollback", "runs", "show", "demo"])
def test_every_verb_has_help(shadow_cli, verb):
    r = shadow_cli(verb, "--help")
    assert r.code == 0 and "Usage:" in r.out
