"""shadow finds its own route to its own containers (adapters.docker.route_to), wherever it runs.

The pure part (which routes to try, in which order; which container this process is in) is tested as logic. The
real part runs shadow *inside a container* of this machine's engine, with the engine's socket mounted and none of
testcontainers' connection variables set — the way a CI job or a dev container runs it: the runner is
``shadow-test/action`` (Debian's python3, built by scripts/build-images.sh) with this repository and the test's own
site-packages mounted read-only at the same paths, so no image has to be pulled or built for it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from adapters.docker import Candidate, engine_is_local, own_container_id, plan_routes, probe
from adapters.postgres.container import ContainerServer
from tests.conftest import DEMO_SCHEMA, ROOT, TEST_IMAGES, docker_or_skip, write_plan
from tests.test_docker_backend import PLAN

RUNNER_IMAGE = "shadow-test/action:latest"
ID = "ca2e0d140dbbead872164fc96d79721250918b1e93614b1d8615b1d7bf905d4c"


# -- the logic -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("docker_host, local", [
    (None, True), ("unix:///var/run/docker.sock", True), ("tcp://127.0.0.1:2375", True), ("tcp://localhost:2376", True),
    ("tcp://[::1]:2375", True), ("tcp://docker:2375", False), ("ssh://ci@build-host", False),
])
def test_an_engine_is_local_when_its_loopback_can_be_ours(docker_host, local):
    assert engine_is_local(docker_host) is local


def test_this_process_s_container_is_found_from_its_mounts_cgroups_or_hostname():
    mountinfo = (f"94 77 254:0 /var/lib/docker/containers/{ID}/resolv.conf /etc/resolv.conf rw,relatime - ext4\n"
                 f"95 77 254:0 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw,relatime - ext4\n")
    assert own_container_id(mountinfo, "", "ci-job") == [ID]
    assert own_container_id("", f"9:name=systemd:/docker/{ID}\n8:pids:/docker/{ID}\n", "ci-job") == [ID]
    assert own_container_id("", f"0::/system.slice/docker-{ID}.scope\n", "ci-job") == [ID]
    assert own_container_id("", "0::/\n", ID[:12]) == [ID[:12]]  # Docker's default hostname: the short id
    assert own_container_id("22 1 0:21 / /proc rw - proc proc rw\n", "0::/\n", "laptop") == []


def test_beside_the_engine_the_only_route_is_the_port_published_on_127_0_0_1():
    assert plan_routes(5432, 32801, {"bridge": "172.17.0.3"}, engine_local=True, runner_networks=None) == [
        Candidate("published", "127.0.0.1", 32801)]


def test_in_a_container_the_published_port_is_tried_first_then_a_shared_network_then_joining_one():
    routes = plan_routes(5432, 32801, {"bridge": "172.17.0.3", "ci": "10.1.0.7"}, engine_local=True,
                         runner_networks={"ci": "10.1.0.2", "other": "10.2.0.2"}, runner_mode="ci")
    assert [r.describe() for r in routes] == [
        "the published port 127.0.0.1:32801",
        "the container's address 10.1.0.7:5432 on network 'ci'",
        "joining this container to network 'bridge'",
    ]


def test_a_remote_engine_s_loopback_is_never_tried_and_a_container_without_a_network_joins_none():
    assert plan_routes(5432, 32801, {"bridge": "172.17.0.3"}, engine_local=False, runner_networks=None) == []
    # a container of a remote engine (the job container next to a docker:dind service) reaches the shadow only
    # through a network they share
    assert [r.kind for r in plan_routes(5432, 32801, {"bridge": "172.17.0.3"}, engine_local=False,
                                        runner_networks={"bridge": "172.17.0.2"})] == ["shared"]
    for mode in ("host", "none", "container:abc"):
        assert [r.kind for r in plan_routes(5432, 32801, {"bridge": "172.17.0.3"}, engine_local=True,
                                            runner_networks={}, runner_mode=mode)] == ["published"]


def test_a_probe_takes_a_refusal_as_a_route_only_where_the_container_itself_answers():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: a connect is refused
        assert probe("127.0.0.1", port) == "connection refused"
        assert probe("127.0.0.1", port, refused_is_route=True) is None
    with socket.create_server(("127.0.0.1", 0)) as listening:
        assert probe("127.0.0.1", listening.getsockname()[1]) is None


# -- the real thing: shadow inside a container of this machine's engine -----------------------------------------

def _docker() -> Any:
    import docker

    return docker.from_env()


def _in_container_command() -> tuple[str, str]:
    """(site-packages, PYTHONPATH) for the runner: the test's own dependencies, mounted read-only."""
    if sys.version_info[:2] != (3, 11):
        why = f"the runner image's python3 is 3.11, this interpreter is {sys.version.split()[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    site = sysconfig.get_paths()["purelib"]
    return site, f"{ROOT}{os.pathsep}{site}"


@pytest.fixture
def engine() -> None:
    docker_or_skip()


@pytest.fixture(scope="module")
def production() -> Iterator[ContainerServer]:
    """Production in a container, so a runner container reaches it at its own address."""
    docker_or_skip()
    with ContainerServer("test-route-production", TEST_IMAGES[15], 15) as server:
        with psycopg.connect(server.create_database("shop"), autocommit=True) as conn:
            conn.execute(DEMO_SCHEMA.read_text())
        yield server


