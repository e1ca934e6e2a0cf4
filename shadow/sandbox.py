"""``action.isolation: container``: the action runs where it can only touch its disposable copies.

During the rehearsal the action's container sits on an **internal** Docker network (no gateway: no outside
network, no host ports — production is unreachable by construction) that the shadow containers are attached to
under their target's name; the plan folder is mounted read-only, a scratch dir is writable, and the environment
is exactly what the plan hands over plus the shadows' endpoints — nothing of the host's. During apply the same
image runs the same command with the host's network, because there it must reach production.

An engine that may not see this machine's files (``DOCKER_HOST=tcp://…`` or ``ssh://…``:
:func:`adapters.docker.engine_site`) gets a copy instead of mounts: the plan folder (without shadow's own state
dir, which holds production's dumps) is put into the created container at the same place, read-only to anyone
but root, and the scratch dir is a directory of the container; what the action writes there is discarded with
it. A git target's working copy cannot be copied in and back, so an action on one is refused there. "The host's
network" during apply is then the engine host's: production must be reachable from there.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from adapters.docker import EngineSite, client, labels, this_engine
from shadow import warden
from shadow.action import ActionResult, Launch, finished
from shadow.errors import InfrastructureError
from shadow.redact import mask_secrets

WORKDIR = "/plan"
SCRATCH = "/scratch"


class Sandbox:
    """An internal network for one run; use as a context manager (the network is removed on exit)."""

    def __init__(self, run_id: str, image: str, limits: Any = None) -> None:
        self.run_id = run_id
        self.image = image
        self.limits = limits  # action.limits (memory, cpus, pids): the action container's bounds
        self.network: Any = None
        self._docker: Any = None

    def __enter__(self) -> Sandbox:
        try:
            self._docker = client()
            # internal: no route out of the bridge. inhibit_ipv4: the host gets no address on the bridge either —
            # without it, an internal network still reaches every host service listening on 0.0.0.0 through
            # the gateway address (seen here on Docker 20.10).
            self.network = self._docker.networks.create(
                f"shadow-{self.run_id}", driver="bridge", internal=True, labels=labels(self.run_id, "sandbox-network"),
                options={"com.docker.network.bridge.inhibit_ipv4": "true"},
            )
        except InfrastructureError:
            raise
        except Exception as exc:  # noqa: BLE001 - docker SDK errors
            raise InfrastructureError(f"could not create the action's internal network: {exc}") from exc
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.network is not None:
            try:
                self.network.reload()
                for container in self.network.containers:
                    self.network.disconnect(container, force=True)
                self.network.remove()
            except Exception:  # noqa: BLE001 - `shadow gc` removes what is left (labelled)
                pass
        if self._docker is not None:
            self._docker.close()

    def _bounds(self) -> dict[str, Any]:
        """The container's resource bounds, from ``action.limits``: memory (no swap on top), CPUs, processes."""
        out: dict[str, Any] = {}
        if self.limits is None:
            return out
        if self.limits.memory:
            out["mem_limit"] = out["memswap_limit"] = self.limits.memory
        if self.limits.cpus:
            out["nano_cpus"] = int(self.limits.cpus * 1e9)
        if self.limits.pids:
            out["pids_limit"] = self.limits.pids
        return out

    @staticmethod
    def _oom_killed(container: Any) -> bool:
        try:
            container.reload()
            return bool(container.attrs.get("State", {}).get("OOMKilled"))
        except Exception:  # noqa: BLE001 - the exit status already says it failed
            return False

    def run(self, command: str, plan_folder: Path, env: dict[str, str], timeout: float, log_path: Path,
            secrets: tuple[str, ...], launch: Launch, production: bool = False, mounts: tuple[str, ...] = (),
            workdir: str | None = None) -> ActionResult:
        """Run ``command`` in the image; on the internal network, or on the host's during apply.

        ``mounts`` (host directories: a git working copy, its throwaway remote) appear read-write at the same paths,
        so every path the environment names holds inside too; the command then runs as this host's user, so what it
        writes there stays this user's. With ``workdir`` it runs there (``SHADOW_PLAN_DIR`` is the plan folder).
        On an engine that does not see this machine's files, ``mounts`` are refused (InfrastructureError) and the
        plan folder is copied in (see the module docstring).

        The container is created, recorded in the run record, put under a :mod:`shadow.warden` (which kills and
        removes it should shadow die), and only then started."""
        start = time.monotonic()
        site = this_engine()
        if mounts and not site.shares_files:
            raise InfrastructureError(
                f"action.isolation: container mounts a git target's working copy ({mounts[0]}) into the action's "
                f"container, and {site.describe()} may be on another host, where this machine's directories are "
                "not: run it with a Docker engine on this machine (DOCKER_HOST unset or unix://…), or without "
                "isolation"
            )
        env = _environment(env, workdir)
        user = f"{os.getuid()}:{os.getgid()}" if mounts else None
        scratch_dir = (tempfile.TemporaryDirectory(prefix=f"shadow-scratch-{self.run_id}-") if site.shares_files
                       else nullcontext(""))
        with scratch_dir as scratch:
            volumes: dict[str, dict[str, str]] = {}
            if site.shares_files:
                Path(scratch).chmod(0o777)
                volumes = ({str(plan_folder): {"bind": WORKDIR, "mode": "ro"}, scratch: {"bind": SCRATCH, "mode": "rw"}}
                           | {m: {"bind": m, "mode": "rw"} for m in mounts})
            try:
                container = self._create(command, env, workdir, user, volumes, production)
            except Exception as exc:  # noqa: BLE001
                return ActionResult(False, time.monotonic() - start, "container",
                                    f"could not create the action container from {self.image!r}: {exc}")
            ran = self._supervise(container, plan_folder, timeout, log_path, secrets, launch, site, start)
            if isinstance(ran, ActionResult):
                return ran
        text, error = ran
        return finished(text, error, log_path, start, "container")

    def _create(self, command: str, env: dict[str, str], workdir: str | None, user: str | None,
                volumes: dict[str, dict[str, str]], production: bool) -> Any:
        """The action's container, created (not started): on the internal network, or on the host's during apply."""
        return self._docker.containers.create(
            self.image, ["sh", "-c", command], environment=env, working_dir=workdir or WORKDIR, user=user,
            volumes=volumes,
            network=None if production else self.network.name,
            network_mode="host" if production else None,
            labels=labels(self.run_id, "action"), **self._bounds(),
        )

    def _supervise(self, container: Any, plan_folder: Path, timeout: float, log_path: Path,
                   secrets: tuple[str, ...], launch: Launch, site: EngineSite,
                   start: float) -> ActionResult | tuple[str, str | None]:
        """Run the created ``container`` under a :mod:`shadow.warden`, recorded in the run record first: (its
        output with ``secrets`` masked, the error or None) — or the result when it could not be started. The
        container is removed in any case."""
        guard = None
        try:
            guard = warden.spawn("container", container.id, stdout=subprocess.DEVNULL)
            launch.started(warden.identity(guard, launch.run_id, container=container.id))
            warden.let_go(guard)
            if not site.shares_files:
                problem = self._copy_in(container, plan_folder, _state_dir(log_path, self.run_id), site)
                if problem:
                    return ActionResult(False, time.monotonic() - start, "container", problem)
            try:
                container.start()
            except Exception as exc:  # noqa: BLE001
                return ActionResult(False, time.monotonic() - start, "container",
                                    f"could not start the action container from {self.image!r}: {exc}")
            error = self._wait(container, timeout)
            return mask_secrets(container.logs().decode(errors="replace"), secrets), error
        finally:
            container.remove(force=True)
            if guard is not None:
                warden.release(guard)

    def _wait(self, container: Any, timeout: float) -> str | None:
        """Wait for the started ``container``'s command: None when it exited 0, else what went wrong (killed when it
        runs longer than ``timeout``)."""
        try:
            code = int(container.wait(timeout=timeout)["StatusCode"])
            error = None if code == 0 else f"the command exited with status {code}"
            if code != 0 and self._oom_killed(container):
                error = (f"the command was killed for using more memory than action.limits.memory allows "
                         f"({self.limits.memory}; status {code})")
        except Exception:  # noqa: BLE001 - requests' ReadTimeout: the action ran too long
            container.kill()
            error = f"the command timed out after {timeout:g} s and was killed"
        return error

    @staticmethod
    def _copy_in(container: Any, plan_folder: Path, state_dir: Path | None, site: EngineSite) -> str | None:
        """Put the plan folder and an empty scratch dir into the created container; None, else why not."""
        try:
            with tempfile.TemporaryFile(prefix="shadow-plan-") as archive:
                _plan_archive(plan_folder, state_dir, archive)
                archive.seek(0)
                container.put_archive("/", archive)
        except Exception as exc:  # noqa: BLE001 - OSError reading the folder, docker SDK errors
            text = str(exc).strip().splitlines()
            return (f"could not copy the plan folder {plan_folder} into the action's container on "
                    f"{site.describe()}: {text[0][:300] if text else type(exc).__name__}")
        return None


