"""The docker backend on an engine that is not on this machine's filesystem (``DOCKER_HOST=tcp://…``).

The engine is the second dockerd of scripts/start-remote-docker.sh (``tcp://127.0.0.1:23750``, or
``SHADOW_TEST_REMOTE_DOCKER``): it runs in a private mount namespace where /tmp, /work and /root are empty, so a
bind mount of any path of this machine — pytest's tmp_path, the plan folder, the state dir with its dumps — shows
an empty directory there. Every test first proves that (:func:`remote`), so none can pass by mounting. Shadow runs
as the real CLI in a subprocess with ``DOCKER_HOST`` naming that engine; what ran where is read from the engine's
own event log.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adapters.docker import Candidate, engine_site, plan_routes
from tests.conftest import ProdDb, gone_soon, run_cli, write_plan
from tests.test_docker_backend import PLAN, production_17  # noqa: F401 - a fixture (production on the local engine)

ADDRESS = os.environ.get("SHADOW_TEST_REMOTE_DOCKER", "tcp://127.0.0.1:23750")
POSTGRES_IMAGE = "shadow-test/postgres:15"
ACTION_IMAGE = "shadow-test/action:latest"


@dataclass
class Remote:
    address: str
    client: Any  # docker.DockerClient on the remote engine

    def sees(self, folder: Path) -> str:
        """What a container on the engine lists in ``folder`` bind-mounted at /x."""
        out = self.client.containers.run(ACTION_IMAGE, ["ls", "-A", "/x"], volumes={str(folder): {"bind": "/x"}},
                                         remove=True, labels={"shadow.test": "remote-blind"})
        return bytes(out).decode().strip()

    def events(self, run_id: str, since: float) -> list[dict[str, Any]]:
        """The engine's container `create` events for ``run_id``'s containers since ``since``."""
        found = self.client.events(since=int(since) - 1, until=int(time.time()) + 1, decode=True,
                                   filters={"type": "container", "event": "create",
                                            "label": f"shadow.run-id={run_id}"})
        return list(found)

    def left(self, run_id: str) -> list[str]:
        """Containers and networks labelled with ``run_id`` still on the engine."""
        wanted = {"label": f"shadow.run-id={run_id}"}
        return gone_soon(lambda: [f"container {c.name}" for c in self.client.containers.list(all=True, filters=wanted)]
                         + [f"network {n.name}" for n in self.client.networks.list(filters=wanted)])


def _unavailable(why: str) -> None:
    message = (f"no remote Docker engine at {ADDRESS} ({why}); start it with `bash scripts/start-remote-docker.sh` "
               "(or set SHADOW_TEST_REMOTE_DOCKER)")
    if os.environ.get("CI") == "true":  # CI starts it (.ci/run): there these tests must run
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Remote]:
    """The remote engine, once it is shown to be blind to this machine's files."""
    import docker

    try:
        client = docker.DockerClient(base_url=ADDRESS, timeout=30)
        client.ping()
    except Exception as exc:  # noqa: BLE001 - docker raises many kinds; all mean "not there"
        _unavailable(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
    missing = [image for image in (POSTGRES_IMAGE, ACTION_IMAGE) if not client.images.list(name=image)]
    if missing:
        _unavailable(f"it lacks the images {', '.join(missing)}")
    folder = tmp_path_factory.mktemp("blind")
    (folder / "marker").write_text("this machine's file")
    if (seen := Remote(ADDRESS, client).sees(folder)) != "":
        pytest.fail(f"the engine at {ADDRESS} sees this machine's {folder} (it lists {seen!r}): it is not the "
                    "blind engine of scripts/start-remote-docker.sh, and these tests would pass by mounting")
    try:
        yield Remote(ADDRESS, client)
    finally:
        client.close()


def _shadow(tmp_path: Path, remote: Remote, *args: str, env: dict[str, str] | None = None) -> Any:
    """The real CLI, docker backend, on the remote engine; state dir in tmp_path (which the engine cannot see)."""
    return run_cli(*args, state=tmp_path / "state", cwd=tmp_path, backend="docker",
                   env={"DOCKER_HOST": remote.address, **(env or {})})


# -- the logic: where the engine is ------------------------------------------------------------------------------

@pytest.mark.parametrize("docker_host, files, loopback, host, publish", [
    (None, True, True, "127.0.0.1", "127.0.0.1"),
    ("unix:///var/run/docker.sock", True, True, "127.0.0.1", "127.0.0.1"),
    ("tcp://127.0.0.1:23750", False, True, "127.0.0.1", "127.0.0.1"),  # a tunnel, or another mount namespace
    ("tcp://docker:2376", False, False, "docker", "0.0.0.0"),
    ("ssh://ci@build-host", False, False, "build-host", "0.0.0.0"),
])
def test_only_an_engine_behind_a_local_socket_is_taken_to_see_this_machine_s_files(docker_host, files, loopback,
                                                                                   host, publish):
    site = engine_site(docker_host)
    assert (site.shares_files, site.shares_loopback, site.host, site.publish_ip) == (files, loopback, host, publish)


def test_an_engine_elsewhere_is_reached_on_its_host_s_published_port_first():
    assert plan_routes(5432, 32801, {"bridge": "172.17.0.3"}, engine_local=False, runner_networks=None,
                       engine_host="docker") == [Candidate("published", "docker", 32801)]
    assert [r.kind for r in plan_routes(5432, 32801, {"bridge": "172.17.0.3"}, engine_local=False,
                                        runner_networks={"bridge": "172.17.0.2"}, engine_host="docker")] == [
        "published", "shared"]


# -- the real thing: shadow on the blind engine ------------------------------------------------------------------

def test_the_remote_engine_cannot_see_this_machine_s_files(remote, tmp_path):
    (tmp_path / "plan.sql").write_text("select 1;")
    assert remote.sees(tmp_path) == ""                   # an empty directory where the runner has a file


@pytest.mark.cold  # asserts that no container outlives the run on the remote engine
def test_a_postgres_plan_rehearses_on_the_remote_engine(remote, prod_db: ProdDb, tmp_path):
    write_plan(tmp_path, PLAN, {"m.sql": "ALTER TABLE users ADD COLUMN nickname text DEFAULT 'n';"})
    before = prod_db.fingerprint()
    since = time.time()
    r = _shadow(tmp_path, remote, "plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 0, r.text
    report = json.loads(r.out)
    assert report["outcome"] == "passed", r.text
    changes = {c["address"] for t in report["targets"] for c in t["changes"]}
    assert "add column public.users.nickname" in changes     # the shadow held production's data and schema
    created = remote.events(report["run_id"], since)
    assert {e["Actor"]["Attributes"].get("shadow.role") for e in created} == {"postgres-shadow"}, created
    assert remote.left(report["run_id"]) == []
    assert prod_db.fingerprint() == before


NOTE = """
import os, psycopg
message = open("data/message.txt").read().strip()
print("PLAN FOLDER", sorted(os.listdir(".")))
with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    conn.execute("UPDATE users SET full_name = %s WHERE id = 1", (message,))
    print("WROTE", conn.execute("SELECT full_name FROM users WHERE id = 1").fetchone()[0])
"""


def test_an_isolated_action_on_the_remote_engine_reads_the_plan_folder_and_writes_its_shadow(
        remote, prod_db: ProdDb, tmp_path):
    message = "from the plan folder " + uuid.uuid4().hex[:8]
    write_plan(tmp_path, f"""
targets:
  app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}
action:
  command: "python3 note.py"
  isolation: container
  image: {ACTION_IMAGE}
expect:
  app: {{must: [update rows public.users]}}
""", {"note.py": NOTE, "data/message.txt": message + "\n"})
    since = time.time()
    r = _shadow(tmp_path, remote, "plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 0, r.text
    report = json.loads(r.out)
    assert report["outcome"] == "passed", r.text
    log = Path(report["action"]["rehearsal"]["log"]).read_text()
    assert f"WROTE {message}" in log, log                     # it read the copy and wrote its shadow
    listed = log.split("PLAN FOLDER ", 1)[1].splitlines()[0]
    assert "'note.py'" in listed and "'data'" in listed
    assert "'state'" not in listed, listed                    # shadow's state dir (its dumps) stayed here
    roles = {e["Actor"]["Attributes"].get("shadow.role") for e in remote.events(report["run_id"], since)}
    assert roles == {"postgres-shadow", "action"}, roles
    assert remote.left(report["run_id"]) == []
    assert prod_db.scalar("SELECT full_name FROM users WHERE id = 1") == "User 1"


def test_an_isolated_action_on_a_git_target_is_refused_on_the_remote_engine(remote, tmp_path):
    from tests.test_git_plan import example

    folder, repo = example(tmp_path)
    write_plan(folder, f"""
version: 1
targets:
  config: {{kind: git, path: ./config-repo, rollback: revert}}
action:
  command: "git commit -q --allow-empty -m nothing"
  isolation: container
  image: {ACTION_IMAGE}
expect:
  config: {{may: ["move ref refs/heads/main"]}}
""", name="isolated.yaml")
    before = repo.state()
    r = _shadow(tmp_path, remote, "plan", "-f", str(folder / "isolated.yaml"))
    assert r.code == 3, r.text
    assert "mounts a git target's working copy" in r.err and f"DOCKER_HOST={remote.address}" in r.err, r.err
    assert "Traceback" not in r.err
    assert repo.state() == before


def test_client_tools_in_a_container_are_refused_on_the_remote_engine(remote, production_17, tmp_path):
    """Production (PostgreSQL 17, on this machine's engine) is newer than the local pg_dump (15): the fallback runs
    pg_dump in a container with the dump's folder mounted, which an engine elsewhere cannot give."""
    write_plan(tmp_path, PLAN, {"m.sql": "ALTER TABLE users ADD COLUMN nickname text;"})
    r = _shadow(tmp_path, remote, "plan", env={"APP_DATABASE_URL": production_17})
    assert r.code == 3, r.text
    assert "production runs PostgreSQL 17" in r.err and "needs a Docker engine on this machine" in r.err, r.err
    assert f"DOCKER_HOST={remote.address}" in r.err and "install postgresql-client-17" in r.err, r.err


S3_WRITE = """
import os, boto3
s3 = boto3.client("s3")
s3.put_object(Bucket=os.environ["SHADOW_ASSETS_BUCKET"], Key="invoices/0.json", Body=b'{"n": 0, "paid": true}')
print("ENDPOINT", os.environ["AWS_ENDPOINT_URL"])
"""


def test_an_s3_plan_rehearses_on_a_moto_shadow_on_the_remote_engine(remote, tmp_path, bucket, s3_server):
    if not remote.client.images.list(name="shadow-test/moto:latest"):
        _unavailable("it lacks the image shadow-test/moto:latest")
    client, name = bucket
    for i in range(3):
        client.put_object(Bucket=name, Key=f"invoices/{i}.json", Body=json.dumps({"n": i}).encode())
    write_plan(tmp_path, f"""
targets: {{assets: {{kind: s3, bucket: {name}, prefix: invoices/, endpoint_url: "{s3_server}"}}}}
action: {{command: "{sys.executable} write.py"}}
expect: {{assets: {{must: ["modify object {name}/invoices/0.json"]}}}}
""", {"write.py": S3_WRITE})
    since = time.time()
    r = _shadow(tmp_path, remote, "plan", "--json", env={"SHADOW_S3_IMAGE": "shadow-test/moto:latest"})
    assert r.code == 0, r.text
    report = json.loads(r.out)
    assert report["outcome"] == "passed", r.text
    log = Path(report["action"]["rehearsal"]["log"]).read_text()
    assert "ENDPOINT" in log and s3_server not in log, log      # it wrote the shadow, never production
    roles = {e["Actor"]["Attributes"].get("shadow.role") for e in remote.events(report["run_id"], since)}
    assert roles == {"s3-shadow"}, roles
    assert remote.left(report["run_id"]) == []
    assert json.loads(client.get_object(Bucket=name, Key="invoices/0.json")["Body"].read()) == {"n": 0}


@pytest.mark.cold  # asserts that no container outlives the runs on the remote engine
def test_an_apply_and_its_rollback_on_the_remote_engine_keep_every_write_of_the_application(remote, prod_db: ProdDb,
                                                                                            tmp_path):
    """The whole cycle with the shadows on the blind engine, while the application keeps writing: the apply's
    rehearsal (and its rollback rehearsal) ran there, production was changed as rehearsed, the rollback undid
    only the run's own change, and every row the writer committed is still there."""
    from tests.writer import Writer

    prod_db.execute("CREATE TABLE events (id bigserial PRIMARY KEY, note text NOT NULL)")
    write_plan(tmp_path, PLAN, {"m.sql": "ALTER TABLE users ADD COLUMN nickname text DEFAULT 'n';"})
    env = {"APP_DATABASE_URL": prod_db.dsn}
    since = time.time()
    with Writer(prod_db.dsn, "events", tmp_path / "writes.jsonl", every=0.05) as writer:
        applied = _shadow(tmp_path, remote, "apply", "--json", env=env)
        assert applied.code == 0, applied.text
        report = json.loads(applied.out)
        assert report["outcome"] == "applied", applied.text
        assert prod_db.scalar("SELECT count(*) FROM users WHERE nickname = 'n'") == prod_db.scalar(
            "SELECT count(*) FROM users")
        rolled = _shadow(tmp_path, remote, "rollback", report["run_id"], "--json", env=env)
        assert rolled.code == 0, rolled.text
        assert json.loads(rolled.out)["outcome"] == "restored", rolled.text
        writer.stop()
    assert writer.assert_kept(prod_db.dsn) > 5
    assert prod_db.scalar("SELECT count(*) FROM information_schema.columns WHERE column_name = 'nickname'") == 0
    created = remote.events(report["run_id"], since)
    assert "postgres-shadow" in {e["Actor"]["Attributes"].get("shadow.role") for e in created}, created
    assert remote.left(report["run_id"]) == []
