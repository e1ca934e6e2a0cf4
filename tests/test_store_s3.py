"""The checkpoint store in S3 (``SHADOW_STORE_URL=s3://bucket/prefix``): the state dir's store is then a verified
cache, S3 the truth. Against moto's S3 server on 127.0.0.1 (the session's ``s3_server``) and, end to end, a real
PostgreSQL production through the real CLI."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.postgres.cluster import free_port
from shadow import gc
from shadow.errors import BadInput, InfrastructureError, SnapshotCorrupt
from shadow.settings import Settings
from snapshots import Artifact, open_store
from snapshots.s3 import S3Store, encryption, parse_url
from tests.conftest import ProdDb, write_plan
from tests.test_cli_end_to_end import SAFE_PLAN, SAFE_SQL

MiB = 1 << 20
SECRET = "store-secret-7f3a9c"  # moto takes any credentials; this one must never show in a message
OLD_RUN = "20200101-000000-aaaaaa"


@pytest.fixture
def store_bucket(s3_server: str) -> Iterator[tuple[Any, str]]:
    """An empty, unversioned bucket for a checkpoint store: (boto3 client, name)."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key=SECRET)
    name = "store-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=name)
    yield client, name


def _env(s3_server: str, bucket: str, **more: str) -> dict[str, str]:
    return {"SHADOW_STORE_URL": f"s3://{bucket}/team/ckpt", "AWS_ENDPOINT_URL_S3": s3_server,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
            **more}


def _settings(cache: Path, env: dict[str, str]) -> Settings:
    return Settings.from_env(env, state_dir=cache)


def _store(cache: Path, env: dict[str, str]) -> S3Store:
    store = open_store(_settings(cache, env))
    assert isinstance(store, S3Store)
    return store


def _keys(client: Any, bucket: str, under: str = "") -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="team/ckpt/" + under)
    return {o["Key"].removeprefix("team/ckpt/") for page in pages for o in page.get("Contents", ())}


