"""Row values of secret columns never reach a report: a real run over data with planted secrets, every format."""

from __future__ import annotations

import hashlib
import json

import pytest

from shadow import redact, reports
from shadow.errors import PlanError
from shadow.plan import load_plan
from tests.conftest import write_plan

SECRETS = ("hunter2-PLANTED", "555-PLANTED-PHONE", "tok_PLANTED_KEY", "sk_PLANTED_API", "PLANTED-SSN-078")

SETUP = """
CREATE TABLE accounts (id int PRIMARY KEY, email text, "Password_Hash" text, phone text, ssn text, note text);
INSERT INTO accounts VALUES (1, 'a@example.com', 'hunter2-PLANTED-1', '+1-555-PLANTED-PHONE-1', 'PLANTED-SSN-078-1', 'old'),
                            (2, 'b@example.com', 'hunter2-PLANTED-2', '+1-555-PLANTED-PHONE-2', 'PLANTED-SSN-078-2', 'old'),
                            (3, 'c@example.com', 'hunter2-PLANTED-3', '+1-555-PLANTED-PHONE-3', 'PLANTED-SSN-078-3', 'old');
CREATE TABLE api_tokens (api_key text PRIMARY KEY, label text, secret text);
INSERT INTO api_tokens VALUES ('tok_PLANTED_KEY_1', 'ci', 'sk_PLANTED_API_1'), ('tok_PLANTED_KEY_2', 'bot', 'sk_PLANTED_API_2');
"""

# The action's SQL never spells a secret (static findings quote statements): it derives the new values.
SQL = """
SET lock_timeout = '5s';
SET statement_timeout = '1min';
UPDATE accounts SET "Password_Hash" = md5("Password_Hash"), phone = reverse(phone), ssn = ssn || '-x', note = 'visible-note'
  WHERE id <= 2;
DELETE FROM accounts WHERE id = 3;
INSERT INTO accounts SELECT 4, 'd@example.com', "Password_Hash" || '-4', phone || '-4', ssn || '-4', 'new' FROM accounts
  WHERE id = 1;
UPDATE api_tokens SET label = label || '-rotated', secret = reverse(secret) WHERE api_key IS NOT NULL;
"""

PLAN = """
version: 1
targets:
  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}
action:
  sql: change.sql
expect:
  app:
    may: [update rows public.accounts, insert rows public.accounts, delete rows public.accounts,
          update rows public.api_tokens]
    checks:
      - sql: select count(*) from accounts
        equals: 99
policy:
  redact: [public.accounts.phone, "ss?"]
"""


def _planted(text: str) -> list[str]:
    derived = [hashlib.md5(f"hunter2-PLANTED-{i}".encode()).hexdigest() for i in (1, 2)]
    derived += [f"+1-555-PLANTED-PHONE-{i}"[::-1] for i in (1, 2)] + [f"sk_PLANTED_API_{i}"[::-1] for i in (1, 2)]
    return [s for s in (*SECRETS, *derived, "PLANTED") if s in text]


