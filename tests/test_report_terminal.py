"""What `shadow plan` prints: progress per step with elapsed time, a summary table, colour only on a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
from pathlib import Path

from tests.conftest import start_cli, write_plan

ANSI = re.compile(r"\x1b\[")
PLAN = """
version: 1
targets:
  app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}
action:
  sql: change.sql
expect:
  app:
    may: [update rows public.users]
    checks:
      - sql: select count(*) from users
        equals: 1
"""
SQL = "SET lock_timeout = '5s';\nSET statement_timeout = '1min';\nUPDATE users SET full_name = upper(full_name) WHERE id < 10;\n"


def _on_a_terminal(tmp_path: Path, env: dict[str, str], *args: str) -> str:
    """The CLI with stdout and stderr on a pseudo-terminal; everything it wrote."""
    master, slave = pty.openpty()
    proc = start_cli(*args, state=tmp_path / "state", cwd=tmp_path, drop=("NO_COLOR",),
                     env={"TERM": "xterm-256color", "COLUMNS": "120", **env},
                     stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, text=False)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(300) == 1
    return b"".join(chunks).decode("utf-8", "replace")


def test_plan_prints_each_step_with_elapsed_time_and_a_summary_table_without_colour_off_a_terminal(
        prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, PLAN, {"change.sql": SQL})
    r = shadow_cli("plan", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 1, r.text
    assert not ANSI.search(r.out) and not ANSI.search(r.err)
    for step in ("checkpoint app", "shadow app", "rehearse", "observe app"):
        assert re.search(rf"^ *\d+\.\ds ✓ {step} \(\d+\.\d s\)$", r.err, re.M), (step, r.err)
    # a step that found a problem is never marked done
    assert re.search(r"^ *\d+\.\ds ✗ judge app \(\d+\.\d s\): 1 expectation\(s\) do not hold$", r.err, re.M), r.err
    assert re.search(r"^│? *app *│? *1 *│? *\+0 ~9 -0 *│? *1 ✓ 1 ✗", r.out, re.M), r.out
    assert "FAILED — the rehearsal does not meet the expectations" in r.out
    assert "check select count(*) from users — returned 500, expected 1" in r.out


def test_no_color_and_a_terminal(prod_db, tmp_path):
    write_plan(tmp_path, PLAN, {"change.sql": SQL})
    coloured = _on_a_terminal(tmp_path, {"APP_DATABASE_URL": prod_db.dsn}, "plan")
    assert ANSI.search(coloured), "a terminal gets colour (else this test proves nothing)"
    plain = _on_a_terminal(tmp_path, {"APP_DATABASE_URL": prod_db.dsn, "NO_COLOR": "1"}, "plan")
    assert not ANSI.search(plain), plain
    assert "✗ judge app" in plain and "1 expectation(s) do not hold" in plain and "FAILED" in plain


def test_quiet_prints_only_the_verdict_and_the_report_and_json_only_json(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, PLAN, {"change.sql": SQL})
    quiet = shadow_cli("plan", "-q", env={"APP_DATABASE_URL": prod_db.dsn})
    assert quiet.code == 1 and quiet.err == ""
    lines = quiet.out.splitlines()
    assert len(lines) == 2, quiet.out
    assert lines[0].startswith("FAILED: expectations failed — check select count(*) from users")
    assert re.fullmatch(r"run \d{8}-\d{6}-[0-9a-f]{6} · report: .+/report\.md", lines[1]), lines[1]

    as_json = shadow_cli("plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn})
    assert as_json.code == 1 and as_json.err == ""
    assert json.loads(as_json.out)["outcome"] == "failed"
