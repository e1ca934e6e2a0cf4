"""A CLI run leaves the removal of its shadow's container to a process of its own (adapters.docker_remove): the
container, its anonymous data volume with it, is gone shortly after the run; when that process cannot start, the run
removes it itself; and a remover that never ran leaves what `shadow gc` removes.

Real engine, real containers of the test image, the real CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapters import docker_remove
from adapters.docker import LABEL_RUN, client
from adapters.postgres.container import ContainerServer
from tests.conftest import ROOT, TEST_IMAGES, ProdDb, docker_or_skip, gone_soon, run_cli, write_plan


@pytest.fixture
def engine() -> Any:
    docker_or_skip()
    c = client()
    yield c
    c.close()


def _volumes(container: Any) -> list[str]:
    return [m["Name"] for m in container.attrs.get("Mounts", []) if m.get("Type") == "volume"]


def _exists(engine: Any, what: str, name: str) -> bool:
    try:
        (engine.containers if what == "container" else engine.volumes).get(name)
        return True
    except Exception:  # noqa: BLE001 - docker.errors.NotFound
        return False


def test_stop_soon_leaves_the_container_to_a_process_that_removes_it(engine: Any) -> None:
    server = ContainerServer("test-remove-soon", TEST_IMAGES[15], 15).start()
    found = server.container_id
    assert found is not None
    server.stop_soon()
    assert gone_soon(lambda: [c for c in [found] if _exists(engine, "container", c)]) == []
    server.stop()  # safe after stop_soon


def test_stop_soon_removes_the_container_itself_when_no_process_can_start(engine: Any,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process(*args: Any, **kwargs: Any) -> None:
        raise OSError(24, "Too many open files")

    server = ContainerServer("test-remove-fallback", TEST_IMAGES[15], 15).start()
    found = server.container_id
    assert found is not None
    monkeypatch.setattr(docker_remove.subprocess, "Popen", no_process)
    server.stop_soon()
    assert not _exists(engine, "container", found)  # removed before stop_soon returned


def test_the_remover_kills_and_removes_a_container_with_its_data_volume(engine: Any) -> None:
    """As the official postgres image keeps its data: in an anonymous volume (VOLUME /var/lib/postgresql/data)."""
    container = engine.containers.run("shadow-test/action:latest", ["sleep", "120"], detach=True,
                                      volumes=["/var/lib/postgresql/data"], labels={"shadow.test": "remove"})
    volumes = _volumes(engine.containers.get(container.id))
    assert volumes, container.attrs.get("Mounts")
    assert docker_remove.remove([container.id]) == 0
    assert not _exists(engine, "container", container.id)
    assert [v for v in volumes if _exists(engine, "volume", v)] == []
    assert docker_remove.remove([container.id]) == 0  # one already gone counts as removed


def test_a_cli_plan_exits_before_its_shadow_container_is_removed_and_it_is_removed(
        engine: Any, prod_db: ProdDb, tmp_path: Path) -> None:
    write_plan(tmp_path, """
targets: {app: {kind: postgres, dsn: "${APP_DATABASE_URL}"}}
action: {sql: m.sql}
expect: {app: {may: [insert rows public.audit_log]}}
""", {"m.sql": "INSERT INTO audit_log VALUES (now(), 'x');"})
    r = run_cli("plan", "--json", state=tmp_path / "state", cwd=tmp_path, backend="docker",
                env={"APP_DATABASE_URL": prod_db.dsn})
    assert r.code == 0, r.text
    run_id = json.loads(r.out)["run_id"]
    mine = {"label": f"{LABEL_RUN}={run_id}"}
    assert gone_soon(lambda: engine.containers.list(all=True, filters=mine)) == []


def test_a_container_whose_remover_never_ran_is_removed_by_gc(engine: Any, tmp_path: Path) -> None:
    """What the remover would have removed is a leftover like any killed run's: labelled with a process that is
    gone."""
    script = (f"from adapters.postgres.container import ContainerServer\n"
              f"s = ContainerServer('test-remove-gc', {TEST_IMAGES[15]!r}, 15).start()\n"
              f"print(s.container_id, flush=True)\n"
              f"import os; os._exit(0)\n")  # no stop(), no remover: as if the remover died first
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    found = proc.stdout.split()[-1]
    assert _exists(engine, "container", found)
    r = run_cli("gc", "--json", state=tmp_path / "state", cwd=tmp_path, backend=None, env={})
    assert r.code == 0, r.text
    assert not _exists(engine, "container", found)


def test_the_remover_gets_what_reaches_the_engine_and_no_credential_of_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    started: dict[str, Any] = {}
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:23750")
    monkeypatch.setenv("APP_DATABASE_URL", "postgresql://app:s3cret@db/app")
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    monkeypatch.setattr(docker_remove.subprocess, "Popen", lambda argv, **kw: started.update(argv=argv, **kw))
    assert docker_remove.start(["c0ffee"])
    assert started["argv"][1:] == ["-m", "adapters.docker_remove", "c0ffee"] and started["start_new_session"]
    assert started["env"]["DOCKER_HOST"] == "tcp://127.0.0.1:23750"
    assert "s3cret" not in " ".join(started["env"].values())


def test_gc_takes_a_container_another_process_is_removing_as_gone_not_as_a_failure() -> None:
    """`shadow gc` run the moment a CLI run ends finds its container still there, its remover at work: the engine
    answers 409 "already in progress", which is no failure of gc's (pure logic: the engine's answer, as it gives it)."""
    import requests
    from docker.errors import APIError, NotFound

    from shadow import gc

    class Removing:
        def remove(self, **options: Any) -> None:
            answer = requests.Response()
            answer.status_code = 409
            raise APIError("409 Client Error: Conflict", response=answer,
                           explanation="removal of container c0ffee is already in progress")

    result = gc.GcResult(dry_run=False)
    item = gc.Leftover("container", "c0ffee", "run-1", "owner pid 1 gone")
    gc._remove(result, item, lambda: gc._remove_container(Removing()), (NotFound, gc._BeingRemoved), (APIError,))
    assert (result.removed, result.failed) == ([], [])
