"""The docker backend where it differs from the local one: production newer than every local client binary."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from adapters.postgres.container import ContainerServer
from tests.conftest import DEMO_SCHEMA, TEST_IMAGES, docker_or_skip, write_plan

PLAN = """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect:
  app:
    must: [add column public.users.nickname]
    may: [update rows public.users]
"""


@pytest.fixture(scope="module")
def production_17() -> Iterator[str]:
    """PostgreSQL 17 in a container plays production; the local client binaries are older."""
    docker_or_skip()
    with ContainerServer("test-production-17", TEST_IMAGES[17], 17) as server:
        dsn = server.create_database("shop")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(DEMO_SCHEMA.read_text())
        yield dsn


def _fingerprint(dsn: str) -> str:
    from adapters.postgres.target import PostgresTarget
    from shadow.settings import Settings

    return PostgresTarget("app", {"dsn": dsn}, Settings.from_env(state_dir="/nonexistent")).fingerprint()


@pytest.mark.parametrize("backend", ["docker"], indirect=True)
def test_production_17_with_local_15_clients_plans_applies_and_rolls_back(production_17, shadow_cli, tmp_path, backend):
    write_plan(tmp_path, PLAN, {"m.sql": "ALTER TABLE users ADD COLUMN nickname text DEFAULT 'n';"})
    before = _fingerprint(production_17)
    applied = shadow_cli("apply", "--json", env={"APP_DATABASE_URL": production_17})
    assert applied.code == 0, applied.text
    assert '"server_version": 17' in applied.out
    run_id = applied.out.split('"run_id": "')[1].split('"')[0]
    restored = shadow_cli("rollback", run_id, env={"APP_DATABASE_URL": production_17})
    assert restored.code == 0, restored.text
    assert _fingerprint(production_17) == before


@pytest.mark.parametrize("backend", ["local"], indirect=True)
def test_production_newer_than_local_server_binaries_needs_docker(production_17, shadow_cli, tmp_path, backend):
    write_plan(tmp_path, PLAN, {"m.sql": "ALTER TABLE users ADD COLUMN nickname text;"})
    r = shadow_cli("plan", env={"APP_DATABASE_URL": production_17})
    assert r.code == 3, r.text
    assert "production runs PostgreSQL 17" in r.err


LIMITS_PROBE = """
import json, os, docker
client = docker.from_env()
(container,) = [c for c in client.containers.list(filters={"label": "shadow.role=postgres-shadow"})
                if (c.ports.get("5432/tcp") or [{}])[0].get("HostPort") == os.environ["PGPORT"]]  # this run's shadow
# (another test's shadow, killed and being removed, still lists as running for a moment, with no port)
host = container.attrs["HostConfig"]
json.dump({"memory": host["Memory"], "cpus": host["NanoCpus"], "pids": host["PidsLimit"],
           "labels": container.labels}, open("limits.json", "w"))
"""


@pytest.mark.parametrize("backend", ["docker"], indirect=True)
def test_shadow_containers_get_the_plans_limits_and_run_labels(prod_db, shadow_cli, tmp_path, backend):
    import json
    import sys

    write_plan(tmp_path, f"""
targets: {{app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}}}
action: {{command: "{sys.executable} probe.py"}}
policy:
  limits: {{memory: 256m, cpus: 1.5, pids: 200}}
""", {"probe.py": LIMITS_PROBE})
    r = shadow_cli("plan", "--json", env={"APP_DATABASE_URL": prod_db.dsn, "DOCKER_HOST": "unix:///var/run/docker.sock"})
    assert r.code == 0, r.text
    seen = json.loads((tmp_path / "limits.json").read_text())
    assert seen["memory"] == 256 * 1024 * 1024
    assert seen["cpus"] == 1_500_000_000
    assert seen["pids"] == 200
    assert seen["labels"]["shadow.run-id"] == json.loads(r.out)["run_id"]
