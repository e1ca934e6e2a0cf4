"""What every docker-backed adapter shares: is an engine there, how its containers are labelled, how this
process reaches them, and gc.

Every container shadow creates carries ``shadow.run-id`` (the run), ``shadow.pid`` and ``shadow.host`` (the
process that owns it), so ``shadow gc`` can find and remove what a killed run left behind without touching
containers of runs still alive.

**Where the engine is** (:func:`engine_site`, from ``DOCKER_HOST``) decides two things, separately:

- *its files*: only an engine reached through a socket on this machine (``DOCKER_HOST`` unset, ``unix://``,
  ``npipe://``) is taken to see this machine's paths, so that a bind mount of one shows its content. Any other
  (``tcp://``, ``ssh://``) may run on another host — even ``tcp://127.0.0.1:…`` can be a tunnel, or a daemon in
  another mount namespace — so what a container needs from this machine is copied into it, never mounted;
- *its loopback* (:func:`engine_is_local`): whether its 127.0.0.1 can be this process's.

**Routes.** A local engine publishes a shadow's ports on 127.0.0.1 only (never on an interface that faces a
network). That address is the engine's loopback, which is this process's only when it runs beside the engine, not
in one of its containers. An engine elsewhere publishes them on its host's interfaces (its 127.0.0.1 is out of
reach from here): put such an engine on a network only its clients reach. :func:`route_to` finds a way in, trying
in order, each with a short timeout:

1. the published port: on 127.0.0.1 when the engine is local — taken as it is when this process is not in one of
   the engine's containers (or shares the host's network), else only if it answers; on the host ``DOCKER_HOST``
   names when the engine is elsewhere, if it answers;
2. the container's own address on a network this process's container shares with it;
3. joining this process's container to the shadow container's network (it stays joined), and that address.

It fails within seconds naming every route it tried and why each failed. (testcontainers guesses instead, from
``/.dockerenv``, and inside a container picks the bridge gateway, where nothing is published.)
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from shadow.errors import InfrastructureError
from shadow.locks import held

LABEL_RUN = "shadow.run-id"
LABEL_PID = "shadow.pid"
LABEL_HOST = "shadow.host"
LABEL_ROLE = "shadow.role"
LABEL_WARM = "shadow.warm"  # a warm server's entry (adapters.postgres.warm): kept while that entry is unexpired


def labels(run_id: str, role: str, warm: str | None = None) -> dict[str, str]:
    """The labels of what a run creates; ``warm``: the entry that keeps it after the run (a warm server)."""
    found = {LABEL_RUN: run_id, LABEL_PID: str(os.getpid()), LABEL_HOST: socket.gethostname(), LABEL_ROLE: role}
    return {**found, LABEL_WARM: warm} if warm else found


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
    """Whether the process that created a labelled container still runs (on this host) — or, for a warm server,
    whether its entry still keeps it."""
    if container_labels.get(LABEL_HOST) != socket.gethostname():
        return True  # another machine's run: never ours to judge
    if _kept_warm(container_labels):
        return True
    try:
        os.kill(int(container_labels.get(LABEL_PID, "0")), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _kept_warm(found: dict[str, str]) -> bool:
    """A server labelled ``shadow.warm`` whose entry exists, names its run and has not expired."""
    where = found.get(LABEL_WARM)
    if not where:
        return False
    try:
        entry = json.loads(Path(where).read_text())
        if entry["run"] != found.get(LABEL_RUN):
            return False
        unexpired = time.time() < float(entry["used"]) + float(entry["keep"])
        return unexpired or held(Path(where).with_suffix(".lock"))  # a run leases it, even past its time
    except (OSError, ValueError, KeyError, TypeError):
        return False


def leftover_containers() -> list[Any]:
    c = client()
    return [k for k in _listed(c, {"label": LABEL_RUN}) if not owner_alive(k.labels)]


def _listed(c: Any, filters: dict[str, Any]) -> list[Any]:
    """The containers matching ``filters``; one removed between the listing and its inspection (another run's gc,
    its own run ending) is skipped — the SDK's ``containers.list()`` raises NotFound then."""
    from docker.errors import NotFound

    out = []
    for row in c.api.containers(all=True, filters=filters):
        try:
            out.append(c.containers.get(row["Id"]))
        except NotFound:
            continue
    return out


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
        for container in _listed(c, wanted):
            try:
                container.remove(force=True)  # force: SIGKILL first when it runs
            except Exception:  # noqa: BLE001 - gone meanwhile; the listing below is what counts
                pass
        return [row["Id"] for row in c.api.containers(all=True, filters=wanted)]
    finally:
        c.close()