def _environment(env: dict[str, str], workdir: str | None) -> dict[str, str]:
    """What the action's container gets: ``env`` less ``PATH`` (the image's own), ``HOME`` in the scratch dir, and
    ``SHADOW_PLAN_DIR`` when the command runs in a ``workdir`` of its own."""
    env = {k: v for k, v in env.items() if k != "PATH"}  # the image's own PATH
    env["HOME"] = SCRATCH
    if workdir:
        env["SHADOW_PLAN_DIR"] = WORKDIR
    return env


def _state_dir(log_path: Path, run_id: str) -> Path | None:
    """Shadow's state dir, when the action's log is in this run's folder of it (``<state>/runs/<run id>/``)."""
    run_dir = log_path.parent
    return run_dir.parent.parent if run_dir.name == run_id and run_dir.parent.name == "runs" else None


def _plan_archive(plan_folder: Path, state_dir: Path | None, into: IO[bytes]) -> None:
    """A tar of ``plan_folder`` at :data:`WORKDIR` (owned by root, read-only to anyone else) and an empty
    :data:`SCRATCH` anyone may write, for ``put_archive`` at ``/``. Leaves out shadow's ``state_dir`` when it is in
    the folder (the default ``.shadow`` is, for shadow run there): it holds production's dumps and every run's
    records."""
    skip = state_dir.resolve() if state_dir is not None else None

    def entry(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        inside = Path(info.name).relative_to(WORKDIR.lstrip("/"))
        if skip is not None and info.isdir() and (plan_folder / inside).resolve() == skip:
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode &= ~0o222
        return info

    with tarfile.open(fileobj=into, mode="w") as tar:
        tar.add(plan_folder, arcname=WORKDIR.lstrip("/"), filter=entry)
        scratch = tarfile.TarInfo(SCRATCH.lstrip("/"))
        scratch.type, scratch.mode = tarfile.DIRTYPE, 0o1777
        tar.addfile(scratch)
