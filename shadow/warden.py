"""The action's warden: no action process, nor anything it started, nor its container, outlives shadow.

A command action does not run as shadow's own child. shadow starts this module as a small separate process
(``python -I warden.py``, standard library only) in a **new session**; the warden makes itself a child
subreaper, then starts the command (``/bin/sh -c``) as its child and watches two things at once:

- the **control pipe** (its stdin) from shadow. shadow holds the write end for as long as it lives, so the
  kernel closes it when shadow dies, however it dies (SIGKILL, OOM). End of file means "shadow is gone, or
  asks you to stop": the warden SIGKILLs everything the action started and exits;
- the command itself. When it exits, whatever it left running in the background is stopped too, and the
  warden exits with the command's status.

Everything the action starts stays in the warden's session unless it calls ``setsid``, and everything whose
parent dies is re-parented to the warden (the subreaper), so "everything the action started" is: the
warden's session, plus the warden's descendants. Each process also inherits ``SHADOW_RUN_ID`` in its
environment, which is how ``shadow recover`` finds the stragglers when the warden itself was killed:
:func:`stop_run_processes` kills the recorded session and every process carrying the run's mark, and confirms
that none is left (zombies write nothing) before anything is restored.

For ``isolation: container`` the warden watches the action's container instead (``container ID``): end of file
kills and removes it.

shadow starts the warden, records its identity durably (:func:`identity`), and only then writes ``go``; the
command never starts before the run record can find it.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MARK = "SHADOW_RUN_ID"
GO = b"go\n"
DONE = b"done\n"
KILLED_STATUS = 128 + signal.SIGKILL
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


# -- the process table (Linux /proc) -------------------------------------------------------------------------
class Proc:
    __slots__ = ("pid", "ppid", "pgrp", "session", "state", "start")

    def __init__(self, pid: int, ppid: int, pgrp: int, session: int, state: str, start: int) -> None:
        self.pid, self.ppid, self.pgrp, self.session, self.state, self.start = pid, ppid, pgrp, session, state, start


def read_proc(pid: int) -> Proc | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    rest = raw[raw.rfind(")") + 2:].split()
    try:
        return Proc(pid, int(rest[1]), int(rest[2]), int(rest[3]), rest[0], int(rest[19]))
    except (IndexError, ValueError):
        return None


def table() -> dict[int, Proc]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (proc := read_proc(int(entry))) is not None:
            out[proc.pid] = proc
    return out


def marked(pid: int, run_id: str) -> bool:
    """Whether the process was started with ``SHADOW_RUN_ID=run_id`` in its environment."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or another user's (not ours to judge)
        return False
    return f"{MARK}={run_id}".encode() in env.split(b"\0")


def descendants(root: int, procs: dict[int, Proc]) -> set[int]:
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    out: set[int] = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo += children.get(pid, [])
    return out


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:  # another user's: it stays, and the caller sees it still living
            pass


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _living(pids: Iterable[int], procs: dict[int, Proc]) -> set[int]:
    return {p for p in pids if p in procs and procs[p].state not in ("Z", "X")}


# -- the warden process ---------------------------------------------------------------------------------------
def _prctl(option: int, value: int) -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the session and the run's mark still find the processes
        pass


def _die_with_parent() -> None:
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _stop_everything(me: int, session: int) -> int:
    """SIGKILL the warden's session and descendants (never the warden); return how many were stopped."""
    stopped: set[int] = set()
    for _ in range(200):
        procs = table()
        victims = _living((descendants(me, procs) | {p.pid for p in procs.values() if p.session == session})
                          - {me}, procs)
        if not victims:
            break
        _kill(victims)
        stopped |= victims
        _reap()
        time.sleep(0.01)
    _reap()
    return len(stopped)


def _wait_for(fds: list[int], child: subprocess.Popen[bytes] | None) -> bool:
    """Block until the control pipe says something or ``child`` exits; True when the pipe ended (stop all)."""
    while True:
        ready, _, _ = select.select(fds, [], [], 0.2 if len(fds) == 1 and child is not None else None)
        if 0 in ready:
            data = os.read(0, 64)
            if not data:
                return True
            if DONE in data:
                return False
        if child is not None and child.poll() is not None:
            return False


def _watch_process(command: str) -> int:
    me = os.getpid()
    session = os.getsid(0)
    child = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, process_group=0,
                             preexec_fn=_die_with_parent)
    fds = [0]
    try:
        fds.append(os.pidfd_open(child.pid))
    except (AttributeError, OSError):  # no pidfd: poll the child every 0.2 s
        pass
    if _wait_for(fds, child):
        try:
            os.killpg(child.pid, signal.SIGKILL)  # the command's own group at once, then every straggler
        except ProcessLookupError:
            pass
        _stop_everything(me, session)
        return KILLED_STATUS
    code = child.wait()
    left = _stop_everything(me, session)
    if left:
        sys.stderr.write(f"shadow: the action left {left} process(es) running when it exited; they were stopped\n")
    return code if code >= 0 else 128 - code