# -- routes from this process to its own containers (see the module docstring) ----------------------------------

PROBE_SECONDS = 1.0  # a route that does not answer a TCP connect within this is not a route


@dataclass(frozen=True)
class Route:
    """How this process reaches a container's port: ``host:port``, and in words how it was found."""

    host: str
    port: int
    via: str


@dataclass(frozen=True)
class Candidate:
    """A route worth trying. ``kind``: published (127.0.0.1), shared (a network both are on), join (join it)."""

    kind: str
    host: str
    port: int
    network: str = ""

    def describe(self) -> str:
        if self.kind == "published":
            return f"the published port {self.host}:{self.port}"
        if self.kind == "shared":
            return f"the container's address {self.host}:{self.port} on network {self.network!r}"
        return f"joining this container to network {self.network!r}"


def engine_is_local(docker_host: str | None) -> bool:
    """Whether the engine runs on this machine, so its 127.0.0.1 can be this process's (DOCKER_HOST unset, a unix
    socket, or TCP to a loopback address)."""
    if not docker_host or docker_host.startswith(("unix://", "npipe://")):
        return True
    host = urlparse(docker_host).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


@dataclass(frozen=True)
class EngineSite:
    """Where the Docker engine is, as this process sees it (see the module docstring)."""

    docker_host: str  # DOCKER_HOST as given; "" when unset
    shares_files: bool  # a bind mount of a path of this machine shows that path's content
    shares_loopback: bool  # its 127.0.0.1 can be this process's (engine_is_local)
    host: str  # where its published ports are reached from here

    @property
    def publish_ip(self) -> str:
        """The address a shadow's port is published on: the engine's loopback when that can be ours, else its
        host's every interface (its loopback would be out of this process's reach)."""
        return "127.0.0.1" if self.shares_loopback else "0.0.0.0"

    def describe(self) -> str:
        return f"the Docker engine at DOCKER_HOST={self.docker_host}" if self.docker_host else "the Docker engine"


def engine_site(docker_host: str | None) -> EngineSite:
    """Where the engine ``docker_host`` (a DOCKER_HOST value, None when unset) is."""
    loopback = engine_is_local(docker_host)
    return EngineSite(docker_host=docker_host or "",
                      shares_files=not docker_host or docker_host.startswith(("unix://", "npipe://")),
                      shares_loopback=loopback,
                      host="127.0.0.1" if loopback else urlparse(docker_host or "").hostname or "")


def this_engine() -> EngineSite:
    """Where the engine this process's Docker client talks to is (``DOCKER_HOST``, as the client reads it)."""
    return engine_site(os.environ.get("DOCKER_HOST"))


_CONTAINER_ID = re.compile(r"(?:/containers/|/docker/|docker-)([0-9a-f]{64})(?:[/.:\s]|$)")


def own_container_id(mountinfo: str, cgroup: str, hostname: str) -> list[str]:
    """Ids this process's container may have, best first: from the engine's bind mounts (/etc/hostname …) in
    mountinfo, from cgroup v1 paths, and the hostname (Docker's default is the short id)."""
    found: list[str] = []
    for text in (mountinfo, cgroup):
        for match in _CONTAINER_ID.finditer(text):
            if match.group(1) not in found:
                found.append(match.group(1))
    if re.fullmatch(r"[0-9a-f]{12,64}", hostname) and hostname not in found:
        found.append(hostname)
    return found


def plan_routes(port: int, published: int | None, shadow_networks: dict[str, str], engine_local: bool,
                runner_networks: dict[str, str] | None, runner_mode: str = "",
                engine_host: str = "") -> list[Candidate]:
    """The routes to try, in order. ``shadow_networks``: network name → the container's address there;
    ``runner_networks``: the same for this process's container, None when it runs in none of the engine's;
    ``engine_host``: where an engine that is not local publishes (the host DOCKER_HOST names), "" for none."""
    out: list[Candidate] = []
    if engine_local and published:
        out.append(Candidate("published", "127.0.0.1", published))
    elif engine_host and published:
        out.append(Candidate("published", engine_host, published))
    if runner_networks is None or runner_mode in ("host", "none") or runner_mode.startswith("container:"):
        return out
    for name, address in sorted(shadow_networks.items()):
        if name in runner_networks and address:
            out.append(Candidate("shared", address, port, name))
    for name in sorted(shadow_networks):
        if name not in runner_networks:
            out.append(Candidate("join", "", port, name))
    return out


