"""The action's warden with real processes: whatever an action starts — in the background, in a new session —
is stopped when the action exits, when it times out, and when shadow itself is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from shadow.action import Launch, run_command
from shadow.warden import marked, stop_run_processes


def _mark() -> str:
    return "test-" + uuid.uuid4().hex[:12]


def _alive(run_id: str) -> list[int]:
    out = []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and marked(pid, run_id):
            out.append(pid)
    return out


def _run(command: str, run_id: str, tmp_path: Path, timeout: float = 30) -> tuple[object, list[dict]]:
    recorded: list[dict] = []
    env = {"PATH": os.environ["PATH"], "SHADOW_RUN_ID": run_id}
    result = run_command(command, tmp_path, env, timeout, tmp_path / "action.log", (), Launch(run_id, recorded.append))
    return result, recorded


def test_background_processes_the_action_leaves_are_stopped_when_it_exits(tmp_path: Path) -> None:
    run_id = _mark()
    result, recorded = _run("sleep 300 & setsid sleep 301 & echo started", run_id, tmp_path)
    assert result.ok, result.error  # type: ignore[attr-defined]
    log = (tmp_path / "action.log").read_text()
    assert "started" in log and "the action left 2 process(es) running when it exited; they were stopped" in log
    assert _alive(run_id) == []
    assert recorded and recorded[0]["session"] and recorded[0]["mark"] == run_id


def test_a_timeout_stops_the_whole_tree_including_processes_in_a_new_session(tmp_path: Path) -> None:
    run_id = _mark()
    result, _ = _run("setsid sh -c 'sleep 300' & (sleep 302 &) ; sleep 300", run_id, tmp_path, timeout=1)
    assert not result.ok and "timed out after 1 s" in result.error  # type: ignore[attr-defined]
    assert _alive(run_id) == []


def test_the_action_never_starts_when_recording_it_fails(tmp_path: Path) -> None:
    run_id = _mark()

    def refuse(_identity: dict) -> None:
        raise OSError("disk full")

    env = {"PATH": os.environ["PATH"], "SHADOW_RUN_ID": run_id}
    try:
        run_command(f"touch {tmp_path / 'ran'}", tmp_path, env, 30, tmp_path / "a.log", (), Launch(run_id, refuse))
    except OSError:
        pass
    else:
        raise AssertionError("the failed record must propagate")
    time.sleep(0.3)
    assert not (tmp_path / "ran").exists() and _alive(run_id) == []


SHADOW_STAND_IN = """
import os, sys
from pathlib import Path
import adapters  # the entry points' import order (issue 14 untangles shadow.action's)
from shadow.action import Launch, run_command
run_id, folder = sys.argv[1], Path(sys.argv[2])
env = {"PATH": os.environ["PATH"], "SHADOW_RUN_ID": run_id}
run_command("setsid sleep 300 & (sleep 301 &); touch started; sleep 300", folder, env, 600, folder / "a.log", (),
            Launch(run_id, lambda identity: None))
"""


def test_nothing_of_the_action_outlives_a_sigkilled_shadow(tmp_path: Path) -> None:
    run_id = _mark()
    proc = subprocess.Popen([sys.executable, "-c", SHADOW_STAND_IN, run_id, str(tmp_path)])
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    assert len(_alive(run_id)) >= 4  # the warden, sh, and three sleeps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(run_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(run_id) == []


def test_recover_stops_stragglers_by_session_and_mark_when_the_warden_died_too(tmp_path: Path) -> None:
    run_id = _mark()
    env = {"PATH": os.environ["PATH"], "SHADOW_RUN_ID": run_id}
    # Stand-ins for what a killed warden leaves: one process in its session, one that left it (setsid).
    leader = subprocess.Popen(["sh", "-c", "sleep 300 & setsid sleep 301 & wait"], env=env, start_new_session=True)
    deadline = time.monotonic() + 10
    while len(_alive(run_id)) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    identity = {"session": leader.pid, "start": None}
    leader.send_signal(signal.SIGKILL)
    leader.wait()
    assert len(_alive(run_id)) == 2
    assert stop_run_processes(run_id, identity) == []
    assert _alive(run_id) == []


def _session_members(session: int, count: int) -> list[int]:
    from shadow.warden import table

    deadline = time.monotonic() + 10
    while True:
        members = sorted(p.pid for p in table().values() if p.session == session and p.state not in ("Z", "X"))
        if len(members) >= count:
            return members
        assert time.monotonic() < deadline, members
        time.sleep(0.05)


def _unmarked_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "SHADOW_RUN_ID"}


def test_recover_leaves_alone_another_session_that_reused_the_recorded_session_id(tmp_path: Path) -> None:
    # After pid reuse, the recorded session id belongs to somebody else's session: its leader's start time is not
    # the recorded warden's, and none of its members carries the run's mark.
    from shadow.warden import read_proc

    unrelated = subprocess.Popen(["sh", "-c", "sleep 300 & wait"], env=_unmarked_env(), start_new_session=True)
    try:
        members = _session_members(unrelated.pid, 2)
        leader = read_proc(unrelated.pid)
        assert leader is not None
        fabricated = {"session": unrelated.pid, "start": leader.start + 1}  # the recorded warden's, long gone
        assert stop_run_processes(_mark(), fabricated, wait=1) == []
        assert unrelated.poll() is None
        assert _session_members(unrelated.pid, 2) == members, "a member of an unrelated session was killed"
    finally:
        os.killpg(unrelated.pid, signal.SIGKILL)
        unrelated.wait()


def test_recover_reports_unmarked_members_of_a_leaderless_session_instead_of_killing_them(tmp_path: Path) -> None:
    # The leader is gone and no member carries the run's mark: they may be the action's (its environment scrubbed)
    # or another session's after pid reuse — never killed, and named, so that recover refuses to restore.
    from shadow.warden import read_proc

    leader = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300"], env=_unmarked_env(), start_new_session=True)
    session = leader.pid
    try:
        _session_members(session, 2)  # the shell and its background sleep
        proc = read_proc(session)
        assert proc is not None
        recorded = {"session": session, "start": proc.start}
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        left = _session_members(session, 1)
        assert stop_run_processes(_mark(), recorded, wait=1) == left
        assert _session_members(session, 1) == left, "an unconfirmed process was killed"
    finally:
        os.killpg(session, signal.SIGKILL)