def _artifact(store: S3Store, data: bytes) -> Artifact:
    with store.new_artifact() as slot:
        slot.path.write_bytes(data)
    assert slot.artifact is not None
    return slot.artifact


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the store ------------------------------------------------------------------------------------------------
def test_what_one_runner_stores_another_reads_verified_from_s3_with_an_empty_cache(
        s3_server: str, store_bucket: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = store_bucket
    env = _env(s3_server, bucket)
    writer = _store(tmp_path / "a", env)
    art = _artifact(writer, b"pg_dump archive of production")
    manifest = {"kind": "postgres", "artifacts": {"dump": {"sha256": art.sha256, "size": art.size}}}
    writer.write_manifest(OLD_RUN, "app", manifest)
    writer.write_applied(OLD_RUN, "app", {"fingerprint": "after"})
    writer.write_undo(OLD_RUN, "app", {"drop": ["public.users.email_verified"]})
    ref = writer.put_json({"inv/0.json": {"sha256": art.sha256, "size": art.size}})
    assert _keys(client, bucket) >= {f"objects/sha256/{art.sha256[:2]}/{art.sha256}", f"manifests/{OLD_RUN}/app.json",
                                     f"manifests/{OLD_RUN}/app.undo.json", f"applied/{OLD_RUN}/app.json"}

    reader = _store(tmp_path / "b", env)
    assert not (tmp_path / "b" / "snapshots").exists()
    reader.refuse_if_pruned(OLD_RUN)
    assert reader.read_manifest(OLD_RUN, "app") == manifest
    assert reader.read_applied(OLD_RUN, "app") == {"fingerprint": "after"}
    assert reader.read_undo(OLD_RUN, "app") == {"drop": ["public.users.email_verified"]}
    assert reader.get_json(ref) == {"inv/0.json": {"sha256": art.sha256, "size": art.size}}
    path = reader.open_verified(art)
    assert path == reader.object_path(art.sha256) and path.read_bytes() == b"pg_dump archive of production"
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700  # the cache is as private as a local store
    assert list((reader.root / "tmp").iterdir()) == []
    with pytest.raises(SnapshotCorrupt, match="no checkpoint manifest"):
        reader.read_manifest("20200101-000000-ffffff", "app")


def test_a_corrupt_object_in_s3_is_refused_and_never_enters_the_cache(
        s3_server: str, store_bucket: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = store_bucket
    env = _env(s3_server, bucket)
    writer = _store(tmp_path / "a", env)
    art = _artifact(writer, b"the good checkpoint")
    client.put_object(Bucket=bucket, Key=f"team/ckpt/objects/sha256/{art.sha256[:2]}/{art.sha256}",
                      Body=b"the bad checkpoint!")

    reader = _store(tmp_path / "b", env)
    with pytest.raises(SnapshotCorrupt, match="is corrupt: sha256 .* does not match .*nothing was restored"):
        reader.open_verified(art)
    assert not reader.object_path(art.sha256).exists()
    assert list((reader.root / "tmp").iterdir()) == []
    with pytest.raises(SnapshotCorrupt, match="is corrupt"):  # and again: nothing bad was kept to be trusted
        reader.open_verified(art)

    # A runner whose own cache copy is damaged takes S3's, the truth, when S3's is good.
    client.put_object(Bucket=bucket, Key=f"team/ckpt/objects/sha256/{art.sha256[:2]}/{art.sha256}",
                      Body=b"the good checkpoint")
    writer.object_path(art.sha256).write_bytes(b"bit rot on this disk")
    assert writer.open_verified(art).read_bytes() == b"the good checkpoint"


def test_a_large_artifact_goes_multipart_and_comes_back_whole(
        s3_server: str, store_bucket: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = store_bucket
    env = _env(s3_server, bucket)
    writer = _store(tmp_path / "a", env)
    writer.multipart_threshold = writer.multipart_chunksize = 5 * MiB  # S3's smallest part
    data = os.urandom(11 * MiB)
    art = _artifact(writer, data)

    head = client.head_object(Bucket=bucket, Key=f"team/ckpt/objects/sha256/{art.sha256[:2]}/{art.sha256}")
    assert head["ETag"].strip('"').endswith("-3"), head["ETag"]  # three parts: 5 + 5 + 1 MiB
    assert head["ContentLength"] == len(data)
    assert [p.name for p in (writer.root / "tmp").iterdir()] == []  # one local copy: the cache's

    reader = _store(tmp_path / "b", env)
    reader.multipart_threshold = reader.multipart_chunksize = 5 * MiB
    assert reader.open_verified(art).read_bytes() == data


def test_every_stored_object_is_encrypted_as_shadow_store_sse_asks(
        s3_server: str, store_bucket: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = store_bucket
    store = _store(tmp_path / "a", _env(s3_server, bucket, SHADOW_STORE_SSE="AES256"))
    store.multipart_threshold = store.multipart_chunksize = 5 * MiB
    _artifact(store, os.urandom(6 * MiB))  # uploaded in parts
    art = _artifact(store, b"a checkpoint")
    store.write_manifest(OLD_RUN, "app", {"artifacts": {"dump": {"sha256": art.sha256, "size": art.size}}})
    store.write_applied(OLD_RUN, "app", {"fingerprint": "x"})
    store.write_undo(OLD_RUN, "app", {"undo": 1})
    keys = _keys(client, bucket)
    assert len(keys) == 6
    for key in keys:
        assert client.head_object(Bucket=bucket, Key="team/ckpt/" + key)["ServerSideEncryption"] == "AES256", key


def test_a_missing_bucket_is_an_infrastructure_error_naming_the_store(s3_server: str, tmp_path: Path) -> None:
    store = _store(tmp_path / "a", _env(s3_server, "no-such-" + uuid.uuid4().hex[:8]))
    with pytest.raises(InfrastructureError) as raised:
        _artifact(store, b"a checkpoint")
    assert f"checkpoint store {store.describe()}: uploading artifact" in str(raised.value)
    assert "NoSuchBucket" in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(InfrastructureError, match="reading manifests/.*/app.json failed: NoSuchBucket"):
        store.read_manifest(OLD_RUN, "app")


def test_a_store_url_or_encryption_setting_that_cannot_work_is_bad_input() -> None:
    assert parse_url("s3://bucket") == ("bucket", "")
    assert parse_url("s3://bucket/team/ckpt/") == ("bucket", "team/ckpt")
    for url in ("s3:/x", "http://127.0.0.1:9000/bucket", "s3://", "s3://b/a//c", "s3://bucket/x?versionId=1"):
        with pytest.raises(BadInput, match="SHADOW_STORE_URL must be s3://bucket/prefix"):
            parse_url(url)
    with pytest.raises(BadInput) as raised:
        parse_url(f"https://key:{SECRET}@example.com/x")
    assert SECRET not in str(raised.value)
    assert encryption({}) == {}  # the bucket's default encryption applies
    assert encryption({"SHADOW_STORE_KMS_KEY": "k1"}) == {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": "k1"}
    with pytest.raises(BadInput, match="SHADOW_STORE_SSE must be one of"):
        encryption({"SHADOW_STORE_SSE": "rot13"})
    with pytest.raises(BadInput, match="does not use one"):
        encryption({"SHADOW_STORE_SSE": "AES256", "SHADOW_STORE_KMS_KEY": "k1"})


# -- pruning --------------------------------------------------------------------------------------------------
def test_a_prune_by_one_runner_is_seen_by_another_and_keeps_what_kept_checkpoints_use(
        s3_server: str, store_bucket: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = store_bucket
    env = _env(s3_server, bucket)
    writer = _store(tmp_path / "a", env)
    old_dump, kept_copy = _artifact(writer, b"old dump"), _artifact(writer, b"an object copy a kept run uses")
    writer.write_manifest(OLD_RUN, "app", {"artifacts": {"dump": {"sha256": old_dump.sha256, "size": old_dump.size}}})
    writer.write_applied(OLD_RUN, "app", {"fingerprint": "x"})
    new_run = time.strftime("%Y%m%d-%H%M%S-bbbbbb", time.gmtime())
    # The kept run refers to the object copy only through its S3 manifest artifact (as the S3 target does).
    inner = writer.put_json({"inv/0.json": {"sha256": kept_copy.sha256, "size": kept_copy.size}})
    writer.write_manifest(new_run, "assets", {"artifacts": {"manifest": {**inner, "format": "s3 manifest"}}})
    other = _store(tmp_path / "b", env)
    assert other.read_manifest(OLD_RUN, "app")  # now in its cache too

    # A third runner, with an empty cache, prunes: it sees every run only through S3.
    pruner = _settings(tmp_path / "c", env)
    result = gc.prune_checkpoints(pruner, 30, now=time.time() + 10)

    assert [i.id for i in result.removed if i.kind == "checkpoint"] == [OLD_RUN]
    assert [i.id for i in result.removed if i.kind == "artifact"] == [old_dump.sha256[:16]]
    assert _keys(client, bucket, f"manifests/{OLD_RUN}/") == {f"manifests/{OLD_RUN}/pruned.json"}
    assert _keys(client, bucket, "applied/") == set()
    assert {k.rpartition("/")[2] for k in _keys(client, bucket, "objects/")} == {kept_copy.sha256, inner["sha256"]}
    with pytest.raises(SnapshotCorrupt, match="was pruned"):
        other.refuse_if_pruned(OLD_RUN)  # though its cache still holds the manifest
    with pytest.raises(SnapshotCorrupt, match="missing from s3://"):
        other.open_verified(old_dump)
    assert other.read_manifest(new_run, "assets")
    assert gc.prune_checkpoints(pruner, 30, now=time.time() + 10).removed == []  # nothing more to do


# -- through the CLI ------------------------------------------------------------------------------------------
def _run_id(out: str) -> str:
    return out.split("run ")[-1].split()[0]


def _users(db: ProdDb) -> object:
    return db.scalar("SELECT md5(string_agg(u::text, ',' ORDER BY id)) FROM users u")


def _column_exists(db: ProdDb) -> bool:
    return bool(db.scalar("SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' "
                          "AND column_name = 'email_verified'"))


def _plan_and_apply(prod_db: ProdDb, shadow_cli: Any, tmp_path: Path, env: dict[str, str]) -> str:
    write_plan(tmp_path, SAFE_PLAN, {"migrations/0042_add_email_verified.sql": SAFE_SQL})
    planned = shadow_cli("plan", env=env)
    assert planned.code == 0, planned.text
    applied = shadow_cli("apply", env=env)
    assert applied.code == 0, applied.text
    assert _column_exists(prod_db)
    return _run_id(applied.out)


@pytest.mark.parametrize("how", [(), ("--full",)], ids=["own-change-undone", "whole-checkpoint"])
def test_a_rollback_restores_production_from_s3_when_the_local_store_is_gone(
        prod_db: ProdDb, shadow_cli: Any, tmp_path: Path, s3_server: str, store_bucket: tuple[Any, str],
        how: tuple[str, ...]) -> None:
    client, bucket = store_bucket
    env = {**_env(s3_server, bucket), "APP_DATABASE_URL": prod_db.dsn}
    before, users = prod_db.fingerprint(), _users(prod_db)
    run_id = _plan_and_apply(prod_db, shadow_cli, tmp_path, env)
    assert {k for k in _keys(client, bucket, f"manifests/{run_id}/")} == {
        f"manifests/{run_id}/app.json", f"manifests/{run_id}/app.undo.json"}
    assert _keys(client, bucket, f"applied/{run_id}/") == {f"applied/{run_id}/app.json"}
    shutil.rmtree(shadow_cli.state_dir / "snapshots")

    rolled = shadow_cli("rollback", run_id, *how, env=env)

    assert rolled.code == 0, rolled.text
    assert "RESTORED" in rolled.out
    assert not _column_exists(prod_db)
    assert _users(prod_db) == users and prod_db.fingerprint() == before
    cache = shadow_cli.state_dir / "snapshots"
    assert (cache / "manifests" / run_id / "app.json").exists()  # fetched back into the cache
    fetched = {p.name for p in (cache / "objects").rglob("*") if p.is_file()}
    if how:  # the pg_dump archive came back from S3, verified
        used = json.loads((cache / "manifests" / run_id / "app.json").read_text())["artifacts"]["dump"]
    else:  # the undo record of the run's own change did
        used = json.loads((cache / "manifests" / run_id / "app.undo.json").read_text())["undo"]
    assert used["sha256"] in fetched
    assert fetched <= {k.rpartition("/")[2] for k in _keys(client, bucket, "objects/")}
    assert SECRET not in rolled.text


def test_gc_prunes_old_checkpoints_from_s3_and_a_rollback_then_names_the_prune(
        prod_db: ProdDb, shadow_cli: Any, tmp_path: Path, s3_server: str, store_bucket: tuple[Any, str]) -> None:
    client, bucket = store_bucket
    env = {**_env(s3_server, bucket), "APP_DATABASE_URL": prod_db.dsn}
    run_id = _plan_and_apply(prod_db, shadow_cli, tmp_path, env)
    stored = {k.rpartition("/")[2] for k in _keys(client, bucket, "objects/")}
    assert len(stored) >= 2
    time.sleep(1.1)  # S3 lists LastModified in whole seconds: only objects older than the prune's start go

    pruned = shadow_cli("gc", "--checkpoints-older-than", "0", "--json", env=env)

    assert pruned.code == 0, pruned.text
    rows = json.loads(pruned.out)
    assert {r["id"] for r in rows if r["kind"] == "checkpoint"} >= {run_id}
    assert {r["id"] for r in rows if r["kind"] == "artifact"} == {s[:16] for s in stored}
    assert _keys(client, bucket, "objects/") == set()
    assert _keys(client, bucket, "applied/") == set()
    assert _keys(client, bucket, f"manifests/{run_id}/") == {f"manifests/{run_id}/pruned.json"}

    after_apply = prod_db.fingerprint()
    shutil.rmtree(shadow_cli.state_dir / "snapshots")  # the marker is found in S3
    refused = shadow_cli("rollback", run_id, env=env)
    assert refused.code == 3 and "Traceback" not in refused.text, refused.text
    assert "was pruned" in refused.err, refused.text
    assert prod_db.fingerprint() == after_apply


def test_a_bad_store_url_is_bad_input_in_one_line(prod_db: ProdDb, shadow_cli: Any, tmp_path: Path) -> None:
    write_plan(tmp_path, SAFE_PLAN, {"migrations/0042_add_email_verified.sql": SAFE_SQL})
    for url in ("s3:/x", "http://127.0.0.1:9000/bucket"):
        r = shadow_cli("plan", env={"APP_DATABASE_URL": prod_db.dsn, "SHADOW_STORE_URL": url})
        assert r.code == 2, r.text
        assert r.out == "" and len(r.err.strip().splitlines()) == 1, r.text
        assert "SHADOW_STORE_URL must be s3://bucket/prefix" in r.err and url in r.err


def test_an_unreachable_store_endpoint_is_an_infrastructure_error_in_one_line(
        prod_db: ProdDb, shadow_cli: Any, tmp_path: Path) -> None:
    write_plan(tmp_path, SAFE_PLAN, {"migrations/0042_add_email_verified.sql": SAFE_SQL})
    before = prod_db.fingerprint()
    nowhere = f"http://127.0.0.1:{free_port()}"
    env = {**_env(nowhere, "ckpt"), "APP_DATABASE_URL": prod_db.dsn}
    started = time.monotonic()
    r = shadow_cli("apply", env=env)
    assert r.code == 3, r.text
    errors = [line for line in r.err.splitlines() if "error" in line]
    assert len(errors) == 1, r.text
    assert f"checkpoint store s3://ckpt/team/ckpt at {nowhere}: reading artifact " in errors[0]
    assert errors[0].endswith("failed: could not connect to the endpoint")
    assert "Traceback" not in r.text and SECRET not in r.text
    assert prod_db.fingerprint() == before
    assert time.monotonic() - started < 20
