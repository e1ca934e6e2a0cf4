"""The CLI's spare maker (shadow.spares): after a run that used a warm copy, a detached ``shadow prepare-warm``
clones the next shadow ahead, and the next run renames it; a run that comes while it still works stops it instead
of going cold. Real CLI, real warm servers."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.postgres import warm
from tests.conftest import ProdDb, write_plan

PLAN = """
targets: {{app: {{kind: postgres, dsn: "{dsn}"}}}}
action: {{sql: migrate.sql}}
expect: {{app: {{may: ["update rows public.users"]}}}}
policy: {{warm: 10m}}
"""
SPARES_ON = {"SHADOW_WARM_SPARES": "1"}


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "state"
    yield folder
    warm.reap(folder / "warm" / "postgres", everything=True)


def _preparers(state: Path) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"{state} prepare-warm"], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def _spares(folder: Path) -> set[str]:
    [entry] = warm.entries(folder)
    with entry.server().connect(warm.ADMIN_DB) as conn:
        rows = conn.execute("SELECT datname, datallowconn FROM pg_database WHERE datname = ANY(%s)",
                            [warm.spare_names(entry.database)]).fetchall()
    assert all(not allowed for _, allowed in rows)  # whole and closed, like the golden
    return {name for name, _ in rows}


def _wait_for_no_preparer(state: Path) -> None:
    deadline = time.monotonic() + 60
    while _preparers(state):
        assert time.monotonic() < deadline, "the spare maker did not finish"
        time.sleep(0.05)


def test_after_a_warm_run_a_detached_process_clones_the_next_shadow_and_the_next_run_takes_it(
        prod_db: ProdDb, shadow_cli, tmp_path: Path, state: Path) -> None:
    write_plan(tmp_path, PLAN.format(dsn=prod_db.dsn), {"migrate.sql": "UPDATE users SET full_name = 'x' WHERE id = 1;\n"})
    folder = state / "warm" / "postgres"
    first = shadow_cli("plan", "--json", env=SPARES_ON)
    assert first.code == 0, first.text
    _wait_for_no_preparer(state)
    [entry] = warm.entries(folder)
    assert _spares(folder) == set(warm.spare_names(entry.database))  # made between the runs, by nobody's call
    second = shadow_cli("plan", "--json", env=SPARES_ON)
    assert second.code == 0, second.text
    assert json.loads(second.out)["targets"][0]["checkpoint"]["warm"]["reused"] is True
    _wait_for_no_preparer(state)
    assert _spares(folder) == set(warm.spare_names(entry.database))  # taken, and made again for the next
    off = shadow_cli("plan", "--json")  # SHADOW_WARM_SPARES=0 (the suite's default): nothing is left running
    assert off.code == 0 and _preparers(state) == [], off.text


PREPARER = """
import fcntl, os, signal, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
if sys.argv[3] == "preparer":
    open(sys.argv[2], "w").write(str(os.getpid()))
print("holding", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("holder", ["preparer", "another-run", "another-run-and-a-stale-note"])
def test_a_run_stops_a_preparer_holding_the_copy_but_never_anything_else(prod_db: ProdDb, shadow_cli, tmp_path: Path,
                                                                          state: Path, holder: str) -> None:
    """The copy's lock held by a process whose note and command line say it is a preparer: the run SIGTERMs it
    and leases the copy. Held by anything else (another run), even with a note a killed preparer left naming a pid
    that is some other process's now: the run goes cold, as before, and signals nobody."""
    write_plan(tmp_path, PLAN.format(dsn=prod_db.dsn), {"migrate.sql": "UPDATE users SET full_name = 'x' WHERE id = 1;\n"})
    assert shadow_cli("plan", "--json").code == 0
    folder = state / "warm" / "postgres"
    [entry] = warm.entries(folder)
    lock, note = folder / f"{entry.key}.lock", folder / f"{entry.key}.preparing"
    argv = [sys.executable, "-c", PREPARER, str(lock), str(note), holder]
    proc = subprocess.Popen(argv + (["prepare-warm"] if holder == "preparer" else []), stdout=subprocess.PIPE,
                            text=True)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        if holder == "another-run-and-a-stale-note":
            note.write_text(str(bystander.pid))
        leased, why = warm.lease(folder, entry.key)
        if holder == "preparer":
            assert leased is not None, why
            assert proc.wait(timeout=10) == -15  # it was told to stop, and it let go
            leased.release()
        else:
            assert leased is None and "in use by another run" in why
            assert proc.poll() is None and bystander.poll() is None  # nobody was signalled
    finally:
        for p in (proc, bystander):
            p.kill()
            p.wait()
