"""Bad input: one clear line naming the place, a documented exit code, no traceback, production untouched."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.postgres.cluster import LocalCluster, free_port
from shadow.cli import MAX_ERROR_CHARS
from tests.conftest import DEMO_SCHEMA, ProdDb, write_plan
from tests.inprocess import run_main

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


@pytest.mark.parametrize("verb", ["plan", "apply", "rollback", "runs", "show", "demo"])
def test_every_verb_has_help(shadow_cli, verb):
    r = shadow_cli(verb, "--help")
    assert r.code == 0 and "Usage:" in r.out


# --- the corpus: every malformed input through the real entry point ------------------------------------------

T = "version: 1\ntargets:\n  app:\n    kind: postgres\n    dsn: ${APP_DATABASE_URL}\n"  # lines 1-5
A = "action: {sql: m.sql}\n"  # line 6 after T


@dataclass(frozen=True)
class Bad:
    """One malformed input: the files to write, the CLI arguments, the exit code and what the message names."""

    id: str
    args: tuple[str, ...]
    needles: tuple[str, ...]
    code: int = 2
    files: dict[str, str | bytes] = field(default_factory=dict)
    dsn: str | None = "prod"  # prod: the real production database; None: no DSN in play; else this DSN
    links: dict[str, str] = field(default_factory=dict)  # symlinks to make: name → target
    absent: tuple[str, ...] = ()  # what the output must never contain (a file's content, a secret)


def plan(id: str, body: str | bytes, *needles: str, files: dict[str, str | bytes] | None = None,
         code: int = 2, dsn: str | None = "prod", links: dict[str, str] | None = None,
         absent: tuple[str, ...] = ()) -> Bad:
    sql = {} if links and "m.sql" in links else {"m.sql": "SELECT 1;\n"}
    return Bad(id, ("plan", "-q"), needles, code, {"shadow.yaml": body, **sql, **(files or {})}, dsn, links or {},
               absent)


def s3(id: str, keys: str, *needles: str) -> Bad:
    """A plan with one more target, ``assets: {kind: s3, <keys>}`` (line 6)."""
    return plan(id, T + f"  assets: {{kind: s3{', ' + keys if keys else ''}}}\n" + A, *needles)


def cli(id: str, *args: str, needles: tuple[str, ...], code: int = 2,
        files: dict[str, str | bytes] | None = None, links: dict[str, str] | None = None,
        absent: tuple[str, ...] = ()) -> Bad:
    return Bad(id, args, needles, code, files or {}, None, links or {}, absent)


def _nested(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth + "\n"


def _laughs() -> str:
    lines = ['l0: &l0 ["ha", "ha", "ha", "ha", "ha", "ha", "ha", "ha", "ha", "ha"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return "\n".join(lines) + "\n" + T.split("\n", 1)[1] + A


MIB = 1 << 20
# Content of a file outside the plan's folder that an SQL "file" points at: no error may show any of it.
SECRET = "root:$6$Q9vTOPSECRETsalt$Zx81kq0N7uYpB3wLmHs2dT5vR9aF1cE4gJ6hK8iL0mN2oP4qR6sT8uV0wX2yZ4a:19000:0:99999:7:::\n"
NOT_SQL_BUT_PARSES = "SELECT 'TOPSECRET-in-a-string' FROM (\n"  # tokenizes, does not parse: quoted by lint on main


def _alias_bomb(copies: int) -> str:
    """A plan just under 1 MiB: one ~1 MiB string, aliased ``copies`` times (a power of 9) under `version`."""
    levels, text = [], "*s"
    while copies > 1:
        name = f"l{len(levels)}"
        levels.append(f"{name}: &{name} [" + ", ".join([text] * 9) + "]\n")
        text, copies = f"*{name}", copies // 9
    return f's: &s "{"x" * (MIB - 4096)}"\n' + "".join(levels) + f"version: {text}\n" + T.split("\n", 1)[1] + A


CORPUS: list[Bad] = [
    # YAML that does not parse
    plan("yaml-unclosed-flow", "targets: [1, 2\n", "shadow.yaml:2:1: not valid YAML"),
    plan("yaml-tab-indent", "targets:\n\tapp: {kind: postgres}\n", "shadow.yaml:2:1: not valid YAML"),
    plan("yaml-unclosed-quote", T + 'action: {sql: "m.sql}\n', "shadow.yaml:7:1: not valid YAML"),
    plan("yaml-bad-indent", "targets:\n  app:\n    kind: postgres\n   dsn: x\n", "shadow.yaml:4", "not valid YAML"),
    plan("yaml-undefined-alias", T + "action: *nope\n", "shadow.yaml:6", "not valid YAML", "nope"),
    plan("yaml-two-documents", T + A + "---\n" + T + A, "shadow.yaml:7", "not valid YAML"),
    plan("yaml-python-tag", T + "action: !!python/object/apply:os.system ['true']\n", "shadow.yaml:6",
         "not valid YAML"),
    plan("yaml-nul-byte", T + A + "expect: {app: {must: [\"a\0b\"]}}\n", "shadow.yaml", "not valid YAML"),
    plan("yaml-nested-too-deep", _nested(5000), "shadow.yaml", "nested too deeply"),
    plan("yaml-billion-laughs", _laughs(), "shadow.yaml", "too many nodes"),
    plan("yaml-alias-bomb-729-mib", _alias_bomb(729), "shadow.yaml:1", "too large once its aliases are expanded"),
    plan("yaml-3-mib-value-in-an-error", _alias_bomb(1).replace("version: *s", "version: [*s, *s, *s]"),
         "shadow.yaml", "unsupported plan version", "more characters"),
    plan("yaml-2000-problems", T + A + "".join(f"k{i}: 1\n" for i in range(2000)), "2,000 problems",
         "shadow.yaml:7: k0: unknown key", "and 1,980 more"),
    # not a plan at all
    plan("empty-file", "", "shadow.yaml:1", "a plan is a mapping"),
    plan("only-comments", "# a plan, one day\n", "shadow.yaml:1", "a plan is a mapping"),
    plan("top-level-list", "- targets\n- action\n", "shadow.yaml:1", "a plan is a mapping"),
    plan("top-level-scalar", "hello\n", "shadow.yaml:1", "a plan is a mapping"),
    plan("binary-junk", bytes(range(256)) * 8, "shadow.yaml", "not UTF-8"),
    plan("latin-1", T.encode() + "action: {sql: caf\u00e9.sql}\n".encode("latin-1"), "shadow.yaml", "not UTF-8"),
    plan("utf-16", (T + A).encode("utf-16"), "shadow.yaml", "not UTF-8"),
    plan("huge-20-mb", T + A + "# " + "x" * (20 << 20) + "\n", "shadow.yaml", "too large"),
    # the plan's shape
    plan("missing-targets", "version: 1\n" + A, "shadow.yaml:1: targets", "missing"),
    plan("missing-action", T, "shadow.yaml:1: action", "missing"),
    plan("targets-empty", "targets: {}\n" + A, "shadow.yaml:1: targets", "must be a mapping"),
    plan("targets-list", "targets: [app]\n" + A, "shadow.yaml:1: targets", "must be a mapping"),
    plan("target-scalar", "targets: {app: postgres}\n" + A, "shadow.yaml:1: targets.app", "must be a mapping"),
    # s3 targets (validated before any endpoint is contacted)
    s3("s3-without-bucket", "", "shadow.yaml:6: targets.assets", "needs `bucket:`"),
    s3("s3-bad-bucket-name", "bucket: Not_A_Bucket", "shadow.yaml:6: targets.assets.bucket",
       "not a valid bucket name"),
    s3("s3-prefix-not-a-string", "bucket: acme, prefix: [a]", "targets.assets.prefix", "key prefix"),
    s3("s3-endpoint-not-a-url", "bucket: acme, endpoint_url: 127.0.0.1:9000", "targets.assets.endpoint_url",
       "not an http(s) URL"),
    s3("s3-allow-unknown", "bucket: acme, allow: [everything]", "targets.assets.allow",
       "unversioned, lifecycle-expiry"),
    s3("s3-retain-days-zero", "bucket: acme, retain_days: 0", "targets.assets.retain_days", "whole number of days"),
    s3("s3-retain-days-text", "bucket: acme, retain_days: a month", "targets.assets.retain_days",
       "whole number of days"),
    s3("s3-unknown-key", "bucket: acme, region: mars-1", "targets.assets.region", "unknown key for an s3 target"),
    s3("s3-track-unknown", "bucket: acme, track: [acl]", "shadow.yaml:6: targets.assets.track", "'acl'",
       "tags, metadata"),
    s3("s3-track-not-a-list", "bucket: acme, track: tags", "targets.assets.track", "not a list"),
    plan("target-without-kind", "targets:\n  app: {dsn: x}\n" + A, "shadow.yaml:2: targets.app.kind", "missing"),
    plan("unknown-kind", "targets:\n  app: {kind: mysql, dsn: x}\n" + A, "targets.app.kind",
         "unknown target kind 'mysql'"),
    plan("postgres-without-dsn", "targets:\n  app: {kind: postgres}\n" + A, "shadow.yaml:2: targets.app",
         "needs `dsn:`"),
    plan("dsn-is-a-list", "targets:\n  app: {kind: postgres, dsn: [a, b]}\n" + A, "targets.app.dsn"),
    plan("target-name", "targets:\n  1app: {kind: postgres, dsn: x}\n" + A, "shadow.yaml:2: targets.1app",
         "starts with a letter"),
    plan("variable-not-set", "targets:\n  app: {kind: postgres, dsn: '${NOT_SET_ANYWHERE_X}'}\n" + A,
         "shadow.yaml:2: targets.app.dsn", "NOT_SET_ANYWHERE_X is not set"),
    plan("unknown-top-key", T + A + "actions: {sql: m.sql}\n", "shadow.yaml:7: actions", "unknown key"),
    plan("version-2", T.replace("version: 1", "version: 2") + A, "shadow.yaml:1: version",
         "unsupported plan version 2"),
    plan("version-string", T.replace("version: 1", "version: one") + A, "shadow.yaml:1: version",
         "unsupported plan version 'one'"),
    plan("duplicate-key", T + A + A, "shadow.yaml:7: action", "duplicate key"),
    # action
    plan("action-scalar", T + "action: m.sql\n", "shadow.yaml:6: action", "give `sql: FILE`"),
    plan("action-sql-and-command", T + "action: {sql: m.sql, command: ls}\n", "shadow.yaml:6: action",
         "exactly one of"),
    plan("action-neither", T + "action: {timeout: 5s}\n", "shadow.yaml:6: action", "exactly one of"),
    plan("action-unknown-key", T + "action: {sql: m.sql, retries: 3}\n", "shadow.yaml:6: action.retries",
         "unknown key"),
    plan("sql-file-missing", T + "action: {sql: missing.sql}\n", "shadow.yaml:6: action.sql",
         "SQL file not found: missing.sql"),
    plan("sql-list-with-number", T + "action: {sql: [m.sql, 3]}\n", "shadow.yaml:6: action.sql.1",
         "must be a path"),
    plan("sql-empty-string", T + "action: {sql: ''}\n", "shadow.yaml:6: action.sql", "must be a path"),
    plan("sql-is-a-directory", T + "action: {sql: sub}\n", "action.sql", "SQL file not found: sub",
         files={"sub/x.sql": "SELECT 1;"}),
    plan("command-empty", T + "action: {command: ''}\n", "shadow.yaml:6: action.command", "non-empty"),
    plan("command-list", T + "action: {command: [ls, -l]}\n", "shadow.yaml:6: action.command", "non-empty"),
    plan("timeout-words", T + "action: {sql: m.sql, timeout: soon}\n", "action.timeout", "duration"),
    plan("timeout-negative", T + "action: {sql: m.sql, timeout: -5}\n", "action.timeout", "duration"),
    plan("timeout-bool", T + "action: {sql: m.sql, timeout: yes}\n", "action.timeout", "duration"),
    plan("env-list", T + "action: {sql: m.sql, env: [A=1]}\n", "shadow.yaml:6: action.env", "mapping"),
    plan("env-bad-name", T + "action: {sql: m.sql, env: {'1X': a}}\n", "action.env.1X",
         "not a valid environment variable name"),
    plan("env-value-list", T + "action: {sql: m.sql, env: {X: [1]}}\n", "action.env.X", "string or number"),
    plan("isolation-bad", T + "action: {command: ls, isolation: vm}\n", "action.isolation", "'vm' is not one of"),
    plan("image-without-container", T + "action: {command: ls, image: alpine}\n", "action.image",
         "only used with `isolation: container`"),
    plan("sql-target-unknown", T + "action: {sql: m.sql, target: other}\n", "action.target",
         "'other' is not a target SQL runs on"),
    # expectations
    plan("expect-list", T + A + "expect: [app]\n", "shadow.yaml:7: expect", "must map target names"),
    plan("expect-unknown-target", T + A + "expect: {web: {must: []}}\n", "shadow.yaml:7: expect.web",
         "no target named 'web'"),
    plan("expect-misspelt-key", T + A + "expect:\n  app:\n    mustt: [x]\n", "shadow.yaml:9: expect.app.mustt",
         "unknown key"),
    plan("must-not-a-list", T + A + "expect: {app: {must: add column public.users.x}}\n", "expect.app.must",
         "must be a list"),
    plan("must-not-an-address", T + A + "expect:\n  app:\n    must: [drop the table]\n",
         "shadow.yaml:9: expect.app.must.0", "'drop the table': unknown kind 'the'"),
    plan("must-unknown-op", T + A + "expect: {app: {must: [explode column public.users.x]}}\n",
         "expect.app.must.0", "unknown operation 'explode'"),
    plan("must-unknown-kind", T + A + "expect: {app: {may: [add gadget public.x]}}\n", "expect.app.may.0",
         "unknown kind 'gadget'"),
    plan("rows-not-a-count", T + A + "expect: {app: {rows: {public.t: {deleted: lots}}}}\n",
         "expect.app.rows.public.t.deleted", "'lots' is not a count"),
    plan("rows-unknown-key", T + A + "expect: {app: {rows: {public.t: {changed: 1}}}}\n",
         "expect.app.rows.public.t.changed", "unknown key"),
    plan("rows-list", T + A + "expect: {app: {rows: [public.t]}}\n", "expect.app.rows", "must map table names"),
    plan("rows-negative", T + A + "expect: {app: {rows: {public.t: {inserted: -1}}}}\n",
         "expect.app.rows.public.t.inserted", "-1 is not a count"),
    plan("checks-not-a-list", T + A + "expect: {app: {checks: {sql: x}}}\n", "expect.app.checks", "must be a list"),
    plan("check-without-equals", T + A + "expect: {app: {checks: [{sql: select 1}]}}\n", "expect.app.checks.0",
         "needs `sql:`"),
    plan("check-unknown-key", T + A + "expect: {app: {checks: [{sql: select 1, equals: 1, within: 2}]}}\n",
         "expect.app.checks.0.within", "unknown key"),
    # policy
    plan("policy-list", T + A + "policy: [local]\n", "shadow.yaml:7: policy", "must be a mapping"),
    plan("policy-unknown-key", T + A + "policy: {backend: local, retries: 2}\n", "policy.retries", "unknown key"),
    plan("policy-backend", T + A + "policy: {backend: cloud}\n", "policy.backend", "'cloud' is not one of"),
    plan("limits-memory", T + A + "policy: {limits: {memory: lots}}\n", "policy.limits.memory", "not a size"),
    plan("limits-cpus", T + A + "policy: {limits: {cpus: -1}}\n", "policy.limits.cpus", "not a positive number"),
    plan("limits-pids", T + A + "policy: {limits: {pids: 2}}\n", "policy.limits.pids", "at least 16"),
    plan("max-lock-mode", T + A + "policy: {max_lock: {TOTAL: 2s}}\n", "policy.max_lock.TOTAL",
         "unknown lock mode"),
    plan("max-lock-duration", T + A + 'policy: {max_lock: {"ACCESS EXCLUSIVE": forever}}\n',
         "policy.max_lock.ACCESS EXCLUSIVE", "not a duration"),
    plan("allow-not-a-list", T + A + "policy: {allow: drop-table}\n", "policy.allow", "must be a list"),
    plan("allow-unknown-id", T + A + "policy: {allow: [drop-everything]}\n", "policy.allow", "drop-everything"),
    # SQL files
    plan("sql-unterminated-string", T + A, "m.sql:2", files={"m.sql": "SELECT 1;\nSELECT 'unterminated;\n"}),
    plan("sql-does-not-parse", T + A, "m.sql:2", files={"m.sql": "SELECT 1;\nSELEC * FORM users;\n"}),
    plan("sql-not-utf-8", T + A, "m.sql", "not UTF-8", files={"m.sql": "SELECT 'caf\u00e9';\n".encode("latin-1")}),
    plan("sql-binary-junk", T + A, "m.sql", files={"m.sql": bytes(range(256)) * 4}),
    plan("sql-psql-meta-command", T + A, "m.sql:1", "psql meta-commands", files={"m.sql": "\\i other.sql\n"}),
    plan("sql-symlink-to-etc-passwd", T + A, "m.sql:1", "does not start an SQL command",
         links={"m.sql": "/etc/passwd"}, absent=("root:", "/bin/")),
    plan("sql-symlink-to-a-secret-outside", T + A, "m.sql:1", links={"m.sql": "../shadow-like"},
         files={"../shadow-like": SECRET}, absent=("TOPSECRET", "Q9v", "$6$")),
    plan("sql-symlink-to-sql-outside", T + A, "m.sql:1", "cannot parse", links={"m.sql": "../outside.sql"},
         files={"../outside.sql": NOT_SQL_BUT_PARSES}, absent=("TOPSECRET",)),
    plan("sql-dot-dot-outside", T + "action: {sql: ../outside2.sql}\n", "../outside2.sql:1", "cannot parse",
         files={"../outside2.sql": NOT_SQL_BUT_PARSES}, absent=("TOPSECRET",)),
    plan("sql-secret-in-a-statement", T + A, "m.sql:2", "cannot parse",
         files={"m.sql": "INSERT INTO api_keys VALUES ('sk_live_4eC39HqLyjWDarjtT1zdp7dc',\n"
                         "  'Bearer aZ09aZ09aZ09aZ09aZ09'\n"},
         absent=("4eC39HqLyjWDarjtT1zdp7dc", "aZ09aZ09aZ09aZ09aZ09")),
    plan("sql-symlink-outside-that-the-server-rejects", T + A, "m.sql:1", "does not exist",
         links={"m.sql": "../rejected.sql"},
         files={"../rejected.sql": 'SELECT "TOPSECRETaZ09aZ09aZ09aZ09x" FROM pg_class WHERE relname = \'Q9vXk\';\n'},
         absent=("TOPSECRET", "aZ09aZ09", "Q9vXk")),
    plan("sql-absolute-path", T + "action: {sql: /etc/passwd}\n", "/etc/passwd:1", "does not start an SQL command",
         absent=("root:", "/bin/")),
    plan("sql-symlink-loop", T + A, "shadow.yaml:6: action.sql", "m.sql is a symlink loop", links={"m.sql": "m.sql"}),
    plan("sql-statement-too-large-runs", T + A, "m.sql:1", "does not exist",
         files={"m.sql": "INSERT INTO no_such_table VALUES " + ", ".join(["(1, 'x')"] * 200_000) + ";\n"}),
    plan("sql-past-the-analysis-limit-runs", T + A, "m.sql:507", "syntax error", files={
        "m.sql": "".join(f"SELECT '{i}{'x' * 100_000}';\n" for i in range(6)) + "SELECT 1;\n" * 500 + "SELEC 1;\n"}),
    # production cannot be reached
    plan("dsn-not-a-dsn", T + A, "shadow.yaml:5: targets.app.dsn", "not a valid PostgreSQL connection string", dsn="not a dsn = at all"),
    plan("dsn-unknown-parameter", T + A, "shadow.yaml:5: targets.app.dsn", "not a valid PostgreSQL connection string",
         dsn="postgresql://127.0.0.1/x?frobnicate=1"),
    plan("dsn-closed-port", T + A, "target 'app'", "cannot connect to postgresql://someone@127.0.0.1", code=3,
         dsn="postgresql://someone:hunter2@127.0.0.1:{closed}/prod?connect_timeout=3"),
    plan("dsn-wrong-password", T + A, "target 'app'", "password authentication failed", code=3, dsn="wrong-password"),
    plan("dsn-no-such-database", T + A, "target 'app'", "does not exist", code=3, dsn="no-such-database"),
    # the command line
    cli("unknown-command", "frobnicate", needles=("No such command 'frobnicate'",)),
    cli("unknown-option", "plan", "--no-such-flag", needles=("No such option", "--no-such-flag", "shadow plan --help")),
    cli("unknown-global-option", "--colour", "runs", needles=("No such option", "--colour")),
    cli("show-unknown-run", "show", "20990101-000000-abcdef", needles=("no report for run '20990101-000000-abcdef'",)),
    cli("show-bad-format", "show", "x", "--format", "pdf", needles=("Invalid value for '--format'", "'pdf'")),
    cli("show-without-run", "show", needles=("Missing argument 'RUN_ID'",)),
    cli("show-path-as-run-id", "show", "../..", needles=("no report for run '../..'",)),
    cli("rollback-unknown-run", "rollback", "20990101-000000-abcdef", needles=("no run '20990101-000000-abcdef'",)),
    cli("runs-limit-not-a-number", "runs", "--limit", "many", needles=("Invalid value for '-n' / '--limit'",)),
    cli("plan-file-missing", "plan", "-f", "nope.yaml", needles=("nope.yaml: plan file not found",)),
    cli("plan-file-is-a-directory", "plan", "-f", "sub", needles=("'sub' is a directory",),
        files={"sub/shadow.yaml": T + A}),
    cli("lint-file-missing", "lint", "nope.sql", needles=("nope.sql", "SQL file not found")),
    cli("lint-not-parsing", "lint", "m.sql", needles=("m.sql:1",), files={"m.sql": "SELEC * FORM users;\n"}),
    cli("lint-not-utf-8", "lint", "m.sql", needles=("m.sql", "not UTF-8"), files={"m.sql": b"SELECT '\xff';\n"}),
    cli("lint-symlink-loop", "lint", "m.sql", needles=("m.sql", "cannot read SQL file"), links={"m.sql": "m.sql"}),
    cli("lint-symlink-to-etc-passwd", "lint", "m.sql", needles=("m.sql:1", "does not start an SQL command"),
        links={"m.sql": "/etc/passwd"}, absent=("root:", "/bin/")),
    cli("lint-unterminated-comment", "lint", "m.sql", needles=("m.sql:2", "/* comment", "never closed"),
        files={"m.sql": "SELECT 1;\n/* TOPSECRET /* nested */\nSELECT 2;\n"}, absent=("TOPSECRET",)),
    cli("plan-file-symlink-loop", "plan", "-f", "loop.yaml", needles=("loop.yaml", "symbolic links"),
        links={"loop.yaml": "loop.yaml"}),
    cli("audit-without-journal", "audit", needles=("no journal at",)),
    cli("rollback-without-run-id", "rollback", needles=("Missing argument 'RUN_ID'",)),
    cli("lint-without-files", "lint", needles=("Missing argument 'FILES...'",)),
    cli("gc-unknown-option", "gc", "--everything", needles=("No such option", "--everything")),
    cli("plan-file-option-without-value", "plan", "-f", needles=("Option '-f' requires an argument",)),
    Bad("state-dir-is-a-file", ("--state-dir", "blocker/state", "plan", "-q"), ("not writable",), 3,
        {"blocker": "a file", "shadow.yaml": T + A, "m.sql": "SELECT 1;\n"}),
]


@pytest.fixture(scope="module")
def corpus_prod(pg_server: LocalCluster) -> Iterator[ProdDb]:
    name = "prod_" + uuid.uuid4().hex[:10]
    db = ProdDb(pg_server, name, pg_server.create_database(name))
    db.execute(DEMO_SCHEMA.read_text())
    yield db
    with pg_server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _dsn(case: Bad, prod: ProdDb) -> str | None:
    if case.dsn is None:
        return None
    return {
        "prod": prod.dsn,
        "wrong-password": prod.server.dsn(prod.name, password="not-" + prod.server.password),
        "no-such-database": prod.server.dsn("no_such_db_" + uuid.uuid4().hex[:6]),
    }.get(case.dsn, case.dsn.replace("{closed}", str(free_port())))


def _write(folder: Path, files: dict[str, str | bytes], links: dict[str, str]) -> None:
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    for rel, target in links.items():
        os.symlink(target, folder / rel)


def test_corpus_of_bad_inputs(corpus_prod, tmp_path, evidence):
    assert len(CORPUS) >= 50 and len({c.id for c in CORPUS}) == len(CORPUS)
    fingerprint = corpus_prod.fingerprint()
    failures: list[str] = []
    started = time.monotonic()
    for case in CORPUS:
        folder = tmp_path / case.id
        folder.mkdir()
        _write(folder, case.files, case.links)
        dsn = _dsn(case, corpus_prod)
        r = run_main(folder / "state", *case.args, env={"APP_DATABASE_URL": dsn} if dsn else {}, cwd=folder)
        lines = [line for line in r.text.splitlines() if line.strip()]
        problems = []
        if r.code != case.code:
            problems.append(f"exit {r.code}, expected {case.code}")
        if "Traceback" in r.text or "internal error" in r.text:
            problems.append("a traceback or internal error")
        if len(lines) != 1 or not lines[0].startswith("shadow: error: "):
            problems.append(f"{len(lines)} lines instead of one `shadow: error: …` line")
        problems += [f"no {n!r}" for n in case.needles if n not in r.text]
        problems += [f"shows {n!r}" for n in case.absent if n in r.text]
        if len(r.text) > MAX_ERROR_CHARS + 100:
            problems.append(f"a {len(r.text):,}-character message")
        if dsn and "hunter2" in r.text:
            problems.append("the DSN's password is shown")
        if case.dsn == "prod" or case.dsn in ("wrong-password", "no-such-database"):
            now = corpus_prod.fingerprint()
            if now != fingerprint:
                problems.append("PRODUCTION CHANGED")
                fingerprint = now
        if problems:
            failures.append(f"{case.id}: {'; '.join(problems)}\n    {r.text.strip()[:400]}")
    evidence(f"bad-input corpus: {len(CORPUS)} malformed inputs tried in {time.monotonic() - started:.1f} s, "
             f"{len(failures)} mishandled")
    assert not failures, "\n".join(failures)


DELETE_ORDERS_PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {may: [delete rows public.orders, "* rows public.audit_log"]}}
"""


def test_deferred_constraint_failure_is_reported_as_bad_sql_not_a_crash(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, DELETE_ORDERS_PLAN, {"m.sql": """
        CREATE TABLE notes (id int PRIMARY KEY, order_id bigint REFERENCES orders (id) DEFERRABLE INITIALLY DEFERRED);
        INSERT INTO notes VALUES (1, 999999);
    """})
    r = shadow_cli("plan", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 2, r.text
    assert "deferred constraint failed" in r.err and "Traceback" not in r.text


def test_targets_whose_variables_collide_are_refused(shadow_cli, tmp_path):
    write_plan(tmp_path, """
targets:
  billing-db: {kind: postgres, dsn: "host=a"}
  billing_db: {kind: postgres, dsn: "host=b"}
action: {command: "true"}
""")
    r = shadow_cli("plan")
    assert r.code == 2 and "both become SHADOW_BILLING_DB_*" in r.err
