"""A sampled lock trace for command actions on Postgres shadows (adapters.postgres.locksample)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from adapters.postgres.locksample import APPLICATION, LockSampler
from tests.conftest import BOTH_BACKENDS, write_plan
from tests.test_django import _run, project  # noqa: F401 - the example Django project at billing.0002

# The action: a Python script (psycopg, as a migration tool would use) on $DATABASE_URL, the shadow.
LOCKER = """
import sys, time, psycopg
with psycopg.connect(__import__("os").environ["DATABASE_URL"]) as conn:
    conn.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
    time.sleep(float(sys.argv[1]))
"""
IDLE = """
import os, time, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("SELECT 1")
    time.sleep(0.5)
"""


def plan(script: str, seconds: str = "", extra: str = "") -> str:
    return (f'targets: {{app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}}}\n'
            f'action: {{command: "{sys.executable} script.py {seconds}", timeout: 3s}}\n'
            f"expect: {{app: {{may: []}}}}\n{extra}")


@BOTH_BACKENDS
def test_a_command_holding_access_exclusive_shows_in_the_sampled_lock_trace(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, plan("script.py", "0.5"), {"script.py": LOCKER})
    r = shadow_cli("plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 0, r.text
    report = json.loads(r.out)
    [step] = report["action"]["rehearsal"]["locks"]
    assert step["statement"] == "command" and "script.py" in step["text"]
    assert step["sampled"]["samples"] > 0 and step["sampled"]["error"] is None
    held = {lock["relation"]: lock for lock in step["locks"]}
    assert held["public.orders"]["mode"] == "ACCESS EXCLUSIVE"
    assert held["public.orders"]["held_by"].startswith("shadow action ")
    assert "LOCK TABLE orders" in held["public.orders"]["held_by"]
    md = shadow_cli("show", report["run_id"]).out
    assert "## Lock trace (rehearsal)" in md and "public.orders" in md


def test_max_lock_judges_the_sampled_hold_of_a_command(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, plan("script.py", "0.8", 'policy: {max_lock: {"ACCESS EXCLUSIVE": 100ms}}\n'),
               {"script.py": LOCKER})
    r = shadow_cli("plan", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 1, r.text
    assert "max_lock ACCESS EXCLUSIVE on public.orders" in r.out


def test_a_command_that_locks_nothing_has_no_locks_in_its_trace(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, plan("script.py"), {"script.py": IDLE})
    r = shadow_cli("plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 0, r.text
    [step] = json.loads(r.out)["action"]["rehearsal"]["locks"]
    assert step["sampled"]["samples"] > 0
    assert step["locks"] == []


def test_a_killed_command_keeps_its_lock_trace(prod_db, shadow_cli, tmp_path):
    write_plan(tmp_path, plan("script.py", "60"), {"script.py": LOCKER})  # killed at the 3 s timeout
    r = shadow_cli("plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn})
    report = json.loads(r.out)
    assert "timed out" in report["action"]["rehearsal"]["error"]
    [step] = report["action"]["rehearsal"]["locks"]
    assert {(lock["relation"], lock["mode"]) for lock in step["locks"]} == {("public.orders", "ACCESS EXCLUSIVE")}


def test_the_sampler_stops_and_leaves_the_server_when_the_command_is_killed(prod_db, tmp_path: Path):
    script = tmp_path / "script.py"
    script.write_text(LOCKER)
    env = {"DATABASE_URL": prod_db.dsn, "PGAPPNAME": "killed locker"}
    with LockSampler(prod_db.dsn, "script.py") as sampler:
        proc = subprocess.Popen([sys.executable, str(script), "60"], env=env)
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert sampler.running
    assert not sampler.running
    assert sampler_sessions(prod_db.dsn) == 0
    assert [lock["relation"] for lock in sampler.trace()["locks"]] == ["public.orders"]


def test_a_migration_run_as_a_command_has_a_sampled_lock_trace_naming_it(project, shadow_cli):  # noqa: F811
    folder, db = project
    result, report = _run(shadow_cli, folder, db, "--no-round-trip")
    assert result.code == 0, result.text
    online = report["revisions"][0]
    assert (online["revision"], online["mode"]) == ("billing.0003_customer_tier", "online")
    [step] = online["run"]["action"]["rehearsal"]["locks"]
    assert step["statement"] == "command" and step["text"].endswith("migrate billing 0003_customer_tier --no-color -v 1")
    assert step["sampled"]["samples"] > 0
    # Its ACCESS EXCLUSIVE on public.customers lasts some 10 ms: sampled, it is seen most runs, not every one.


def sampler_sessions(dsn: str) -> int:
    """The sampler's sessions on the server, once a closed one has had time to exit (a backend leaves
    pg_stat_activity shortly after its client closes the connection)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(50):
            [(count,)] = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                      [APPLICATION]).fetchall()
            if count == 0:
                break
            time.sleep(0.1)
    return int(count)
