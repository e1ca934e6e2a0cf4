"""A throwaway PostgreSQL cluster made with the local server binaries (the ``local`` shadow backend).

``initdb`` into a temp dir labelled with the run id, its own port on 127.0.0.1 and its own socket dir,
scram password auth with a random password, torn down in ``stop()`` — which ``__exit__`` calls even when
start-up failed half way. ``initdb``/``postgres`` refuse to run as root, so as root the cluster runs as an
unprivileged system user (``postgres`` when it exists, else ``nobody``) that owns the temp dir.

The temp dir (``shadow-pg-<run id>-…``, :mod:`adapters.tempdirs`) holds ``shadow-labels.json``: the same labels a
shadow container carries (run id, owning pid and host), so ``shadow gc`` can tell a killed run's cluster from a
live one's (:func:`stop_leftover` stops the former; :func:`stop_servers_in` any server in any of shadow's temp dirs).
"""

from __future__ import annotations

import ctypes
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from adapters import tempdirs
from adapters.postgres.binaries import PgBinaries, binaries_for
from adapters.postgres.server import SHADOW_SETTINGS, SUPERUSER, Server
from shadow.errors import InfrastructureError
from adapters.tempdirs import LABELS_FILE, read_labels

PR_SET_PDEATHSIG = 1  # linux/prctl.h