def probe(host: str, port: int, timeout: float = PROBE_SECONDS, refused_is_route: bool = False) -> str | None:
    """None when ``host:port`` is a route (a TCP connect succeeds; with ``refused_is_route`` a refusal too: the
    container answered, its server just does not listen yet), else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return None if refused_is_route else "connection refused"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _own_container(c: Any) -> Any | None:
    """This process's container, when it is one of this engine's; else None."""
    def read(path: str) -> str:
        try:
            return Path(path).read_text(errors="replace")
        except OSError:
            return ""

    for cid in own_container_id(read("/proc/self/mountinfo"), read("/proc/self/cgroup"), socket.gethostname()):
        try:
            found = c.containers.get(cid)
        except Exception:  # noqa: BLE001 - not one of this engine's containers
            continue
        if found.status == "running":
            return found
    return None


def _networks(container: Any) -> dict[str, str]:
    container.reload()
    nets = container.attrs.get("NetworkSettings", {}).get("Networks") or {}
    return {name: str(n.get("IPAddress") or "") for name, n in nets.items()}


def _published(container: Any, port: int) -> int | None:
    bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{port}/tcp") or []
    for binding in bindings:
        if binding.get("HostIp") in ("127.0.0.1", "0.0.0.0", "") and binding.get("HostPort"):
            return int(binding["HostPort"])
    return None


def start_network() -> str | None:
    """The network to start a shadow container on: None (the engine's default, or testcontainers' pick, this
    process's own network) unless this process runs in a container of the engine with no network a container can
    share (``host``, ``none``, ``container:…``); then the default ``bridge`` — testcontainers would put the shadow
    in ``none`` too, out of every route's reach."""
    c = client()
    try:
        runner = _own_container(c)
        mode = str(runner.attrs.get("HostConfig", {}).get("NetworkMode") or "") if runner is not None else ""
        return "bridge" if mode in ("host", "none") or mode.startswith("container:") else None
    finally:
        c.close()


def route_to(container: Any, port: int, what: str) -> Route:
    """A route from this process to ``port`` of ``container`` (a docker SDK container whose port is published on
    :attr:`EngineSite.publish_ip`), or InfrastructureError naming every route tried. ``what`` names the container
    in messages."""
    c = client()
    try:
        shadow_networks = _networks(container)
        published = _published(container, port)
        runner = _own_container(c)
        runner_networks = _networks(runner) if runner is not None else None
        mode = str(runner.attrs.get("HostConfig", {}).get("NetworkMode") or "") if runner is not None else ""
        site = this_engine()
        local = site.shares_loopback
        tried: list[str] = []
        for cand in plan_routes(port, published, shadow_networks, local, runner_networks, mode, site.host):
            if cand.kind == "published":
                if local and (runner is None or mode == "host"):  # beside the engine: its loopback is ours
                    return Route(cand.host, cand.port, "published port on 127.0.0.1")
                why = probe(cand.host, cand.port)
            elif cand.kind == "shared":
                why = probe(cand.host, cand.port, refused_is_route=True)
            else:
                assert runner is not None  # plan_routes joins only from a container
                try:
                    c.networks.get(cand.network).connect(runner.id)
                except Exception as exc:  # noqa: BLE001 - docker SDK errors
                    tried.append(f"{cand.describe()} ({_first_line(exc)})")
                    continue
                address = _networks(container).get(cand.network, "")
                why = probe(address, port, refused_is_route=True) if address else "no address there"
                if why is None:
                    return Route(address, port, f"container's address {address}:{port} on network "
                                                f"{cand.network!r}, which this container joined")
            if why is None:
                return Route(cand.host, cand.port, cand.describe().removeprefix("the "))
            tried.append(f"{cand.describe()} ({why})")
        if not tried:
            tried.append(f"none: the engine ({site.docker_host}) is not on this machine and this process is not in "
                         "one of its containers" if not local else "none: the container publishes no port")
        if local:
            advice = ("Its ports are published on 127.0.0.1 only: run shadow beside the engine, in a container of it "
                      "with the engine's socket mounted, or with the host's network")
        else:
            advice = (f"Its ports are published on the interfaces of the engine's host ({site.host or '?'}, from "
                      "DOCKER_HOST): let this machine reach that host's ports, or run shadow in a container of that "
                      "engine")
        raise InfrastructureError(f"no route from this process to {what}; tried " + "; ".join(tried) + ". " + advice)
    finally:
        c.close()
