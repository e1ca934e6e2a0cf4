"""Removing a CLI run's containers after the run: ``python -m adapters.docker_remove ID…``, in a process of its own.

A CLI run that is done with its shadow's container hands it here (:func:`start`) instead of waiting while the engine
kills it and removes it with its anonymous volume — 1.2 s for a shadow holding 1 GB, 0.3 s for an empty one — and
exits. The container is already of no use to anyone: the run closed its connections, and its superuser password was
the run's own. Should this process die before it is done, the container is what any killed run leaves: its labels
name a process that is gone, so ``shadow gc`` and ``shadow recover`` remove it (:mod:`adapters.docker`).
"""

from __future__ import annotations

import os
import subprocess
import sys

MODULE = "adapters.docker_remove"


# What the remover needs of this process's environment to reach the same engine (DOCKER_HOST, DOCKER_CONFIG, an
# ssh:// engine's agent …) and to start: nothing else, so no credential of the run goes with it.
KEPT = ("PATH", "HOME", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR", "LANG")
KEPT_PREFIXES = ("DOCKER_", "SSH_", "LC_")


def start(container_ids: list[str]) -> bool:
    """Start the removal of ``container_ids`` in a session of its own, its output discarded; False when no process
    could be started (the caller removes them itself)."""
    env = {k: v for k, v in os.environ.items() if k in KEPT or k.startswith(KEPT_PREFIXES)}
    try:
        subprocess.Popen([sys.executable, "-m", MODULE, *container_ids], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                         env=env)
    except OSError:
        return False
    return True


def remove(container_ids: list[str]) -> int:
    """Kill and remove each container with its anonymous volumes; 0 when none is left, 1 otherwise."""
    from adapters.docker import client
    from shadow.errors import InfrastructureError

    try:
        c = client()
    except InfrastructureError:
        return 1
    left = 0
    try:
        for container_id in container_ids:
            try:
                c.api.remove_container(container_id, force=True, v=True)
            except Exception as exc:  # noqa: BLE001 - docker SDK errors; one already gone is removed
                left += getattr(getattr(exc, "response", None), "status_code", None) != 404
    finally:
        c.close()
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(remove(sys.argv[1:]))