def _address(server: ContainerServer, network: str = "bridge") -> str:
    wrapped = server._container.get_wrapped_container()
    wrapped.reload()
    return str(wrapped.attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def _run_inside(command: list[str], folder: Path, network: str, timeout: float = 150,
                env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Run ``command`` in a runner container on ``network``, with the engine's socket, this repository, this
    interpreter's site-packages and ``folder`` mounted, and none of testcontainers' connection variables."""
    site, pythonpath = _in_container_command()
    mounts = {str(ROOT): "ro", site: "ro", str(folder): "rw"}
    client = _docker()
    started = time.monotonic()
    runner = client.containers.run(
        RUNNER_IMAGE, command, detach=True, network=network, working_dir=str(folder),
        hostname="shadow-runner-" + uuid.uuid4().hex[:6],  # not its id: the container is found from its mounts
        volumes={"/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
                 **{path: {"bind": path, "mode": mode} for path, mode in mounts.items()}},
        environment={"PYTHONPATH": pythonpath, "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(folder),
                     "TESTCONTAINERS_RYUK_DISABLED": "true",  # there is no registry to pull Ryuk's image from
                     "SHADOW_POSTGRES_IMAGE": "shadow-test/postgres:{major}", "SHADOW_BACKEND": "docker",
                     **(env or {})},
        labels={"shadow.test": "route-runner"},
    )
    try:
        try:
            code = int(runner.wait(timeout=timeout)["StatusCode"])
        except Exception:  # noqa: BLE001 - requests' timeout: the runner hangs (what item 21 was about)
            code = -1
        return code, runner.logs().decode(errors="replace"), time.monotonic() - started
    finally:
        runner.remove(force=True)
        for left in client.containers.list(all=True, filters={"label": "shadow.role=postgres-shadow"}):
            if left.labels.get("shadow.host", "").startswith("shadow-runner-"):
                left.remove(force=True)
        client.close()




def _fingerprint(dsn: str) -> str:
    from adapters.postgres.target import PostgresTarget
    from shadow.settings import Settings

    return PostgresTarget("app", {"dsn": dsn}, Settings.from_env(state_dir="/nonexistent")).fingerprint()


def test_shadow_in_a_container_plans_applies_and_rolls_back_through_the_docker_backend(production, tmp_path):
    write_plan(tmp_path, PLAN, {"m.sql": "ALTER TABLE users ADD COLUMN nickname text DEFAULT 'n';"})
    inside = make_conninfo(production.dsn("shop"), host=_address(production), port=5432)  # its address on bridge
    script = (f"set -e; export APP_DATABASE_URL='{inside}'; cli='python3 -m shadow.cli --state-dir {tmp_path}/state'; "
              "$cli apply --json > applied.json; $cli rollback $(python3 -c "
              "'import json; print(json.load(open(\"applied.json\"))[\"run_id\"])')")
    before = _fingerprint(production.dsn("shop"))
    code, logs, seconds = _run_inside(["sh", "-c", script], tmp_path, "bridge")
    assert code == 0, logs
    applied = json.loads((tmp_path / "applied.json").read_text())
    assert applied["outcome"] == "applied", applied
    assert "RESTORED" in logs
    assert _fingerprint(production.dsn("shop")) == before
    assert seconds < 90, f"took {seconds:.0f} s"


ROUTE_PROBE = """
import time
from adapters.postgres.container import ContainerServer
from shadow.errors import InfrastructureError
started = time.monotonic()
try:
    with ContainerServer("route-probe", "shadow-test/postgres:15", 15) as server:
        with server.connect() as conn:
            conn.execute("SELECT 1")
        print("ROUTE", server.route.via)
except InfrastructureError as exc:
    print("FAILED", exc)
print("SECONDS", round(time.monotonic() - started, 1))
"""


def test_a_container_on_a_network_of_its_own_joins_the_shadow_s_network(engine, tmp_path):
    client = _docker()
    network = client.networks.create("shadow-test-route-" + uuid.uuid4().hex[:6], labels={"shadow.test": "route"})
    try:
        # (testcontainers starts a container on its runner's network itself, unless DOCKER_HOST is set: then the
        # shadow is on bridge, which this runner is not on)
        code, logs, _ = _run_inside(["python3", "-c", ROUTE_PROBE], tmp_path, network.name,
                                    env={"DOCKER_HOST": "unix:///var/run/docker.sock"})
        assert code == 0, logs
        assert "ROUTE container's address 172." in logs, logs
        assert "on network 'bridge', which this container joined" in logs, logs
    finally:
        network.reload()
        for attached in network.containers:
            network.disconnect(attached, force=True)
        network.remove()
        client.close()


def test_a_container_without_any_route_fails_within_seconds_naming_what_it_tried(engine, tmp_path):
    code, logs, _ = _run_inside(["python3", "-c", ROUTE_PROBE], tmp_path, "none")  # only the engine's socket
    assert code == 0, logs
    assert "FAILED no route from this process to the PostgreSQL container from 'shadow-test/postgres:15'; tried " \
           "the published port 127.0.0.1:" in logs, logs
    assert "(connection refused)" in logs, logs
    seconds = float(logs.split("SECONDS")[1])
    assert seconds < 15, logs


def test_beside_the_engine_no_testcontainers_variable_is_needed(engine):
    """Beside the engine, in a container of another kind (this machine has /.dockerenv), testcontainers alone picks
    the bridge gateway, where nothing is published, and waits 120 s."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESTCONTAINERS_")}
    env["TESTCONTAINERS_RYUK_DISABLED"] = "true"
    proc = subprocess.run([sys.executable, "-c", ROUTE_PROBE], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=150)
    assert "ROUTE published port on 127.0.0.1" in proc.stdout, proc.stdout + proc.stderr
    assert float(proc.stdout.split("SECONDS")[1]) < 30