def test_no_format_shows_a_redacted_value_of_a_real_run(prod_db, shadow_cli, tmp_path):
    prod_db.execute(SETUP)
    write_plan(tmp_path, PLAN, {"change.sql": SQL})
    planned = shadow_cli("plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn})
    assert planned.code == 1, planned.text  # the check fails: a failed run reports everything
    assert _planted(planned.text) == []
    m = json.loads(planned.out)
    run_id = m["run_id"]

    # The samples are there (so the test would see a leak), with the secret cells replaced.
    changes = {c["address"]: c["detail"] for c in m["targets"][0]["changes"]}
    updated = changes["update rows public.accounts"]["sample_rows"]
    assert [s["key"] for s in updated] == [{"id": "1"}, {"id": "2"}]
    first = updated[0]
    assert first["before"] == {"id": "1", "email": "a@example.com", "Password_Hash": "[redacted]",
                               "phone": "[redacted]", "ssn": "[redacted]", "note": "old"}
    assert first["after"]["note"] == "visible-note" and first["after"]["Password_Hash"] == "[redacted]"
    inserted = changes["insert rows public.accounts"]["sample_rows"][0]
    assert inserted["before"] is None and inserted["after"]["phone"] == "[redacted]"
    deleted = changes["delete rows public.accounts"]["sample_rows"][0]
    assert deleted["after"] is None and deleted["before"]["ssn"] == "[redacted]"
    tokens = changes["update rows public.api_tokens"]
    assert tokens["sample_keys"] == ["[redacted]", "[redacted]"]
    assert {s["after"]["label"] for s in tokens["sample_rows"]} == {"ci-rotated", "bot-rotated"}
    assert all(s["key"] == {"api_key": "[redacted]"} and s["after"]["secret"] == "[redacted]"
               for s in tokens["sample_rows"])
    assert m["redact"] == ["public.accounts.phone", "ss?"]

    run_dir = shadow_cli.state_dir / "runs" / run_id
    for fmt in reports.FORMATS:
        shown = shadow_cli("show", run_id, "--format", fmt)
        assert shown.code == 0, shown.text
        assert _planted(shown.out) == [], fmt
    md = shadow_cli("show", run_id).out
    assert "note: old → visible-note" in md or "Password_Hash: [redacted] → [redacted]" in md
    html = (run_dir / "report.html").read_text()
    assert '<td class="chg">visible-note</td>' in html and '<td class="chg">[redacted]</td>' not in html
    for path in run_dir.iterdir():
        assert _planted(path.read_text(errors="replace")) == [], path.name
    journal = (shadow_cli.state_dir / "journal.sqlite").read_bytes().decode("utf-8", "replace")
    assert _planted(journal) == []


def test_secret_looking_names_and_plan_globs():
    for column in ("password", "user_PASSWD", "api_key", "ApiKey", "x_token", "client-secret", "private_key_pem",
                   "credentials", "ssn", "card_number"):
        assert redact.is_redacted("public.t", column), column
    for column in ("email", "full_name", "note", "created_at", "id"):
        assert not redact.is_redacted("public.t", column), column
    patterns = ("phone", "users.email", "public.orders.*", '"Audit".who')
    assert redact.is_redacted("public.users", "phone", patterns)
    assert redact.is_redacted("public.users", "EMAIL", patterns)
    assert not redact.is_redacted("public.accounts", "email", patterns)
    assert redact.is_redacted("public.orders", "total_cents", patterns)
    assert redact.is_redacted('public."Audit"', "who", patterns)
    assert redact.row("public.users", {"phone": "1", "name": "x", "token": None}, patterns) == \
        {"phone": "[redacted]", "name": "x", "token": None}


def test_content_diffs_drop_lines_naming_a_secret_field():
    lines = ["--- before", "+++ after", '-  "password": "old-PLANTED",', '+  "password": "new-PLANTED",', "+  total: 3"]
    assert _planted("\n".join(redact.content_lines(lines))) == []
    assert redact.content_lines(lines)[-1] == "+  total: 3"


def test_policy_redact_must_be_a_list_of_globs(tmp_path):
    write_plan(tmp_path, PLAN.replace('redact: [public.accounts.phone, "ss?"]', "redact: phone"), {"change.sql": SQL})
    with pytest.raises(PlanError) as err:
        load_plan(tmp_path / "shadow.yaml", {"APP_DATABASE_URL": "postgresql://x@127.0.0.1/x"})
    assert "policy.redact" in str(err.value)
    write_plan(tmp_path, PLAN)
    plan = load_plan(tmp_path / "shadow.yaml", {"APP_DATABASE_URL": "postgresql://x@127.0.0.1/x"})
    assert plan.policy.redact == ("public.accounts.phone", "ss?")
