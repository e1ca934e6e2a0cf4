"""`action.isolation: container`: the action's code runs where it can touch nothing but its disposable copy.

Each "cannot" is proven by trying it from inside the action's container.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest

from tests.conftest import ProdDb, docker_or_skip, gone_soon, write_plan

ACTION_IMAGE = "shadow-test/action:latest"

PROBE = r'''
import json, os, socket, sys
import psycopg

def reach(host, port):
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__

def gateway():
    for line in open("/proc/net/route").readlines()[1:]:
        fields = line.split()
        if fields[1] == "00000000":
            return ".".join(str(int(fields[2][i:i + 2], 16)) for i in (6, 4, 2, 0))
    return None

def write(path):
    try:
        with open(path, "w") as fh:
            fh.write("x")
        return "written"
    except OSError as exc:
        return type(exc).__name__

with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    users = conn.execute("select count(*) from users").fetchone()[0]
    conn.execute("update users set full_name = 'probed' where id = 1")
result = {
    "shadow_users": users,
    "production_loopback": reach("127.0.0.1", os.environ["PROD_PORT"]),
    "host_via_gateway": reach(gateway(), os.environ["HOST_PORT"]) if gateway() else "no gateway",
    "other_network": reach(os.environ["OTHER_IP"], 8000),
    "env": sorted(os.environ),
    "write_plan_folder": write("/plan/written-by-action"),
    "write_scratch": write(os.path.join(os.environ["HOME"], "ok")),
}
print("PROBE " + json.dumps(result))
'''


def _plan(tmp_path, db: ProdDb, host_port: int = 1, other_ip: str = "127.0.0.2") -> None:
    write_plan(tmp_path, f"""
targets:
  app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}
action:
  command: "python3 probe.py"
  isolation: container
  image: {ACTION_IMAGE}
  env: {{PROD_PORT: "{db.server.port}", HOST_PORT: "{host_port}", OTHER_IP: "{other_ip}"}}
expect:
  app: {{may: [update rows public.users]}}
""", {"probe.py": PROBE})


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP service on every host address: what an escaped action would find through the bridge gateway."""
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()


