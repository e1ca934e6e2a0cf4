"""A disposable PostgreSQL container (the ``docker`` shadow backend), started through testcontainers.

The container is labelled with the run id (``adapters.docker.labels``), gets the plan's resource limits, runs
with durability off (a shadow is thrown away), and is removed in ``stop()`` — which ``__exit__`` calls even
when start-up failed half way — or, at the end of a CLI run, by a process of its own (``stop_soon()``). Images
are never built here: ``postgres:<major>`` by default (pulled by Docker as usual), or the plan's ``image:`` /
``SHADOW_POSTGRES_IMAGE`` (``{major}`` is replaced by the major version).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from adapters import docker_remove
from adapters.docker import Route, labels, route_to, start_network, this_engine
from adapters.postgres.server import SHADOW_SETTINGS, SUPERUSER, Server
from shadow.errors import InfrastructureError

DEFAULT_IMAGE = "postgres:{major}"  # unless the target's `image:` or SHADOW_POSTGRES_IMAGE names another
DURABILITY_OFF = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]


@dataclass(frozen=True)
class Limits:
    memory: str | None = None  # docker syntax: "512m", "2g"
    cpus: float | None = None
    pids: int | None = None

    def docker_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.memory:
            out["mem_limit"] = self.memory
        if self.cpus:
            out["nano_cpus"] = int(self.cpus * 1e9)
        if self.pids:
            out["pids_limit"] = self.pids
        return out


class ContainerServer(Server):
    """One PostgreSQL container; use as a context manager. Same surface as ``LocalCluster``."""

    def __init__(self, label: str, image: str, major: int, limits: Limits | None = None,
                 warm: str | None = None, shadow: bool = False) -> None:
        self.label = label
        self.shadow = shadow  # a shadow's server: SHADOW_SETTINGS
        self.warm = warm  # the warm entry that may keep this container after the run (adapters.postgres.warm)
        self.image = image
        self.major = major
        self.limits = limits or Limits()
        self.password = secrets.token_urlsafe(18)
        self.host = "127.0.0.1"
        self.port = 0
        self.route: Route | None = None
        self._container: Any = None

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        return make_conninfo(host=self.host, port=self.port, dbname=dbname, user=user,
                             password=password if password is not None else self.password, connect_timeout=10)

    def start(self, timeout: float = 120.0) -> ContainerServer:
        from testcontainers.core.container import DockerContainer

        container = DockerContainer(self.image)
        container.with_env("POSTGRES_USER", SUPERUSER).with_env("POSTGRES_PASSWORD", self.password)
        container.with_env("POSTGRES_DB", "postgres")
        # The image's initdb without its final fsync of every file (a local cluster's initdb is run so too): the
        # copy is thrown away, and up to 0.4 s of a 2 s start-up went to the sync here.
        container.with_env("POSTGRES_INITDB_ARGS", "--no-sync")
        # 127.0.0.1 only, unless the engine is elsewhere: then its host's interfaces (adapters.docker)
        container.ports["5432/tcp"] = (this_engine().publish_ip,)  # type: ignore[assignment]
        settings = SHADOW_SETTINGS if self.shadow else {}
        container.with_command(DURABILITY_OFF + [arg for name, value in settings.items()
                                                 for arg in ("-c", f"{name}={value}")])
        network = start_network()
        container.with_kwargs(labels=labels(self.label, "postgres-shadow", self.warm), **self.limits.docker_kwargs(),
                              **({"network": network} if network else {}))
        self._container = container
        try:
            container.start()
        except Exception as exc:  # noqa: BLE001 - docker/testcontainers raise many kinds
            raise InfrastructureError(
                f"could not start a PostgreSQL container from image {self.image!r}: {str(exc).strip()[:300]}"
            ) from exc
        # shadow's own route, not testcontainers' guess (see adapters.docker): from inside a container the guess is
        # the bridge gateway, where nothing is published, and the wait below would last its whole timeout.
        self.route = route_to(container.get_wrapped_container(), 5432, f"the PostgreSQL container from {self.image!r}")
        self.host, self.port = self.route.host, self.route.port
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        # Poll from this side of the published port, the way every client will connect. (The image's own
        # init-time server listens on no TCP address, so the first successful connection is the real server;
        # testcontainers' postgres wait execs psql in the container once a second, which costs ~0.3 s here.)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last = exc
            if not self.is_running():
                raise InfrastructureError(f"the PostgreSQL container from {self.image!r} exited: {self.log_tail()}")
            time.sleep(0.05)
        raise InfrastructureError(f"the PostgreSQL container from {self.image!r} did not accept connections "
                                  f"within {timeout:g} s on {self.route.via if self.route else self.host}: {last}")

    @property
    def container_id(self) -> str | None:
        wrapped = getattr(self._container, "_container", None)
        return getattr(wrapped, "id", None)

    def is_running(self) -> bool:
        try:
            wrapped = self._container.get_wrapped_container()
            wrapped.reload()
            return bool(wrapped.status == "running")
        except Exception:  # noqa: BLE001
            return False

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self._container.get_wrapped_container().logs(tail=lines).decode(errors="replace")
            return str(text)
        except Exception:  # noqa: BLE001
            return ""

    def stop(self) -> None:
        """Remove the container; safe to call twice and after a failed start."""
        if self._container is not None:
            try:
                self._container.stop()
            except Exception:  # noqa: BLE001 - already gone is fine; gc catches the rest by label
                pass
            self._container = None

    def stop_soon(self) -> None:
        """:meth:`stop`, but the engine's work (kill, remove, the data volume) is left to a process of its own
        (:mod:`adapters.docker_remove`): for a run whose process ends now. Waits as :meth:`stop` does when no such
        process can be started."""
        found = self.container_id
        if found is None or not docker_remove.start([found]):
            self.stop()
            return
        self._container = None
