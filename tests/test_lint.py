"""Static SQL findings: every finding id fires on a migration that deserves it and stays quiet on the safe rewrite;
parse errors name file, line and column; touched tables; allow lists; the `shadow lint` CLI. Pure logic, no services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shadow.errors import BadInput, SqlError
from shadow.lint import RULES, Finding, allow_problems, allowed, lint, lint_files, same_table, touched
from shadow.sqlsplit import Statement, split_sql
from tests.conftest import CliResult, run_cli

ROOT = Path(__file__).resolve().parent.parent


def ids(sql: str, file: str = "m.sql") -> list[str]:
    return [f.id for f in lint(split_sql(sql, file))]


def one(sql: str) -> Statement:
    return Statement("m.sql", 1, sql)


# (id, a migration that triggers it, a safe rewrite that does not)
CASES = [
    ("drop-table", "DROP TABLE users",
     "CREATE TABLE import_scratch (id int); DROP TABLE import_scratch"),
    ("drop-column", "ALTER TABLE users DROP COLUMN legacy_flag",
     "ALTER TABLE users ALTER COLUMN legacy_flag DROP NOT NULL"),
    ("drop-column", "ALTER TABLE users DROP legacy_flag",
     "ALTER TABLE users DROP CONSTRAINT users_legacy_flag_check"),
    ("drop-schema", "DROP SCHEMA legacy CASCADE",
     "CREATE SCHEMA staging; DROP SCHEMA staging"),
    ("drop-index", "DROP INDEX users_email_idx",
     "CREATE INDEX CONCURRENTLY users_email_tmp ON users (email); DROP INDEX users_email_tmp"),
    ("drop-view", "DROP MATERIALIZED VIEW user_stats",
     "CREATE OR REPLACE VIEW user_stats AS SELECT count(*) FROM users"),
    ("drop-database", "DROP DATABASE old_app", "ALTER DATABASE old_app WITH ALLOW_CONNECTIONS false"),
    ("truncate", "TRUNCATE TABLE audit_log",
     "DELETE FROM audit_log WHERE created_at < now() - interval '90 days'"),
    ("delete-without-where", "DELETE FROM sessions", "DELETE FROM sessions WHERE expires_at < now()"),
    ("update-without-where", "UPDATE users SET active = true", "UPDATE users SET active = true WHERE active IS NULL"),
    ("update-without-where", "UPDATE users SET plan = p.name FROM plans p",
     "UPDATE users SET plan = p.name FROM plans p WHERE p.id = users.plan_id"),
    ("alter-column-type", "ALTER TABLE users ALTER COLUMN id TYPE bigint",
     "ALTER TABLE users ADD COLUMN id_new bigint"),
    ("alter-column-type", "ALTER TABLE users ALTER COLUMN id SET DATA TYPE bigint USING id::bigint",
     "ALTER TABLE users ALTER COLUMN id SET DEFAULT 0"),
    ("set-not-null", "ALTER TABLE users ALTER COLUMN email SET NOT NULL",
     "ALTER TABLE users ADD CONSTRAINT email_nn CHECK (email IS NOT NULL) NOT VALID"),
    ("volatile-default", "ALTER TABLE users ADD COLUMN token uuid NOT NULL DEFAULT gen_random_uuid()",
     "ALTER TABLE users ADD COLUMN token uuid"),
    ("volatile-default", "ALTER TABLE users ADD COLUMN seen_at timestamptz DEFAULT clock_timestamp()",
     "ALTER TABLE users ADD COLUMN seen_at timestamptz NOT NULL DEFAULT now()"),  # now() is STABLE: no rewrite
    ("volatile-default", "ALTER TABLE users ADD COLUMN n bigserial", "ALTER TABLE users ADD COLUMN n bigint DEFAULT 0"),
    ("create-index-blocking", "CREATE INDEX users_email_idx ON users (email)",
     "CREATE INDEX CONCURRENTLY users_email_idx ON users (email)"),
    ("create-index-blocking", "CREATE UNIQUE INDEX ON public.users USING btree (lower(email))",
     "CREATE TABLE public.invites (email text); CREATE UNIQUE INDEX ON invites USING btree (lower(email))"),
    ("add-foreign-key", "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id)",
     "ALTER TABLE orders ADD CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID;\n"
     "ALTER TABLE orders VALIDATE CONSTRAINT orders_user_fk"),
    ("add-foreign-key", "ALTER TABLE orders ADD COLUMN coupon_id int REFERENCES coupons (id)",
     "ALTER TABLE orders ADD COLUMN coupon_id int"),
    ("add-check", "ALTER TABLE orders ADD CONSTRAINT total_positive CHECK (total > 0)",
     "ALTER TABLE orders ADD CONSTRAINT total_positive CHECK (total > 0) NOT VALID"),
    ("add-unique", "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email)",
     "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_idx"),
    ("add-primary-key", "ALTER TABLE events ADD PRIMARY KEY (id)",
     "ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY USING INDEX events_id_idx"),
    ("rename-table", "ALTER TABLE users RENAME TO customers",
     "CREATE VIEW customers AS SELECT * FROM users"),
    ("rename-table", "ALTER TABLE users SET SCHEMA archive", "ALTER TABLE users RENAME CONSTRAINT a TO b"),
    ("rename-column", "ALTER TABLE users RENAME COLUMN name TO full_name",
     "ALTER TABLE users ADD COLUMN full_name text"),
    ("rename-column", "ALTER TABLE users RENAME name TO full_name",  # sqlglot misreads this one: tokens don't
     "ALTER TABLE users RENAME CONSTRAINT users_name_check TO users_full_name_check"),
    ("non-transactional", "CREATE INDEX CONCURRENTLY users_email_idx ON users (email)",
     "CREATE TABLE t (email text); CREATE INDEX ON t (email)"),
    ("non-transactional", "DROP INDEX CONCURRENTLY users_email_idx", "DROP INDEX users_email_idx"),
    ("non-transactional", "VACUUM (ANALYZE) users", "ANALYZE users"),
    ("non-transactional", "REINDEX INDEX CONCURRENTLY users_email_idx", "REINDEX INDEX users_email_idx"),
    ("non-transactional", "CREATE DATABASE reporting", "CREATE SCHEMA reporting"),
    ("non-transactional", "ALTER SYSTEM SET work_mem = '64MB'", "SET work_mem = '64MB'"),
    ("non-transactional", "BEGIN; UPDATE users SET a = 1 WHERE id = 2; COMMIT", "UPDATE users SET a = 1 WHERE id = 2"),
    ("in-transaction-block", "BEGIN;\nCREATE INDEX CONCURRENTLY users_email ON users (email);\nCOMMIT",
     "BEGIN; UPDATE users SET a = 1 WHERE id = 2; COMMIT;\nCREATE INDEX CONCURRENTLY users_email ON users (email)"),
    ("in-transaction-block", "START TRANSACTION; COMMIT AND CHAIN; VACUUM users",
     "BEGIN; SAVEPOINT s; ROLLBACK TO SAVEPOINT s; ROLLBACK; VACUUM users"),
    ("concurrently-on-partitioned", "CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM (1) TO (2);\n"
     "CREATE INDEX CONCURRENTLY events_at ON events (at)",
     "CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM (1) TO (2);\n"
     "CREATE INDEX CONCURRENTLY events_2025_at ON events_2025 (at)"),
    ("reindex-blocking", "REINDEX TABLE users", "REINDEX TABLE CONCURRENTLY users"),
    ("reindex-blocking", "REINDEX (VERBOSE) INDEX users_email_idx",
     "REINDEX (CONCURRENTLY, VERBOSE) INDEX users_email_idx"),
    ("lock-access-exclusive", "LOCK TABLE users IN ACCESS EXCLUSIVE MODE",
     "LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE"),
    ("lock-access-exclusive", "LOCK users, orders",  # ACCESS EXCLUSIVE is LOCK's default mode
     "CREATE TABLE staging (a int); LOCK staging"),
    ("not-null-without-default", "ALTER TABLE users ADD COLUMN tier text NOT NULL",
     "ALTER TABLE users ADD COLUMN tier text NOT NULL DEFAULT 'free'"),
    ("not-null-without-default", "ALTER TABLE users ADD COLUMN tier text DEFAULT NULL NOT NULL",
     "ALTER TABLE users ADD COLUMN tier text CHECK (tier IS NOT NULL), ADD COLUMN n int GENERATED ALWAYS AS "
     "(1) STORED NOT NULL"),
    ("opaque-statement", "DO $$ BEGIN UPDATE users SET a = 1 WHERE id = 2; END $$",
     "UPDATE users SET a = 1 WHERE id = 2"),
    ("no-lock-timeout", "ALTER TABLE users ADD COLUMN nickname text",
     "SET lock_timeout = '5s';\nALTER TABLE users ADD COLUMN nickname text"),
    ("no-statement-timeout", "LOCK TABLE users IN SHARE MODE",
     "SET statement_timeout TO '15min';\nLOCK TABLE users IN SHARE MODE"),
    # what static analysis does not read (generated: one INSERT over the per-statement bound; SQL over the total)
    ("statement-too-large", "INSERT INTO t VALUES " + ", ".join(["(1, 'x')"] * 20_000),
     "INSERT INTO t VALUES " + ", ".join(["(1, 'x')"] * 100)),
    ("analysis-limit", ";\n".join(["SELECT '" + "x" * 100_000 + "'"] * 6), ";\n".join(["SELECT 'x'"] * 6)),
]


@pytest.mark.parametrize(("rule_id", "bad", "safe"), CASES, ids=[f"{c[0]}:{c[1][:40]}" for c in CASES])
def test_each_finding_fires_on_the_risky_migration_and_not_on_the_safe_rewrite(rule_id: str, bad: str,
                                                                               safe: str) -> None:
    assert rule_id in ids(bad)
    assert rule_id not in ids(safe)


def test_every_finding_id_has_a_triggering_case() -> None:
    assert {c[0] for c in CASES} == set(RULES)


def test_finding_carries_severity_message_hint_file_line_and_statement() -> None:
    sql = "SET lock_timeout = '1s';\nSET statement_timeout = '1min';\n\nDELETE FROM sessions;\n"
    [f] = lint(split_sql(sql, "db/0007_purge.sql"))
    assert f == Finding(
        id="delete-without-where", severity="error", message="DELETE FROM sessions without WHERE deletes every row",
        hint=RULES["delete-without-where"].hint, file="db/0007_purge.sql", line=4, statement="DELETE FROM sessions")
    assert f.to_dict() == {"id": "delete-without-where", "severity": "error", "message": f.message, "hint": f.hint,
                           "file": "db/0007_purge.sql", "line": 4, "statement": "DELETE FROM sessions"}
    assert all(rule.severity in ("error", "warning", "info") and rule.hint and "\n" not in rule.hint
               for rule in RULES.values())


def test_messages_name_the_table_and_column() -> None:
    [f] = [f for f in lint([one('ALTER TABLE ONLY app."Users" ALTER COLUMN "Email" TYPE text')])
           if f.id == "alter-column-type"]
    assert f.message.startswith("ALTER TABLE app.Users ALTER COLUMN Email TYPE rewrites the table")
    [g] = [f for f in lint([one("ALTER TABLE users ADD COLUMN t uuid DEFAULT public.gen_random_uuid()")])
           if f.id == "volatile-default"]
    assert "gen_random_uuid()" in g.message


def test_every_action_of_a_multi_action_alter_table_is_checked_even_when_sqlglot_gives_up_on_one() -> None:
    # VALIDATE CONSTRAINT makes sqlglot keep the whole statement as an opaque Command
    found = ids("ALTER TABLE t VALIDATE CONSTRAINT fk, ALTER COLUMN a TYPE int, ADD COLUMN b numeric(10, 2) "
                "DEFAULT random(), ADD CONSTRAINT c CHECK (b > 0) NOT VALID, ADD CONSTRAINT d FOREIGN KEY (a) "
                "REFERENCES u (id)")
    assert {"alter-column-type", "volatile-default", "add-foreign-key"} <= set(found)
    assert "add-check" not in found  # NOT VALID belongs to its own action


def test_keywords_in_strings_and_comments_are_not_findings() -> None:
    sql = ("SET lock_timeout = '1s'; SET statement_timeout = '1min';\n"
           "-- DROP TABLE users;\n/* TRUNCATE users */\n"
           "INSERT INTO notes (body) VALUES ('DROP TABLE users; DELETE FROM users');\n"
           "ALTER TABLE users ADD COLUMN memo text DEFAULT 'random() SET NOT NULL'")
    assert ids(sql) == []


def test_objects_created_earlier_in_the_migration_are_not_flagged() -> None:
    sql = ("CREATE TABLE tmp_import (id int, email text);\n"
           "CREATE INDEX tmp_import_email ON tmp_import (email);\n"
           "ALTER TABLE tmp_import ALTER COLUMN email SET NOT NULL, ADD PRIMARY KEY (id);\n"
           "DELETE FROM tmp_import;\n"
           "DROP TABLE tmp_import;\n")
    assert ids(sql) == []
    # IF NOT EXISTS may have created nothing: the table may be an old one
    assert "create-index-blocking" in ids("CREATE TABLE IF NOT EXISTS t (a int); CREATE INDEX ON t (a)")


# --- hygiene: lock_timeout / statement_timeout -------------------------------------------------------------------


def hygiene(sql: str, file: str = "m.sql") -> list[tuple[str, int]]:
    return [(f.id, f.line) for f in lint(split_sql(sql, file)) if f.id.startswith("no-")]


def test_missing_timeouts_are_reported_once_per_file_at_the_first_lock_taking_statement() -> None:
    sql = ("SELECT 1;\n"
           "UPDATE users SET a = 1 WHERE id = 1;\n"  # row locks only: not the lock this rule is about
           "ALTER TABLE users ADD COLUMN b int;\n"
           "ALTER TABLE users ADD COLUMN c int;\n"
           "CREATE INDEX ON users (b);\n")
    assert hygiene(sql) == [("no-lock-timeout", 3), ("no-statement-timeout", 3)]


def test_a_timeout_set_before_the_lock_taking_statement_satisfies_the_rule() -> None:
    assert hygiene("SET lock_timeout = '2s';\nSET SESSION statement_timeout = 60000;\nDROP TABLE t;") == []
    assert hygiene("SELECT set_config('lock_timeout', '2s', false);\nSET LOCAL statement_timeout TO '1min';\n"
                   "TRUNCATE t;") == []
    # set after the statement, turned off, or reset: the statement ran without one
    assert hygiene("TRUNCATE t;\nSET lock_timeout = '2s';\nSET statement_timeout = '1min';") == [
        ("no-lock-timeout", 1), ("no-statement-timeout", 1)]
    assert hygiene("SET lock_timeout = 0;\nSET statement_timeout = '1min';\nTRUNCATE t;") == [("no-lock-timeout", 3)]
    assert hygiene("SET lock_timeout = '1s';\nSET statement_timeout = DEFAULT;\nTRUNCATE t;") == [
        ("no-statement-timeout", 3)]
    assert hygiene("SET lock_timeout = '1s';\nSET statement_timeout = '1s';\nRESET ALL;\nTRUNCATE t;") == [
        ("no-lock-timeout", 4), ("no-statement-timeout", 4)]


def test_each_file_is_its_own_session_unless_the_files_share_one_and_each_file_is_reported_once() -> None:
    first = split_sql("SET lock_timeout = '3s';\nALTER TABLE a ADD COLUMN x int;\nALTER TABLE a ADD COLUMN y int;",
                      "1.sql")
    second = split_sql("VACUUM FULL b;\nCLUSTER b USING b_pkey;", "2.sql")
    found = [(f.file, f.line, f.id) for f in lint(first + second) if f.id.startswith("no-")]
    # 1.sql's lock_timeout ends with its session: 2.sql has none; each missing setting is reported once per file
    assert found == [("1.sql", 2, "no-statement-timeout"), ("2.sql", 1, "no-lock-timeout"),
                     ("2.sql", 1, "no-statement-timeout")]
    found = [(f.file, f.line, f.id) for f in lint(first + second, one_session=True) if f.id.startswith("no-")]
    assert found == [("1.sql", 2, "no-statement-timeout"), ("2.sql", 1, "no-statement-timeout")]


def test_what_a_file_did_to_the_database_holds_for_later_files_but_its_open_transaction_does_not() -> None:
    first = split_sql("CREATE TABLE staging (a int);\nBEGIN;\nUPDATE t SET a = 1 WHERE b = 2;\n", "1.sql")
    second = split_sql("CREATE INDEX CONCURRENTLY ON t (a);\nDROP TABLE staging;\n", "2.sql")
    assert not {"drop-table", "in-transaction-block"} & {f.id for f in lint(first + second)}
    assert "in-transaction-block" in {f.id for f in lint(first + second, one_session=True)}


def test_statements_that_take_no_heavy_lock_need_no_timeout() -> None:
    sql = ("CREATE TABLE t (a int);\nCREATE INDEX ON t (a);\nINSERT INTO t SELECT 1;\n"
           "CREATE INDEX CONCURRENTLY users_a ON users (a);\nANALYZE users;\nCOMMENT ON TABLE t IS 'x'")
    assert hygiene(sql) == []


# --- parse errors --------------------------------------------------------------------------------------------------


def parse_error(sql: str, file: str = "m.sql") -> SqlError:
    with pytest.raises(SqlError) as err:
        lint(split_sql(sql, file))
    return err.value


def test_a_parse_error_names_file_line_and_column() -> None:
    sql = "SET lock_timeout = '1s';\n\nCREATE TABLE t (\n    a int,\n    b int REFERENCES\n);\n"
    err = parse_error(sql, "db/0001_init.sql")
    assert err.file == "db/0001_init.sql" and err.line == 6
    assert "db/0001_init.sql:6:" in str(err) and "line 6, column 1" in str(err)
    assert err.exit_code == 2


def test_a_parse_error_in_a_statement_that_starts_mid_line_gets_the_absolute_column() -> None:
    err = parse_error("SELECT 1; INSERT INTO t VALUES (1, 2")
    #                  1234567890123456789012345678901234567 -> the unclosed list ends at '2', column 36
    assert err.line == 1 and "line 1, column 36" in str(err)
    err = parse_error("SELECT 1;\nSELECT 2; INSERT INTO t\n  VALUES ((1)")
    assert err.line == 3 and "line 3, column 13" in str(err)


def test_a_statement_that_does_not_start_with_an_sql_command_is_a_parse_error() -> None:
    err = parse_error("SELECT 1;\n  SELEC 2;")
    assert err.line == 2 and "line 2, column 3" in str(err) and "'SELEC'" in str(err)
    assert parse_error("CHECKPOINT; misspelled").line == 1


def test_valid_postgres_that_sqlglot_cannot_parse_is_not_a_parse_error() -> None:
    sql = ("CLUSTER users USING users_pkey; NOTIFY jobs, 'go'; REASSIGN OWNED BY old_role TO new_role; "
           "CHECKPOINT; DISCARD ALL; START TRANSACTION; SAVEPOINT s; RELEASE SAVEPOINT s; END")
    lint(split_sql(sql, "m.sql"))


def test_statements_sqlglot_only_keeps_as_commands_never_crash_the_linter() -> None:
    sql = """
      CREATE EXTENSION IF NOT EXISTS pgcrypto; CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $f$
      BEGIN DROP TABLE x; RETURN NEW; END $f$; CREATE TRIGGER trg BEFORE UPDATE ON users FOR EACH ROW
      EXECUTE FUNCTION f(); ALTER TYPE mood ADD VALUE 'meh'; ALTER TABLE users ATTACH PARTITION p FOR VALUES FROM (1)
      TO (2); ALTER TABLE users ENABLE ROW LEVEL SECURITY; ALTER TABLE users OWNER TO app; CREATE POLICY p ON users
      USING (true); GRANT SELECT ON users TO app; REFRESH MATERIALIZED VIEW CONCURRENTLY mv; LOCK users;
      CALL archive(1); EXPLAIN SELECT 1; SHOW lock_timeout; RESET lock_timeout; ALTER DEFAULT PRIVILEGES GRANT
      SELECT ON TABLES TO app; SET search_path = app, public; MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN
      DELETE; COPY t FROM STDIN
    """
    found = lint(split_sql(sql, "m.sql"))
    assert "drop-table" not in {f.id for f in found}  # inside a function body: not run by the migration
    assert {f.id for f in found} <= set(RULES)


# --- touched tables ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "reads", "writes"), [
    ("INSERT INTO archive.orders SELECT o.* FROM orders o JOIN users u ON u.id = o.user_id",
     {"orders", "users"}, {"archive.orders"}),
    ("INSERT INTO t (a) VALUES (1)", set(), {"t"}),
    ("INSERT INTO t SELECT * FROM t", {"t"}, {"t"}),
    ("WITH old AS (SELECT id FROM users WHERE seen < now()) DELETE FROM sessions USING old WHERE sessions.uid = old.id",
     {"users"}, {"sessions"}),
    ("UPDATE users SET plan = p.name FROM billing.plans p WHERE p.id = users.plan_id", {"billing.plans"}, {"users"}),
    ('UPDATE "Users" SET a = (SELECT max(b) FROM Other) WHERE true', {"other"}, {"Users"}),
    ("DELETE FROM ONLY public.users WHERE id IN (SELECT user_id FROM bans)", {"bans"}, {"public.users"}),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", {"s"}, {"t"}),
    ("SELECT * FROM a, generate_series(1, 3) g", {"a"}, set()),
    ("CREATE TABLE t2 AS SELECT * FROM s.t1", {"s.t1"}, {"t2"}),
    ("CREATE TABLE orders (id int, user_id int REFERENCES users (id))", {"users"}, {"orders"}),
    ("CREATE VIEW v AS SELECT * FROM users", {"users"}, {"v"}),
    ("CREATE INDEX CONCURRENTLY i ON app.users (email)", set(), {"app.users"}),
    ("ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (uid) REFERENCES public.users (id) NOT VALID",
     {"public.users"}, {"orders"}),
    ("ALTER TABLE app.orders RENAME TO purchases", set(), {"app.orders", "app.purchases"}),
    ("ALTER TABLE t VALIDATE CONSTRAINT fk", set(), {"t"}),
    ("DROP TABLE IF EXISTS a, s.b CASCADE", set(), {"a", "s.b"}),
    ("TRUNCATE a, b", set(), {"a", "b"}),
    ("REFRESH MATERIALIZED VIEW CONCURRENTLY stats", set(), {"stats"}),
    ("DROP INDEX users_email_idx", set(), set()),
    ("DO $$ BEGIN DELETE FROM users; END $$", set(), set()),
    ("SET lock_timeout = '1s'", set(), set()),
])
def test_touched_gives_the_tables_read_and_written(sql: str, reads: set[str], writes: set[str]) -> None:
    assert touched(one(sql)) == (reads, writes)


def test_same_table_matches_an_unqualified_name_to_a_qualified_one() -> None:
    assert same_table("users", "public.users") and same_table("app.users", "app.users")
    assert not same_table("app.users", "public.users") and not same_table("users", "Users")


def test_touched_raises_a_parse_error_for_sql_that_does_not_parse() -> None:
    with pytest.raises(SqlError, match="column"):
        touched(one("SELECT (1"))


# --- allow lists ---------------------------------------------------------------------------------------------------


def findings_in(*files: tuple[str, str]) -> list[Finding]:
    return lint([st for name, sql in files for st in split_sql(sql, name)])


def test_allow_by_id_moves_every_finding_with_that_id_aside() -> None:
    found = findings_in(("a.sql", "DROP TABLE x; TRUNCATE y"), ("b.sql", "DROP TABLE z"))
    kept, ok = allowed(found, ["drop-table", "no-lock-timeout"])
    assert {(f.file, f.id) for f in ok} == {("a.sql", "drop-table"), ("b.sql", "drop-table"),
                                            ("a.sql", "no-lock-timeout"), ("b.sql", "no-lock-timeout")}
    assert {f.id for f in kept} == {"truncate", "no-statement-timeout"}
    assert len(kept) + len(ok) == len(found)


def test_allow_by_id_and_file_glob_only_in_matching_files() -> None:
    found = findings_in(("migrations/0042_drop_legacy.sql", "DROP TABLE legacy"),
                        ("migrations/0043_more.sql", "DROP TABLE other"),
                        ("hotfix/0042_drop_legacy.sql", "DROP TABLE third"))
    kept, ok = allowed(found, [{"id": "drop-table", "file": "migrations/0042_*.sql"}])
    assert [(f.file, f.id) for f in ok] == [("migrations/0042_drop_legacy.sql", "drop-table")]
    # a glob without a slash matches the base name, wherever the file is
    kept, ok = allowed(found, [{"id": "drop-table", "file": "0042_*.sql"}])
    assert sorted(f.file for f in ok) == ["hotfix/0042_drop_legacy.sql", "migrations/0042_drop_legacy.sql"]
    assert [f.file for f in kept if f.id == "drop-table"] == ["migrations/0043_more.sql"]


def test_bad_allow_entries_are_refused_with_every_problem() -> None:
    problems = allow_problems(["drop-tabel", {"id": "truncate", "files": "x"}, {"file": "*.sql"}, 42])  # type: ignore[list-item]
    assert len(problems) == 4
    assert "unknown finding id 'drop-tabel'" in problems[0] and "drop-table" in problems[0]
    assert "files" in problems[1]
    with pytest.raises(BadInput, match="drop-tabel"):
        allowed([], ["drop-tabel"])
    assert allow_problems(["truncate", {"id": "drop-table", "file": "m/*.sql"}]) == []


# --- the CLI -------------------------------------------------------------------------------------------------------


def shadow_lint(tmp_path: Path, *args: str) -> CliResult:
    return run_cli("lint", *args, state=tmp_path / "state", cwd=tmp_path, timeout=60, inherit=False,
                   env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})


def write(tmp_path: Path, name: str, sql: str) -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sql)
    return name


def test_cli_exits_1_on_an_error_level_finding_and_prints_location_id_and_hint(tmp_path: Path) -> None:
    f = write(tmp_path, "migrations/0042.sql", "SET lock_timeout = '1s';\nSET statement_timeout = '1min';\n"
              "ALTER TABLE users ADD COLUMN age int;\nDELETE FROM users;\n")
    result = shadow_lint(tmp_path, f)
    assert result.code == 1, result.err
    assert "migrations/0042.sql:4 error delete-without-where DELETE FROM users without WHERE" in result.out
    assert "hint: add a WHERE clause" in result.out
    assert "1 error, 0 warnings, 0 info, 0 allowed" in result.out


def test_cli_exits_0_with_only_warnings_or_when_the_errors_are_allowed(tmp_path: Path) -> None:
    warn = write(tmp_path, "warn.sql", "CREATE INDEX users_age ON users (age);\n")
    result = shadow_lint(tmp_path, warn)
    assert result.code == 0, result.err
    assert "warn.sql:1 warning create-index-blocking" in result.out
    bad = write(tmp_path, "bad.sql", "DROP TABLE users;\nTRUNCATE orders;\n")
    assert shadow_lint(tmp_path, bad, "--allow", "drop-table").code == 1
    result = shadow_lint(tmp_path, bad, "--allow", "drop-table", "--allow", "truncate,no-lock-timeout")
    assert result.code == 0, result.out
    assert "bad.sql:1 allowed drop-table" in result.out


def test_cli_json_lists_every_finding_as_a_dict_with_its_allowed_flag(tmp_path: Path) -> None:
    f = write(tmp_path, "m.sql", "SET lock_timeout = '1s';\nSET statement_timeout = '1min';\nDROP TABLE users;\n"
              "UPDATE t SET a = 1;\n")
    result = shadow_lint(tmp_path, "--json", f, "--allow", "drop-table")
    assert result.code == 1
    data = json.loads(result.out)
    assert [(d["id"], d["severity"], d["line"], d["allowed"]) for d in data] == [
        ("drop-table", "error", 3, True), ("update-without-where", "error", 4, False)]
    assert set(data[0]) == {"id", "severity", "message", "hint", "file", "line", "statement", "allowed"}
    assert data[1]["statement"] == "UPDATE t SET a = 1" and data[1]["file"] == "m.sql"


def test_cli_exits_2_on_a_parse_error_with_file_line_and_column(tmp_path: Path) -> None:
    f = write(tmp_path, "broken.sql", "SELECT 1;\nALTER TABLE t ADD COLUMN a int;\nINSERT INTO t VALUES (1;\n")
    result = shadow_lint(tmp_path, f)
    assert result.code == 2
    assert "broken.sql:3:" in result.err and "line 3, column 23" in result.err
    assert "Traceback" not in result.err


def test_cli_exits_2_on_an_unknown_allow_id_or_a_missing_file(tmp_path: Path) -> None:
    f = write(tmp_path, "m.sql", "SELECT 1;\n")
    result = shadow_lint(tmp_path, f, "--allow", "drop-tabel")
    assert result.code == 2 and "unknown finding id 'drop-tabel'" in result.err
    result = shadow_lint(tmp_path, "nope.sql")
    assert result.code == 2 and "nope.sql" in result.err


def test_lint_files_lints_files_together_in_order(tmp_path: Path) -> None:
    a = tmp_path / "1.sql"
    b = tmp_path / "2.sql"
    a.write_text("SET lock_timeout = '1s'; SET statement_timeout = '1s';\nCREATE TABLE t (a int);\n")
    b.write_text("CREATE INDEX ON t (a);\nDROP TABLE t;\nDROP TABLE u;\n")
    assert [(Path(f.file).name, f.line, f.id) for f in lint_files([a, b], one_session=True)] == [
        ("2.sql", 3, "drop-table")]
    assert [(Path(f.file).name, f.line, f.id) for f in lint_files([a, b])] == [
        ("2.sql", 3, "drop-table"), ("2.sql", 3, "no-lock-timeout"), ("2.sql", 3, "no-statement-timeout")]


# --- issue 13: sessions per file, SQL that does not parse, partitioned tables, dangerous statements (the CLI) -------


def test_cli_a_set_in_one_file_does_not_silence_the_next_file(tmp_path: Path) -> None:
    settings = write(tmp_path, "0001_settings.sql", "SET lock_timeout = '5s';\nSET statement_timeout = '1min';\n")
    migration = write(tmp_path, "a.sql", "ALTER TABLE users ADD COLUMN nickname text;\n")
    result = shadow_lint(tmp_path, settings, migration)
    assert result.code == 0, result.err
    assert "a.sql:1 warning no-lock-timeout" in result.out
    assert "a.sql:1 warning no-statement-timeout" in result.out


@pytest.mark.parametrize(("sql", "where", "says"), [
    ("CREATE TABLE t (a int,, b int);\n", "line 1, column 23", "two commas in a row"),
    ("SET lock_timeout = '1s';\nCREATE TABLE t (\n  a int,\n  b int,\n);\n", "line 4, column 8",
     "a comma right before ')'"),
    ("SET lock_timeout = '1s';\nALTER TABLE users ADD COLUMN x int\nCREATE INDEX users_x ON users (x);\n",
     "line 3, column 1", "CREATE INDEX starts a new statement before the one on line 2 ended: is a semicolon "
                         "missing at the end of line 2?"),
    ("UPDATE users SET a = 1\n  WHERE id = 2\nDELETE FROM sessions WHERE a = 1;\n", "line 3, column 1",
     "DELETE FROM starts a new statement before the one on line 1 ended: is a semicolon missing at the end of "
     "line 2?"),
    ("UPDATE users SET a = 1 WHERE;\n", "line 1, column 24", "something is missing after 'WHERE'"),
    ("ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0;\n", "line 1, column 43",
     "the statement ends with the '(' at line 1, column 38 still open: a ')' is missing"),
])
def test_cli_sql_that_does_not_parse_is_exit_2_with_file_line_column_in_plain_words(tmp_path: Path, sql: str,
                                                                                  where: str, says: str) -> None:
    f = write(tmp_path, "migrations/0007.sql", sql)
    result = shadow_lint(tmp_path, f)
    assert result.code == 2, result.out + result.err
    assert f"migrations/0007.sql:{where.split(',')[0].split()[1]}: cannot parse the SQL ({where}): {says}" \
        in result.err, result.err
    assert "sqlglot" not in result.err and "<class" not in result.err and "Traceback" not in result.err


def test_valid_statements_that_continue_on_a_line_starting_with_a_command_word_still_parse() -> None:
    sql = ("ALTER TABLE orders\n  ADD COLUMN a int,\n  DROP COLUMN b,\n  ALTER COLUMN c\n  DROP DEFAULT;\n"
           "ALTER TABLE orders ADD CONSTRAINT fk FOREIGN KEY (uid) REFERENCES users (id) ON\n  DELETE CASCADE ON\n"
           "  UPDATE SET NULL NOT VALID;\n"
           "CREATE TRIGGER trg BEFORE INSERT OR\n  UPDATE OF email OR\n  DELETE ON users FOR EACH ROW EXECUTE "
           "FUNCTION f();\n"
           "INSERT INTO t (a, b)\nSELECT a, b FROM s\nON CONFLICT (a) DO\nUPDATE SET b = excluded.b;\n"
           "WITH moved AS (DELETE FROM queue WHERE done RETURNING *)\nINSERT INTO archive SELECT * FROM moved;\n"
           "GRANT SELECT, INSERT,\n  UPDATE ON t TO app\n  WITH\n  GRANT OPTION;\n"
           "ALTER DEFAULT PRIVILEGES IN SCHEMA app\n  GRANT SELECT ON TABLES TO reader;\n"
           "CREATE SCHEMA s\n  CREATE TABLE x (a int)\n  CREATE VIEW y AS SELECT a FROM x;\n"
           "CREATE TEMP TABLE tt (a int) ON COMMIT\n  DELETE ROWS;\n"
           "MERGE INTO t USING s ON t.id = s.id\nWHEN MATCHED THEN\n  UPDATE SET a = s.a\nWHEN NOT MATCHED THEN\n"
           "  INSERT VALUES (s.id, s.a);\n"
           "ALTER PUBLICATION pub\n  DROP TABLE t;\n"
           "SELECT * FROM t WHERE a = 1 FOR NO KEY\nUPDATE SKIP LOCKED;\n"
           "ALTER TABLE t\n  DROP index;\n"
           "CREATE INDEX i ON ONLY payment (a);\n")
    lint(split_sql(sql, "m.sql"))


def test_cli_an_index_on_a_table_the_sql_shows_partitioned_gets_the_partition_recipe(tmp_path: Path) -> None:
    f = write(tmp_path, "m.sql", "SET lock_timeout = '1s';\nSET statement_timeout = '1min';\n"
              "CREATE TABLE payment_p2026_01 PARTITION OF payment FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');\n"
              "CREATE INDEX payment_customer ON payment (customer_id);\n"
              "CREATE INDEX payment_customer_id ON ONLY payment (customer_id);\n")
    result = shadow_lint(tmp_path, f)
    assert result.code == 0, result.err
    [line, hint] = [x for x in result.out.splitlines() if "m.sql:" in x or "hint:" in x]
    assert line.startswith("m.sql:4 warning create-index-blocking CREATE INDEX on payment, a partitioned table")
    assert "CONCURRENTLY" not in line
    assert "takes no CREATE INDEX CONCURRENTLY: CREATE INDEX … ON ONLY the table" in hint
    assert "ALTER INDEX <the parent's index> ATTACH PARTITION" in hint
    # CREATE INDEX CONCURRENTLY on it is refused by PostgreSQL: an error with the same recipe
    f = write(tmp_path, "c.sql", "CREATE TABLE IF NOT EXISTS payment (id int, paid date) PARTITION BY RANGE (paid);\n"
              "CREATE INDEX CONCURRENTLY payment_paid ON payment (paid);\n")
    result = shadow_lint(tmp_path, f)
    assert result.code == 1
    assert "c.sql:2 error concurrently-on-partitioned" in result.out and "non-transactional" not in result.out


def test_partitioned_tables_the_rehearsal_knows_change_the_hint() -> None:
    sql = 'CREATE INDEX ON public.payment (customer_id);\nCREATE INDEX ON "Orders" (a);\nCREATE INDEX ON users (a);'
    by_table = {f.message.split()[3].rstrip(","): f.hint for f in lint(split_sql(sql, "m.sql"),
                partitioned={"public.payment", 'public."Orders"'}) if f.id == "create-index-blocking"}
    assert "ON ONLY" in by_table["public.payment"] and "ON ONLY" in by_table["Orders"]
    assert by_table["users"] == RULES["create-index-blocking"].hint
    [f] = [f for f in lint(split_sql(sql, "m.sql")) if f.id == "create-index-blocking" and "payment" in f.message]
    assert f.hint == RULES["create-index-blocking"].hint  # nothing known: the usual hint


@pytest.mark.parametrize(("sql", "rule_id", "severity", "says"), [
    ("ALTER TABLE users ADD COLUMN tier text NOT NULL;", "not-null-without-default", "error",
     "ALTER TABLE users ADD COLUMN tier NOT NULL without a DEFAULT fails on a table that has rows"),
    ("REINDEX TABLE users;", "reindex-blocking", "warning",
     "REINDEX TABLE users without CONCURRENTLY blocks writes to the table"),
    ("LOCK TABLE users IN ACCESS EXCLUSIVE MODE;", "lock-access-exclusive", "warning",
     "LOCK TABLE users in ACCESS EXCLUSIVE mode blocks every read and write"),
    ("BEGIN;\nCREATE INDEX CONCURRENTLY users_email ON users (email);\nCOMMIT;", "in-transaction-block", "error",
     "CREATE INDEX CONCURRENTLY inside the transaction block that BEGIN at m.sql:3 opened: PostgreSQL refuses it"),
])
def test_cli_flags_dangerous_statements_with_id_severity_and_hint(tmp_path: Path, sql: str, rule_id: str,
                                                                  severity: str, says: str) -> None:
    f = write(tmp_path, "m.sql", "SET lock_timeout = '1s';\nSET statement_timeout = '1min';\n" + sql + "\n")
    result = shadow_lint(tmp_path, f)
    assert result.code == (1 if severity == "error" else 0), result.err
    lines = result.out.splitlines()
    [i] = [i for i, x in enumerate(lines) if f" {severity} {rule_id} " in x]
    assert says in lines[i] and lines[i + 1].strip() == f"hint: {RULES[rule_id].hint}"
    readme = (ROOT / "README.md").read_text()
    assert f"`{rule_id}`" in readme


def test_a_plan_says_its_sql_files_run_in_one_session(tmp_path: Path) -> None:
    from shadow.errors import PlanError
    from shadow.plan import load_plan

    write(tmp_path, "a.sql", "SELECT 1;\n")
    body = "version: 1\ntargets: {app: {kind: postgres, dsn: 'postgresql://x@127.0.0.1/db'}}\naction:\n  sql: a.sql\n"
    (tmp_path / "shadow.yaml").write_text(body)
    assert load_plan(tmp_path / "shadow.yaml", {}).action.one_session is False
    (tmp_path / "shadow.yaml").write_text(body + "  one_session: true\n")
    assert load_plan(tmp_path / "shadow.yaml", {}).action.one_session is True
    (tmp_path / "shadow.yaml").write_text(body + "  one_session: please\n")
    with pytest.raises(PlanError, match="action.one_session: 'please' is not true or false"):
        load_plan(tmp_path / "shadow.yaml", {})


# --- issue 13 item 16: ALTER TABLE actions PostgreSQL's grammar refuses, and strings that cannot be read -----------


@pytest.mark.parametrize(("sql", "where", "says"), [
    ("ALTER TABLE users ADD COLUM x int;\n", "line 1, column 31",
     "unexpected 'int': after ADD, 'COLUM' reads as the new column's name and 'x' as its type, and only constraints "
     "(NOT NULL, DEFAULT …, REFERENCES …) may follow them; is COLUMN misspelled?"),
    ("ALTER TABLE users DROP COLUMN;\n", "line 1, column 30", "the name of the column to drop is missing"),
    ("ALTER TABLE users\n  DROP COLUMN IF EXISTS,\n  DROP b;\n", "line 2, column 24",
     "the name of the column to drop is missing"),
    ("ALTER TABLE users DROP COLUMN a b;\n", "line 1, column 33", "unexpected 'b' after the name of the column to drop"),
    ("ALTER TABLE users ALTER COLUM a TYPE int;\n", "line 1, column 31", "unexpected 'a' after the column's name: "
     "ALTER [COLUMN] name takes TYPE, SET …, DROP … next; is COLUMN misspelled?"),
    ("ALTER TABLE users ALTER COLUMN a DROP NULL;\n", "line 1, column 39", "unexpected 'NULL' after ALTER COLUMN … "
     "DROP (it takes DEFAULT, NOT NULL, EXPRESSION or IDENTITY)"),
    ("ALTER TABLE users DORP COLUMN a;\n", "line 1, column 19", "unexpected 'DORP': PostgreSQL has no ALTER TABLE "
     "action that starts so (they start with ADD, DROP, ALTER, RENAME, SET …); is DROP misspelled?"),
    ("ALTER TABLE users ADD COLUMN x;\n", "line 1, column 31", "the new column's type is missing"),
    ("ALTER TABLE users ADD COLUMN select int;\n", "line 1, column 30",
     "the new column's name is missing: SELECT is a reserved word (a name spelled so must be written in double "
     "quotes)"),
    ("ALTER TABLE users RENAME COLUMN a b;\n", "line 1, column 35", "expected TO after the column's name, not 'b'"),
    ("ALTER TABLE users RENAME TO members, ADD COLUMN y int;\n", "line 1, column 19",
     "RENAME TO cannot be combined with other actions: PostgreSQL takes it only in an ALTER TABLE of its own"),
    ("ALTER TABLE users ADD COLUMN x int,;\n", "line 1, column 35", "a comma with no action after it"),
    ("ALTER TABLE users;\n", "line 1, column 18", "an action (ADD, DROP, ALTER …) is missing after the table's name"),
    ("ALTER TABLE payment ATTACH PARTITION p;\n", "line 1, column 39",
     "FOR VALUES … or DEFAULT after the partition's name is missing"),
    ("ALTER TABLE users ADD CONSTRAINT c CHEK (a > 0);\n", "line 1, column 36",
     "expected CHECK, UNIQUE, PRIMARY KEY, FOREIGN KEY or EXCLUDE after the constraint's name, not 'CHEK'"),
    ("ALTER TABLE users OWNER app;\n", "line 1, column 25", "unexpected 'app' after OWNER (it takes TO)"),
    ("UPDATE t SET a = B'12' WHERE id = 1;\n", "line 1, column 18",
     "a bit string (B'…') may hold only the digits 0 and 1, not '2'"),
    ("UPDATE t\n   SET a = X'1G'\n WHERE id = 1;\n", "line 2, column 12",
     "a hex string (X'…') may hold only the digits 0-9 and A-F, not 'G'"),
])
def test_cli_alter_table_actions_and_strings_postgresql_refuses_are_exit_2_with_line_column(
        tmp_path: Path, sql: str, where: str, says: str) -> None:
    # each statement here is refused by PostgreSQL 15 with a syntax error (or, for the strings, an invalid digit)
    f = write(tmp_path, "migrations/0007.sql", sql)
    result = shadow_lint(tmp_path, f)
    assert result.code == 2, result.out + result.err
    assert f"migrations/0007.sql:{where.split(',')[0].split()[1]}: cannot parse the SQL ({where}): {says}" \
        in result.err, result.err
    assert "sqlglot" not in result.err and "Traceback" not in result.err


def test_alter_table_errors_outside_the_plan_folder_quote_nothing_of_the_statement() -> None:
    sql = "ALTER TABLE users ADD COLUM secret_x int;\n"
    with pytest.raises(SqlError) as caught:
        lint(split_sql(sql, "m.sql", quote=False))
    assert str(caught.value) == ("m.sql:1: cannot parse the SQL (line 1, column 38): unexpected word after the new "
                                 "column's name and type, and only constraints (NOT NULL, DEFAULT …, REFERENCES …) may "
                                 "follow them; is COLUMN misspelled?")


# Each passes PostgreSQL 15's grammar (run against a cluster: no SQLSTATE 42601), except the last ones, from newer
# versions (STORAGE in a column definition: 16; SET EXPRESSION: 17; NOT NULL constraints, ENFORCED: 18).
VALID_ALTER_TABLES = [
    "ALTER TABLE users ADD COLUMN nickname text",
    "ALTER TABLE users ADD nickname text NOT NULL DEFAULT ''",
    'ALTER TABLE users ADD COLUMN IF NOT EXISTS nickname varchar(40) COLLATE "C"',
    "ALTER TABLE IF EXISTS ONLY public.users ADD IF NOT EXISTS score numeric(10, 2) CHECK (score >= 0)",
    "ALTER TABLE users * ADD COLUMN created timestamp(3) with time zone DEFAULT now()",
    "ALTER TABLE ONLY (users) ADD COLUMN x int",
    "ALTER TABLE users ADD COLUMN ratio double precision, ADD COLUMN code character varying(8) UNIQUE",
    "ALTER TABLE users ADD COLUMN span interval day to second(3), ADD COLUMN flags bit varying(8)",
    "ALTER TABLE users ADD COLUMN d decimal(5), ADD COLUMN n national character varying(3), "
    "ADD COLUMN ts timestamp without time zone, ADD COLUMN iv interval year to month, ADD COLUMN c \"char\"",
    "ALTER TABLE users ADD COLUMN tags text[] DEFAULT ARRAY['a', 'b'], ADD COLUMN grid int ARRAY[3], "
    "ADD COLUMN m int[][] NOT NULL DEFAULT '{}'",
    "ALTER TABLE users ADD COLUMN owner_id int REFERENCES users (id) ON DELETE SET NULL",
    "ALTER TABLE users ADD COLUMN total int GENERATED ALWAYS AS (a * 2) STORED",
    "ALTER TABLE users ADD COLUMN seq bigint GENERATED BY DEFAULT AS IDENTITY (START WITH 10)",
    "ALTER TABLE users ADD COLUMN x int NOT NULL DEFAULT 0 CONSTRAINT x_positive CHECK (x >= 0)",
    "ALTER TABLE users ADD COLUMN j jsonb DEFAULT '{}'::jsonb NOT NULL, ADD COLUMN p pg_catalog.int4",
    'ALTER TABLE users ADD COLUMN doc public."MyType", ADD COLUMN body text COMPRESSION pglz',
    "ALTER TABLE users ADD COLUMN int int, ADD COLUMN type text, ADD COLUMN name text, ADD COLUMN key text",
    'ALTER TABLE "Sales"."Ünïcode" ADD COLUMN "naïve name" text, ADD COLUMN naïve text, ADD "Total" money',
    'ALTER TABLE users ADD COLUMN U&"d\\0061t" text, ADD COLUMN U&"d!0061t2" UESCAPE \'!\' text',
    "ALTER TABLE users ADD CONSTRAINT users_a_check CHECK (a > 0) NOT VALID",
    "ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE USING INDEX users_email_idx",
    "ALTER TABLE users ADD PRIMARY KEY (id), ADD UNIQUE (email)",
    "ALTER TABLE users ADD FOREIGN KEY (a) REFERENCES other (id) NOT VALID",
    "ALTER TABLE users ADD EXCLUDE USING gist (a WITH =)",
    "ALTER TABLE users DROP COLUMN legacy, DROP legacy2 CASCADE",
    "ALTER TABLE users DROP COLUMN IF EXISTS legacy CASCADE",
    "ALTER TABLE users DROP IF EXISTS legacy RESTRICT",
    "ALTER TABLE users DROP CONSTRAINT IF EXISTS users_a_check, DROP CONSTRAINT c2 CASCADE",
    'ALTER TABLE users DROP COLUMN index, DROP COLUMN "select", DROP if, DROP COLUMN exists',
    "ALTER TABLE users ALTER COLUMN a TYPE bigint USING a::bigint",
    'ALTER TABLE users ALTER email SET DATA TYPE varchar(200) COLLATE "C"',
    "ALTER TABLE users ALTER COLUMN a SET DEFAULT 0, ALTER COLUMN email DROP DEFAULT",
    "ALTER TABLE users ALTER COLUMN a SET NOT NULL, ALTER COLUMN email DROP NOT NULL",
    "ALTER TABLE users ALTER COLUMN a SET STATISTICS 500, ALTER COLUMN email SET STORAGE EXTERNAL",
    "ALTER TABLE users ALTER COLUMN a SET (n_distinct = 100), ALTER COLUMN a RESET (n_distinct)",
    "ALTER TABLE users ALTER COLUMN total DROP EXPRESSION IF EXISTS",
    "ALTER TABLE users ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY",
    "ALTER TABLE users ALTER COLUMN id SET GENERATED BY DEFAULT RESTART WITH 100",
    "ALTER TABLE users ALTER COLUMN id SET INCREMENT BY 2, ALTER COLUMN id RESTART",
    "ALTER TABLE users ALTER COLUMN id DROP IDENTITY IF EXISTS",
    "ALTER TABLE users ALTER COLUMN email SET COMPRESSION lz4",
    "ALTER TABLE users ALTER type TYPE int4range, ALTER COLUMN data SET DATA TYPE text",
    "ALTER TABLE users ALTER CONSTRAINT users_fk DEFERRABLE INITIALLY DEFERRED",
    "ALTER TABLE users VALIDATE CONSTRAINT users_a_check",
    "ALTER TABLE users RENAME TO members",
    "ALTER TABLE users RENAME COLUMN email TO mail",
    "ALTER TABLE users RENAME email TO mail",
    "ALTER TABLE users RENAME CONSTRAINT users_a_check TO users_a_positive",
    "ALTER TABLE IF EXISTS users SET SCHEMA archive",
    "ALTER TABLE payment ATTACH PARTITION payment_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
    "ALTER TABLE payment ATTACH PARTITION public.payment_old DEFAULT",
    "ALTER TABLE payment ATTACH PARTITION payment_h0 FOR VALUES WITH (MODULUS 4, REMAINDER 0)",
    "ALTER TABLE payment DETACH PARTITION payment_2025 CONCURRENTLY",
    "ALTER TABLE payment DETACH PARTITION payment_2025 FINALIZE",
    "ALTER TABLE users ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY",
    "ALTER TABLE users NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY",
    "ALTER TABLE users DISABLE TRIGGER ALL, ENABLE REPLICA TRIGGER trg, ENABLE ALWAYS RULE r, ENABLE TRIGGER USER",
    "ALTER TABLE users OWNER TO CURRENT_USER",
    "ALTER TABLE users OWNER TO app_owner",
    "ALTER TABLE users CLUSTER ON users_pkey, SET WITHOUT CLUSTER",
    "ALTER TABLE users SET (fillfactor = 70, autovacuum_enabled = false), RESET (toast_tuple_target)",
    "ALTER TABLE users SET TABLESPACE pg_default, SET LOGGED",
    "ALTER TABLE users SET ACCESS METHOD heap",
    "ALTER TABLE users SET WITHOUT OIDS",
    "ALTER TABLE users INHERIT parent, NO INHERIT other_parent",
    "ALTER TABLE users OF user_type",
    "ALTER TABLE users NOT OF",
    "ALTER TABLE users REPLICA IDENTITY FULL",
    "ALTER TABLE users REPLICA IDENTITY USING INDEX users_pkey",
    "ALTER TABLE ALL IN TABLESPACE pg_default SET TABLESPACE fast NOWAIT",
    "ALTER TABLE users\n  ADD COLUMN a int,\n  DROP COLUMN b,\n  ALTER COLUMN c\n  DROP DEFAULT",
    "ALTER TABLE users ADD COLUMN x int /* why */ NOT NULL -- a comment\n DEFAULT 1",
    # newer than PostgreSQL 15
    "ALTER TABLE users ADD COLUMN body text STORAGE EXTERNAL",
    "ALTER TABLE users ALTER COLUMN total SET EXPRESSION AS (a * 3)",
    "ALTER TABLE users ADD CONSTRAINT users_a_not_null NOT NULL a",
    "ALTER TABLE users ALTER CONSTRAINT users_fk NOT ENFORCED",
]


@pytest.mark.parametrize("sql", VALID_ALTER_TABLES)
def test_valid_alter_table_forms_are_never_refused(sql: str) -> None:
    findings = lint(split_sql(sql + ";\n", "m.sql"))
    assert not [f for f in findings if f.id == "opaque-statement"], findings


def test_an_alter_table_action_newer_than_lint_is_reported_unchecked_not_refused(tmp_path: Path) -> None:
    f = write(tmp_path, "m.sql", "SET lock_timeout = '1s';\nSET statement_timeout = '1min';\n"
              "ALTER TABLE payment MERGE PARTITIONS (p1, p2) INTO p12;\n")
    result = shadow_lint(tmp_path, f)
    assert result.code == 0, result.err
    assert ("m.sql:3 info opaque-statement cannot check this ALTER TABLE: lint does not know the ALTER TABLE action "
            "MERGE (the rehearsal still runs it)") in result.out