def _watch_container(container_id: str) -> int:
    if not _wait_for([0], None):
        return 0
    import docker  # only here: a container action's warden, with shadow's own Docker settings

    client = docker.from_env(timeout=30)
    container = client.containers.get(container_id)
    try:
        container.kill()
    except Exception:  # noqa: BLE001 - already stopped
        pass
    container.remove(force=True)
    return KILLED_STATUS


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # shadow decides; a terminal's Ctrl-C reaches shadow
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    if os.read(0, len(GO)) != GO:
        return 0  # shadow died before letting the action go: it never started
    mode, what = argv[1], argv[2]
    try:
        if mode == "container":
            return _watch_container(what)
        return _watch_process(what)
    except OSError as exc:
        sys.stderr.write(f"shadow: cannot start the command: {exc.strerror or exc}\n")
        return 127


# -- shadow's side ---------------------------------------------------------------------------------------------
def spawn(mode: str, what: str, **popen: Any) -> subprocess.Popen[bytes]:
    """Start a warden (not yet letting the action go) in a new session, with a control pipe on its stdin."""
    return subprocess.Popen([sys.executable, "-I", str(Path(__file__).resolve()), mode, what],
                            stdin=subprocess.PIPE, start_new_session=True, **popen)


def identity(warden: subprocess.Popen[bytes], run_id: str, container: str | None = None) -> dict[str, Any]:
    """What the run record keeps so that ``recover`` can find the action's processes after a crash."""
    proc = read_proc(warden.pid)
    return {"host": socket.gethostname(), "session": warden.pid, "start": proc.start if proc else None,
            "mark": run_id, "container": container}


def let_go(warden: subprocess.Popen[bytes]) -> None:
    assert warden.stdin is not None
    warden.stdin.write(GO)
    warden.stdin.flush()


def release(warden: subprocess.Popen[bytes]) -> None:
    """The watched container is gone: let its warden exit without doing anything."""
    try:
        assert warden.stdin is not None
        warden.stdin.write(DONE)
        warden.stdin.flush()
    except OSError:
        pass
    stop(warden)


def stop(warden: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """Close the control pipe (the warden kills everything and exits); SIGKILL the session if it will not."""
    try:
        if warden.stdin is not None:
            warden.stdin.close()
    except OSError:
        pass
    try:
        warden.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(warden.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        warden.wait()


def stop_run_processes(run_id: str, recorded: dict[str, Any] | None, wait: float = 15.0) -> list[int]:
    """SIGKILL every process of run ``run_id`` on this host — the recorded warden session when it is still the
    run's (:func:`_session_of_run`), its descendants and any process carrying the run's mark — and wait until
    none is left. Returns the pids that would not die, and those that may be the run's but cannot be told from
    another session's (they are left alone: the caller must not act as if they were gone)."""
    session = int(recorded["session"]) if recorded and recorded.get("session") else None
    start = recorded.get("start") if recorded else None
    deadline = time.monotonic() + wait
    while True:
        procs = table()
        victims: set[int] = set()
        unsure: set[int] = set()
        if session is not None:
            ours, unsure = _session_of_run(session, start, run_id, procs)
            victims |= ours
        victims |= {pid for pid in procs if pid != os.getpid() and marked(pid, run_id)}
        victims = _living(victims, procs)
        for pid in list(victims):
            victims |= _living(descendants(pid, procs), procs)
        unsure = _living(unsure, procs) - victims
        if not victims:
            return sorted(unsure)
        if time.monotonic() > deadline:
            return sorted(victims | unsure)
        _kill(victims)
        _reap()
        time.sleep(0.05)


def _session_of_run(session: int, start: int | None, run_id: str,
                    procs: dict[int, Proc]) -> tuple[set[int], set[int]]:
    """The members of the recorded session that are the run's, and those that cannot be told either way.

    A session id is not handed to a new process while any process still belongs to that session, so all its
    members come from one incarnation of it: the run's when its leader is the recorded warden (same start time)
    or when any member carries the run's mark. A leader with another start time means the pid was reused: the
    members are another session's and are never killed. No leader and no mark: unsure."""
    members = {p.pid for p in procs.values() if p.session == session}
    leader = procs.get(session)
    if leader is not None:
        return ((members | {session} | descendants(session, procs)) if leader.start == start else set()), set()
    if any(marked(pid, run_id) for pid in members):
        return members, set()
    return set(), {pid for pid in members if start is None or procs[pid].start >= start}


if __name__ == "__main__":
    sys.exit(main(sys.argv))
