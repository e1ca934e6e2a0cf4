"""What every docker-backed adapter shares: is an engine there, how its containers are labelled, and gc.

Every container shadow creates carries ``shadow.run-id`` (the run), ``shadow.pid`` and ``shadow.host`` (the
process that owns it), so ``shadow gc`` can find and remove what a killed run left behind without touching
containers of runs still alive.
"""

from __future__ import annotations

import os
import re
import socket
from functools import lru_cache
from typing import Any

from shadow.errors import InfrastructureError

LABEL_RUN = "shadow.run-id"
LABEL_PID = "shadow.pid"
LABEL_HOST = "shadow.host"
LABEL_ROLE = "shadow.role"


def labels(run_id: str, role: str) -> dict[str, str]:
    return {LABEL_RUN: run_id, LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname(), LABEL_ROLE: role}


def client() -> Any:
    """A docker SDK client (from the environment: DOCKER_HOST etc.), or InfrastructureError."""
    try:
        import docker

        c = docker.from_env(timeout=30)
        c.ping()
        return c
    except Exception as exc:  # noqa: BLE001 - docker raises many kinds; all mean "no engine"
        raise InfrastructureError(f"no Docker engine answers ({_first_line(exc)})") from exc


@lru_cache(maxsize=1)
def engine_answers() -> tuple[bool, str]:
    """(True, version) when a Docker engine answers, else (False, why not)."""
    try:
        c = client()
    except InfrastructureError as exc:
        return False, str(exc)
    try:
        return True, f"Docker engine {c.version().get('Version', '?')} answers"
    finally:
        c.close()


def owner_alive(container_labels: dict[str, str]) -> bool:
    """Whether the process that created a labelled container still runs (on this host)."""
    if container_labels.get(LABEL_HOST) != socket.gethostname():
        return True  # another machine's run: never ours to judge
    try:
        os.kill(int(container_labels.get(LABEL_PID, "0")), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def leftover_containers() -> list[Any]:
    c = client()
    return [k for k in c.containers.list(all=True, filters={"label": LABEL_RUN}) if not owner_alive(k.labels)]


def join_network(network: Any, container_id: str | None, name: str) -> str:
    """Attach a shadow's container to a sandbox network under the target's name; the alias an action uses."""
    if not container_id:
        raise InfrastructureError("an isolated action needs the docker backend")
    alias = re.sub(r"[^a-z0-9-]", "-", name.lower())
    try:
        network.connect(container_id, aliases=[alias])
    except Exception as exc:  # noqa: BLE001 - docker SDK errors
        raise InfrastructureError(f"could not attach the shadow of {name!r} to the sandbox network: {exc}") from exc
    return alias


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def remove_containers(run_id: str, role: str) -> list[str]:
    """Kill and remove the containers of ``run_id`` with ``role``; return the ids of any still there after."""
    c = client()
    try:
        wanted = {"label": [f"{LABEL_RUN}={run_id}", f"{LABEL_ROLE}={role}"]}
        for container in c.containers.list(all=True, filters=wanted):
            try:
                container.remove(force=True)  # force: SIGKILL first when it runs
            except Exception:  # noqa: BLE001 - gone meanwhile; the listing below is what counts
                pass
        return [k.id for k in c.containers.list(all=True, filters=wanted)]
    finally:
        c.close()