TEMP_PREFIX = tempdirs.prefix("pg", None)
__all__ = ["LABELS_FILE", "LocalCluster", "TEMP_PREFIX", "read_labels", "stop_leftover", "stop_servers_in"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _unprivileged_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in (os.environ.get("SHADOW_PG_OS_USER") or "", "postgres", "nobody"):
        if not name:
            continue
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise InfrastructureError("running as root and no unprivileged user (postgres, nobody) to run a cluster as")


class LocalCluster(Server):
    """One ephemeral cluster; use as a context manager."""

    def __init__(self, label: str, binaries: PgBinaries | None = None, locale: str = "C.UTF-8",
                 warm: str | None = None, shadow: bool = False) -> None:
        self.label = label
        self.shadow = shadow  # a shadow's server: SHADOW_SETTINGS
        self.warm = warm  # the warm entry that may keep this cluster after the run (adapters.postgres.warm)
        self.binaries = binaries or binaries_for(None)
        self.locale = locale
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        self.root: Path | None = None
        self._user = _unprivileged_user()
        self._started = False

    # -- paths -------------------------------------------------------------------------------------------------
    @property
    def datadir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        assert self.root is not None
        return self.root / "sock"

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        return make_conninfo(
            host="127.0.0.1",
            port=self.port,
            dbname=dbname,
            user=user,
            password=password if password is not None else self.password,
            connect_timeout=10,
        )


    # -- lifecycle ---------------------------------------------------------------------------------------------
    def _run(self, args: list[str], die_with_parent: bool = False, **kw: object) -> subprocess.CompletedProcess[str]:
        """Run a server tool as the cluster's user. ``die_with_parent``: killed with the thread that runs it (a
        cluster started while the checkpoint is taken, PostgresTarget.shadow_server_ahead: initdb must not go on
        writing into a directory ``recover`` removes after this process was killed)."""
        extra: dict[str, object] = {}
        if self._user is not None:
            extra = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        if die_with_parent and (arm := _dies_with(os.getpid())) is not None:
            extra["preexec_fn"] = arm
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        return subprocess.run(args, capture_output=True, text=True, env=env, **extra, **kw)  # type: ignore[call-overload]

    def start(self) -> LocalCluster:
        self.root = tempdirs.make("pg", self.label, "local-cluster", self.warm)
        self.sockdir.mkdir()
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._user is not None:
            for p in (self.root, self.sockdir, pwfile):
                os.chown(p, self._user.pw_uid, self._user.pw_gid)
        init = self._run(
            [
                self.binaries.path("initdb"),
                "-D", str(self.datadir),
                "-U", SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E", "UTF8",
                f"--locale={self.locale}",
                "--no-sync",
            ],
            die_with_parent=True,
            timeout=120,
        )
        pwfile.unlink()
        if init.returncode != 0:
            raise InfrastructureError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        # Settings for a disposable copy: no durability needed, never reachable from outside.
        with open(self.datadir / "postgresql.conf", "a") as conf:
            conf.write(
                "\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sockdir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 50\nshared_buffers = 64MB\n"
                + "".join(f"{name} = {value}\n" for name, value in (SHADOW_SETTINGS if self.shadow else {}).items())
            )
        for attempt in range(5):
            self.port = free_port()
            started = self._run(
                [
                    self.binaries.path("pg_ctl"), "start", "-w", "-t", "60",
                    "-D", str(self.datadir),
                    "-l", str(self.root / "server.log"),
                    "-o", f"-p {self.port}",
                ],
                timeout=90,
            )
            if started.returncode == 0:
                self._started = True
                return self
            log = self.log_tail()
            if "could not bind" not in log and "already in use" not in log:
                break
        raise InfrastructureError(f"could not start a local PostgreSQL cluster: {self.log_tail() or started.stderr}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            assert self.root is not None
            return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return ""

    def is_running(self) -> bool:
        if not self._started:
            return False
        return self._run([self.binaries.path("pg_ctl"), "status", "-D", str(self.datadir)], timeout=30).returncode == 0

    def stop(self) -> None:
        """Stop the server and remove every file; safe to call twice and after a failed start."""
        if self.root is None:
            return
        if self._started:
            try:
                self._run([self.binaries.path("pg_ctl"), "stop", "-m", "immediate", "-w", "-D", str(self.datadir)], timeout=60)
            except subprocess.SubprocessError:
                pass
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None


def _dies_with(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn``: SIGKILL when the forking thread ends (PR_SET_PDEATHSIG; armed after the switch to the
    cluster's user, which would clear it), and exit at once if ``parent`` is already gone. None where there is no
    prctl (not Linux): ``recover`` still finds the directory by its labels. Resolved here, before the fork: the
    child of a threaded process must not import anything."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arm


def stop_leftover(root: Path) -> str:
    """Stop the server of a cluster whose owning process is gone; say what was done."""
    return stop_server(root / "data")


def stop_servers_in(root: Path, depth: int = 4) -> list[str]:
    """Stop every PostgreSQL server whose data dir lies in ``root`` (up to ``depth`` levels down), before the dir
    is removed: a cluster's ``data``, or one an action made in its HOME or in a git shadow's clone. Says what was
    done for each server that ran."""
    said = []
    for folder, dirs, files in os.walk(root):  # hidden dirs too (an action's HOME may hold ~/.local/…)
        if len(Path(folder).relative_to(root).parts) + 1 >= depth:
            dirs.clear()
        if "postmaster.pid" in files and _postmaster_pid(Path(folder)) is not None:
            said.append(stop_server(Path(folder)))
    return said


def stop_server(datadir: Path) -> str:
    """Stop the server of a data dir whose owning process is gone; say what was done.

    ``pg_ctl stop -m immediate`` from the binaries the server was started with (``postmaster.opts`` names them),
    run as the data dir's owner; if that cannot stop it, SIGQUIT (what immediate mode sends) then SIGKILL to the
    pid in ``postmaster.pid`` — but only while that pid is still this data dir's postmaster.
    """
    pid = _postmaster_pid(datadir)
    if pid is None:
        return "no postgres running"
    pg_ctl = _pg_ctl_of(datadir)
    if pg_ctl is not None:
        owner = datadir.stat()
        as_owner: dict[str, object] = {}
        if os.geteuid() == 0 and owner.st_uid != 0:
            as_owner = {"user": owner.st_uid, "group": owner.st_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        try:
            subprocess.run([str(pg_ctl), "stop", "-m", "immediate", "-w", "-t", "30", "-D", str(datadir)],
                           capture_output=True, env=env, timeout=60, **as_owner)  # type: ignore[call-overload]
        except (OSError, subprocess.SubprocessError):
            pass
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        if not _is_postmaster(pid, datadir):
            return f"postgres pid {pid} stopped"
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while _is_postmaster(pid, datadir) and time.monotonic() < deadline:
            time.sleep(0.05)
    if _is_postmaster(pid, datadir):
        raise InfrastructureError(f"postgres pid {pid} of {datadir} does not stop")
    return f"postgres pid {pid} stopped"


def _postmaster_pid(datadir: Path) -> int | None:
    """The pid in ``postmaster.pid`` while it is still that data dir's postmaster, else None."""
    try:
        pid = int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    return pid if _is_postmaster(pid, datadir) else None


def _is_postmaster(pid: int, datadir: Path) -> bool:
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        # The postmaster's command line names its data dir (pg_ctl starts it with -D); a reused pid does not.
        # A zombie has an empty command line: it is gone, only not reaped yet.
        try:
            return str(datadir) in proc.joinpath("cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
    try:  # no /proc: trust postmaster.pid, as pg_ctl itself does
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pg_ctl_of(datadir: Path) -> Path | None:
    try:
        postgres = shlex.split((datadir / "postmaster.opts").read_text().splitlines()[0])[0]
    except (OSError, ValueError, IndexError):
        return None
    pg_ctl = Path(postgres).parent / "pg_ctl"
    return pg_ctl if pg_ctl.is_file() else None
