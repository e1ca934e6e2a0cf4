"""`shadow gc --checkpoints-older-than DAYS`: old checkpoints leave the store, nothing a kept run needs does.

Against a real production database (checkpoints are real pg_dump archives) and moto's S3 server (an unversioned
bucket, whose checkpoint is one stored copy per object, referred to from the S3 manifest artifact).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from adapters.git.target import GitTarget
from adapters.s3.target import S3Target
from shadow import gc
from shadow.errors import InfrastructureError, SnapshotCorrupt
from shadow.guard import Liveness, RunRecord
from shadow.settings import Settings
from snapshots import Store
from tests.conftest import ProdDb, write_plan
from tests.gitrepos import make_repo
from tests.test_cli_end_to_end import SAFE_PLAN, SAFE_SQL

DAY = 86400.0


def _objects(state: Path) -> set[str]:
    return {p.name for p in (state / "snapshots" / "objects" / "sha256").glob("*/*")}


def _run_id(result_out: str) -> str:
    return result_out.split("run ")[-1].split()[0]


@pytest.mark.usefixtures("own_tempdir")  # its gc sees only this test's temp dirs
def test_old_checkpoints_go_and_a_rollback_of_their_run_says_so(prod_db: ProdDb, shadow_cli: Any,
                                                                tmp_path: Path) -> None:
    write_plan(tmp_path, SAFE_PLAN, {"migrations/0042_add_email_verified.sql": SAFE_SQL})
    env = {"APP_DATABASE_URL": prod_db.dsn}
    planned = shadow_cli("plan", env=env)
    assert planned.code == 0, planned.text
    applied = shadow_cli("apply", env=env)
    assert applied.code == 0, applied.text
    run_id = _run_id(applied.out)
    state = shadow_cli.state_dir
    settings = Settings.from_env(state_dir=state)
    stored = _objects(state)
    assert len(stored) >= 2  # one dump per run at least

    # Nothing is old enough yet: a prune removes nothing, and a dry run of the real one only lists.
    assert gc.prune_checkpoints(settings, 1).removed == []
    listed = gc.prune_checkpoints(settings, 1, dry_run=True, now=time.time() + 3 * DAY)
    assert {i.kind for i in listed.removed} == {"checkpoint", "artifact"}
    assert _objects(state) == stored

    after_apply = prod_db.fingerprint()
    pruned = shadow_cli("gc", "--checkpoints-older-than", "0", "--json")
    assert pruned.code == 0, pruned.text
    rows = json.loads(pruned.out)
    assert {r["id"] for r in rows if r["kind"] == "checkpoint"} >= {run_id}
    assert {r["id"] for r in rows if r["kind"] == "artifact"} == {s[:16] for s in stored}
    assert _objects(state) == set()

    refused = shadow_cli("rollback", run_id, env=env)
    assert refused.code != 0 and "Traceback" not in refused.err
    assert "was pruned" in refused.text, refused.text
    assert prod_db.fingerprint() == after_apply, "production untouched"
    runs = json.loads(shadow_cli("runs", "--json").out)
    assert run_id in {r["id"] for r in runs}, "the run's record stays"


def test_a_kept_s3_checkpoint_keeps_every_object_copy_its_manifest_names(s3_server: str, tmp_path: Path) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    name = "prune-" + uuid.uuid4().hex[:10]
    client.create_bucket(Bucket=name)  # unversioned: the checkpoint copies every object into the store
    for i in range(5):
        client.put_object(Bucket=name, Key=f"inv/{i}.json", Body=json.dumps({"n": i}).encode())
    settings = Settings.from_env(state_dir=tmp_path / "state")
    store = Store(settings.store_dir)
    target = S3Target("assets", {"bucket": name, "prefix": "inv/", "endpoint_url": s3_server, "allow": ["unversioned"]},
                      settings)
    old, new = "20200101-000000-aaaaaa", time.strftime("%Y%m%d-%H%M%S-bbbbbb", time.gmtime())
    for run in (old, new):
        store.write_manifest(run, "assets", target.checkpoint(store, run).to_dict())
    client.put_object(Bucket=name, Key="inv/0.json", Body=b'{"n": "changed"}')  # the old run's copy differs
    store.write_manifest(old, "assets", target.checkpoint(store, old).to_dict())
    before = _objects(settings.state_dir)

    result = gc.prune_checkpoints(settings, 30, now=time.time() + 1)

    assert [i.id for i in result.removed if i.kind == "checkpoint"] == [old]
    kept = Store(settings.store_dir).read_manifest(new, "assets")
    manifest = store.get_json(kept["artifacts"]["manifest"])
    assert {entry["sha256"] for entry in manifest.values()} <= _objects(settings.state_dir)
    assert len(before - _objects(settings.state_dir)) >= 2  # the changed object's copy and the old manifest
    with pytest.raises(SnapshotCorrupt, match="was pruned"):
        store.read_manifest(old, "assets")


def test_runs_alive_or_unfinished_keep_their_checkpoints(tmp_path: Path) -> None:
    settings = Settings.from_env(state_dir=tmp_path / "state")
    store = Store(settings.store_dir)
    for run, phase in (("20200101-000000-aaaaaa", "applying"), ("20200101-000001-bbbbbb", "finished")):
        with store.new_artifact() as slot:
            slot.path.write_bytes(run.encode())
        assert slot.artifact is not None
        store.write_manifest(run, "app", {"artifacts": {"dump": {"sha256": slot.artifact.sha256,
                                                                 "size": slot.artifact.size}}})
        folder = settings.runs_dir / run
        folder.mkdir(parents=True)
        RunRecord(run_id=run, command="apply", plan_path="p", targets={}, phase=phase).save(folder)

    result = gc.prune_checkpoints(settings, 1, now=time.time() + DAY)
    assert [i.id for i in result.removed if i.kind == "checkpoint"] == ["20200101-000001-bbbbbb"]
    assert store.read_manifest("20200101-000000-aaaaaa", "app")  # recover still needs it

    hold = Liveness(settings.runs_dir / "20200101-000000-aaaaaa")
    try:
        with pytest.raises(InfrastructureError, match="is running"):
            gc.prune_checkpoints(settings, 0, now=time.time() + DAY)
    finally:
        hold.release()


def test_a_pruned_git_checkpoint_takes_its_refs_out_of_the_repository(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repos", {"README.md": "# infra\n", "app.yaml": "replicas: 2\n"})
    repo.write("app.yaml", "replicas: 3\n")  # dirty: the checkpoint keeps a commit of it under its refs
    settings = Settings.from_env(state_dir=tmp_path / "state")
    store = Store(settings.store_dir)
    target = GitTarget("infra", {"path": str(repo.wc)}, settings)
    old, new = "20200101-000000-aaaaaa", time.strftime("%Y%m%d-%H%M%S-bbbbbb", time.gmtime())
    for run in (old, new):
        store.write_manifest(run, "infra", target.checkpoint(store, run).to_dict())

    def refs(run: str) -> list[str]:
        return repo.git("for-each-ref", "--format=%(refname)", f"refs/shadow/{run}/").split()

    assert refs(old) and refs(new)

    result = gc.prune_checkpoints(settings, 30, now=time.time() + 1)

    (pruned,) = [i for i in result.removed if i.kind == "checkpoint"]
    assert pruned.id == old and f"under refs/shadow/{old}/infra" in pruned.detail, pruned.detail
    assert refs(old) == [] and refs(new), "only the pruned run's refs go"
    assert store.read_manifest(new, "infra")
