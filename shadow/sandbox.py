"""``action.isolation: container``: the action runs where it can only touch its disposable copies.

During the rehearsal the action's container sits on an **internal** Docker network (no gateway: no outside
network, no host ports — production is unreachable by construction) that the shadow containers are attached to
under their target's name; the plan folder is mounted read-only, a scratch dir is writable, and the environment
is exactly what the plan hands over plus the shadows' endpoints — nothing of the host's. During apply the same
image runs the same command with the host's network, because there it must reach production.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from adapters.docker import client, labels
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

        The container is created, recorded in the run record, put under a :mod:`shadow.warden` (which kills and
        removes it should shadow die), and only then started."""
        start = time.monotonic()
        env = {k: v for k, v in env.items() if k != "PATH"}  # the image's own PATH
        env["HOME"] = SCRATCH
        volumes = {str(plan_folder): {"bind": WORKDIR, "mode": "ro"}} | {m: {"bind": m, "mode": "rw"} for m in mounts}
        if workdir:
            env["SHADOW_PLAN_DIR"] = WORKDIR
        user = f"{os.getuid()}:{os.getgid()}" if mounts else None
        with tempfile.TemporaryDirectory(prefix=f"shadow-scratch-{self.run_id}-") as scratch:
            Path(scratch).chmod(0o777)
            try:
                container = self._docker.containers.create(
                    self.image, ["sh", "-c", command], environment=env, working_dir=workdir or WORKDIR, user=user,
                    volumes=volumes | {scratch: {"bind": SCRATCH, "mode": "rw"}},
                    network=None if production else self.network.name,
                    network_mode="host" if production else None,
                    labels=labels(self.run_id, "action"), **self._bounds(),
                )
            except Exception as exc:  # noqa: BLE001
                return ActionResult(False, time.monotonic() - start, "container",
                                    f"could not create the action container from {self.image!r}: {exc}")
            guard = None
            try:
                guard = warden.spawn("container", container.id, stdout=subprocess.DEVNULL)
                launch.started(warden.identity(guard, launch.run_id, container=container.id))
                warden.let_go(guard)
                try:
                    container.start()
                except Exception as exc:  # noqa: BLE001
                    return ActionResult(False, time.monotonic() - start, "container",
                                        f"could not start the action container from {self.image!r}: {exc}")
                try:
                    code = int(container.wait(timeout=timeout)["StatusCode"])
                    error = None if code == 0 else f"the command exited with status {code}"
                    if code != 0 and self._oom_killed(container):
                        error = (f"the command was killed for using more memory than action.limits.memory allows "
                                 f"({self.limits.memory}; status {code})")
                except Exception:  # noqa: BLE001 - requests' ReadTimeout: the action ran too long
                    container.kill()
                    code, error = -1, f"the command timed out after {timeout:g} s and was killed"
                text = mask_secrets(container.logs().decode(errors="replace"), secrets)
            finally:
                container.remove(force=True)
                if guard is not None:
                    warden.release(guard)
        return finished(text, error, log_path, start, "container")