@pytest.fixture
def other_network_container() -> Iterator[str]:
    """A container of ours on Docker's default bridge: the 'outside' an isolated action must not reach."""
    import docker

    client = docker.from_env()
    container = client.containers.run(ACTION_IMAGE, ["python3", "-m", "http.server", "8000"], detach=True,
                                      labels={"shadow.test": "other-network"})
    try:
        container.reload()
        yield str(container.attrs["NetworkSettings"]["IPAddress"])
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("backend", ["docker"], indirect=True)
def test_isolated_action_reaches_only_its_shadow(prod_db, shadow_cli, tmp_path, backend, host_listener,
                                                 other_network_container):
    _plan(tmp_path, prod_db, host_listener, other_network_container)
    r = shadow_cli("plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn, "HOST_SECRET": "do-not-leak"})
    assert r.code == 0, r.text
    log = json.loads(r.out)["action"]["rehearsal"]["log"]
    probe = json.loads(open(log).read().split("PROBE ", 1)[1])
    assert probe["shadow_users"] == 500                       # it can work on its copy ...
    assert probe["production_loopback"] != "connected"       # ... but cannot reach production,
    assert probe["host_via_gateway"] != "connected"          # nor any host port, not even via the bridge gateway,
    assert probe["other_network"] != "connected"             # nor anything on another network,
    assert "HOST_SECRET" not in probe["env"]                 # sees none of the host's environment,
    assert "APP_DATABASE_URL" not in probe["env"]
    assert probe["write_plan_folder"] != "written"           # cannot change the plan folder,
    assert not (tmp_path / "written-by-action").exists()
    assert probe["write_scratch"] == "written"               # and has a writable scratch dir.
    assert prod_db.scalar("SELECT full_name FROM users WHERE id = 1") == "User 1"


@pytest.mark.parametrize("backend", ["docker"], indirect=True)
def test_isolated_action_is_applied_with_the_same_image(prod_db, shadow_cli, tmp_path, backend):
    write_plan(tmp_path, f"""
targets:
  app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}
action:
  command: "python3 -c 'import os, psycopg; psycopg.connect(os.environ[\\"DATABASE_URL\\"], autocommit=True).execute(\\"delete from audit_log\\")'"
  isolation: container
  image: {ACTION_IMAGE}
expect:
  app: {{may: [delete rows public.audit_log]}}
""")
    r = shadow_cli("apply", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 0, r.text
    assert prod_db.scalar("SELECT count(*) FROM audit_log") == 0


def test_isolation_needs_the_docker_backend(prod_db, shadow_cli, tmp_path):
    _plan(tmp_path, prod_db)
    r = shadow_cli("plan", env={"APP_DATABASE_URL": prod_db.dsn, "SHADOW_BACKEND": "local"})
    assert r.code == 2, r.text
    assert "needs the docker backend" in r.err


def test_sandbox_networks_are_removed_after_the_run(prod_db, shadow_cli, tmp_path):
    docker_or_skip()
    import docker

    _plan(tmp_path, prod_db)
    r = shadow_cli("plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn, "SHADOW_BACKEND": "docker"})
    assert r.code == 0, r.text
    mark = f"shadow.run-id={json.loads(r.out)['run_id']}"  # this run's: tests on other workers run their own
    client = docker.from_env()
    assert client.networks.list(filters={"label": ["shadow.role=sandbox-network", mark]}) == []
    assert gone_soon(lambda: client.containers.list(all=True, filters={"label": mark})) == []


@pytest.mark.parametrize("backend", ["docker"], indirect=True)
def test_isolated_action_reaches_a_git_shadow_and_its_remote(shadow_cli, tmp_path, backend):
    """A git target's clone and its throwaway remote are mounted at their own paths: the isolated command commits
    and pushes there in the rehearsal, production's working copy stays invisible to it, and apply does the same in
    production with the same image."""
    from tests.gitrepos import git
    from tests.test_git_plan import example

    folder, repo = example(tmp_path)
    write_plan(folder, f"""
version: 1
targets:
  config: {{kind: git, path: ./config-repo, rollback: revert}}
action:
  command: >-
    if [ "$PWD" != "$PROD_WORKTREE" ] && [ -e "$PROD_WORKTREE" ]; then echo "production is visible"; exit 3; fi
    && python3 "$SHADOW_PLAN_DIR/bump_image.py" registry.example.com/shop/api 1.4.2
    && git commit -q -am "api: 1.4.2" && git push -q origin HEAD
  isolation: container
  image: {ACTION_IMAGE}
  env: {{PROD_WORKTREE: "{repo.wc}"}}
expect:
  config:
    must: ["modify file k8s/*/api/deployment.yaml", "move ref refs/heads/main", "move ref origin:refs/heads/main"]
    may: ["modify file k8s/**"]
""", name="isolated.yaml")
    before, remote_before = repo.state(), repo.remote_head()

    r = shadow_cli("plan", "--json", "-f", str(folder / "isolated.yaml"), env={"SHADOW_BACKEND": "docker"})
    assert r.code == 0, r.text
    addresses = {c["address"] for t in json.loads(r.out)["targets"] for c in t["changes"]}
    assert {"move ref refs/heads/main", "move ref origin:refs/heads/main"} <= addresses
    assert repo.state() == before and repo.remote_head() == remote_before  # production untouched

    r = shadow_cli("apply", "-f", str(folder / "isolated.yaml"), env={"SHADOW_BACKEND": "docker"})
    assert r.code == 0, r.text
    assert git(repo.remote, "log", "-1", "--format=%s", "refs/heads/main") == "api: 1.4.2"
    assert repo.git("status", "--porcelain") == ""
    owners = {p.stat().st_uid for p in (repo.wc / ".git" / "objects").rglob("*")}
    assert owners == {os.getuid()}  # what the container wrote in the working copy is this user's
