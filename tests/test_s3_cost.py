"""S3 pays per change, not per object (issue 16), against moto's S3 server as production.

A checkpoint of a versioned bucket is its version listing: a request per thousand versions, no request per
object. Tags and metadata are read for every object only when the target tracks them (``track:``); otherwise
only for the keys an apply changes, just before it writes them — so a plan whose action changes tags is still
rehearsed, applied and rolled back exactly. A restore and its verification cost the changed keys and listing
pages. Requests are counted with a botocore hook on the target's own client.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from adapters.s3.target import S3Target
from shadow.settings import Settings
from snapshots import Store
from tests.conftest import run_cli, write_plan
from tests.s3_writer import S3Writer
from tests.test_s3_contract import Requests, _plain_bucket

PREFIX = "data/"
def fill(client: Any, bucket: str, n: int, tags: bool = False) -> list[str]:
    keys = [f"{PREFIX}p{i % 7}/obj-{i:05d}.json" for i in range(n)]

    def put(key: str) -> None:
        extra = {"Tagging": urlencode({"k": key[-10:]})} if tags else {}
        client.put_object(Bucket=bucket, Key=key, Body=json.dumps({"key": key}).encode(),
                          ContentType="application/json", Metadata={"src": "test"}, **extra)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, keys))
    return keys


def target(bucket: str, url: str, tmp_path: Path, **extra: Any) -> S3Target:
    return S3Target("data", {"bucket": bucket, "prefix": PREFIX, "endpoint_url": url, **extra},
                    Settings.from_env(state_dir=str(tmp_path)))


def test_a_checkpoint_costs_listing_pages_not_a_request_per_object(bucket, s3_server: str, tmp_path: Path) -> None:
    client, name = bucket
    n = 2500
    fill(client, name, n)
    t = target(name, s3_server, tmp_path)
    requests = Requests(t.client())

    cp = t.checkpoint(Store(tmp_path / "store"), "cost")

    assert cp.meta["objects"] == n and cp.meta["mode"] == "versions"
    # Versioning and lifecycle settings (and versioning once more, for the observation), then the listing:
    # AWS pages at 1,000 versions, moto sends them all in one.
    assert len(requests.sent) <= math.ceil(n / 1000) + 3, requests.sent
    assert requests.count("HeadObject", "GetObjectTagging", "GetObject") == 0
    assert all(set(props) == {"etag", "size"} for props in cp.observation["objects"]["object"].values())


def test_with_track_tags_the_checkpoint_reads_every_objects_tags(bucket, s3_server: str, tmp_path: Path) -> None:
    client, name = bucket
    keys = fill(client, name, 40, tags=True)
    t = target(name, s3_server, tmp_path, track=["tags"])
    requests = Requests(t.client())

    cp = t.checkpoint(Store(tmp_path / "store"), "cost")

    assert requests.count("GetObjectTagging") == len(keys) and requests.count("HeadObject") == 0
    objects = cp.observation["objects"]["object"]
    assert all(objects[f"{name}/{k}"]["tags"] == {"k": k[-10:]} for k in keys)


def test_restore_and_verify_cost_the_changed_keys_and_listing_pages(bucket, s3_server: str, tmp_path: Path) -> None:
    client, name = bucket
    keys = fill(client, name, 1000)
    t = target(name, s3_server, tmp_path)
    store = Store(tmp_path / "store")
    cp = t.checkpoint(store, "cost")
    modified, deleted = keys[:33], keys[33:66]
    added = [f"{PREFIX}new/{i}.json" for i in range(34)]
    for key in modified + added:
        client.put_object(Bucket=name, Key=key, Body=b'{"changed": true}')
    for key in deleted:
        client.delete_object(Bucket=name, Key=key)
    changed = len(modified) + len(deleted) + len(added)
    assert len(t.changes_since(cp, None)) == changed
    requests = Requests(t.client())

    t.restore(cp, store)
    problems = t.verify_restored(cp)

    assert problems == []
    assert len(requests.sent) <= changed + requests.listing, requests.sent
    assert requests.count("GetObjectTagging") == 0, "nothing recorded tags: no tags are read back"
    assert t.changes_since(cp, None) == []
    assert json.loads(client.get_object(Bucket=name, Key=modified[0])["Body"].read()) == {"key": modified[0]}


def test_tag_only_changes_by_others_are_the_price_of_the_default(bucket, s3_server: str, tmp_path: Path) -> None:
    """With the default tracking, a tag changed in place after the checkpoint is not seen; `track: [tags]`
    sees it, and a restore puts it back."""
    client, name = bucket
    fill(client, name, 5, tags=True)
    key = f"{PREFIX}p0/obj-00000.json"
    store = Store(tmp_path / "store")
    default, tracked = target(name, s3_server, tmp_path), target(name, s3_server, tmp_path, track=["tags"])
    cp_default, cp_tracked = default.checkpoint(store, "a"), tracked.checkpoint(store, "b")
    client.put_object_tagging(Bucket=name, Key=key, Tagging={"TagSet": [{"Key": "k", "Value": "other"}]})

    assert default.changes_since(cp_default, None) == []
    assert [c.address for c in tracked.changes_since(cp_tracked, None)] == [f"modify object {name}/{key}"]
    tracked.restore(cp_tracked, store)
    assert tracked.verify_restored(cp_tracked) == []
    assert client.get_object_tagging(Bucket=name, Key=key)["TagSet"] == [{"Key": "k", "Value": "00000.json"}]


def test_a_checkpoint_that_read_tags_compares_with_a_listing_only_observation(bucket, s3_server: str,
                                                                              tmp_path: Path) -> None:
    """A checkpoint stored when every object's tags and metadata were read (as every checkpoint was before issue
    16) against today's listing-only observation: no change is reported that was never looked for."""
    client, name = bucket
    fill(client, name, 10, tags=True)
    store = Store(tmp_path / "store")
    old = target(name, s3_server, tmp_path, track=["metadata", "tags"]).checkpoint(store, "old")
    now = target(name, s3_server, tmp_path)

    assert now.fingerprint() != old.fingerprint  # they recorded different things ...
    assert now.changes_since(old, None) == []  # ... but nothing changed in what both recorded
    assert now.verify_restored(old) == []
    client.put_object(Bucket=name, Key=f"{PREFIX}p1/obj-00001.json", Body=b"new")
    assert [c.op for c in now.changes_since(old, None)] == ["modify"]
    now.restore(old, store)
    assert now.verify_restored(old) == []
    assert now.changes_since(old, None) == []


def test_an_unversioned_checkpoint_reads_tags_only_of_tagged_objects(s3_server: str, tmp_path: Path) -> None:
    """No versions to read later: the copies keep content type, metadata and tags, from the GET that copies
    each object and, for the objects that have tags, one tagging read."""
    client, name = _plain_bucket(s3_server)
    keys = fill(client, name, 12)
    tagged = keys[:4]
    for key in tagged:
        client.put_object_tagging(Bucket=name, Key=key, Tagging={"TagSet": [{"Key": "t", "Value": key[-6:]}]})
    t = target(name, s3_server, tmp_path, allow=["unversioned"])
    requests = Requests(t.client())

    cp = t.checkpoint(Store(tmp_path / "store"), "cost")

    assert cp.meta["mode"] == "copies" and cp.meta["objects"] == len(keys)
    assert requests.count("GetObject") == len(keys) and requests.count("GetObjectTagging") == len(tagged)
    assert requests.count("HeadObject") == 0


@pytest.mark.parametrize("versioned", [True, False], ids=["versioned", "unversioned"])
def test_a_rewritten_object_comes_back_with_its_tags_and_metadata_by_default(s3_server: str, tmp_path: Path,
                                                                             versioned: bool) -> None:
    """Nothing tracked: the restore still puts back the tags and metadata of an object whose content changed —
    from its checkpoint version (S3 keeps them per version), or from what the copy kept."""
    client, name = _plain_bucket(s3_server)
    if versioned:
        client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    keys = fill(client, name, 6, tags=True)
    store = Store(tmp_path / "store")
    t = target(name, s3_server, tmp_path, allow=["unversioned"])
    cp = t.checkpoint(store, "cost")
    client.put_object(Bucket=name, Key=keys[0], Body=b"rewritten", ContentType="text/plain",
                      Metadata={"src": "other"}, Tagging="k=other")

    t.restore(cp, store)

    assert t.verify_restored(cp) == []
    got = client.get_object(Bucket=name, Key=keys[0])
    assert json.loads(got["Body"].read()) == {"key": keys[0]}
    assert got["ContentType"] == "application/json" and got["Metadata"] == {"src": "test"}
    assert client.get_object_tagging(Bucket=name, Key=keys[0])["TagSet"] == [{"Key": "k", "Value": keys[0][-10:]}]


RETAG = """
import json, os, sys
import boto3

s3 = boto3.client("s3")  # AWS_ENDPOINT_URL / credentials come from the environment shadow hands over
bucket = os.environ["SHADOW_ASSETS_BUCKET"]
production = os.environ.get("AWS_ENDPOINT_URL") == os.environ["PROD_S3"]
# A tag-only change: the object's content and version stay, its tags change in place.
s3.put_object_tagging(Bucket=bucket, Key="invoices/0.json",
                      Tagging={"TagSet": [{"Key": "state", "Value": "paid"}]})
if production and os.environ.get("FAIL_AFTER_FIRST"):
    sys.exit("network dropped after the first object")
s3.put_object(Bucket=bucket, Key="invoices/1.json", Body=b'{"n": 1, "currency": "EUR"}', Tagging="state=paid",
              ContentType="application/json")
"""

PLAN = """
version: 1
targets:
  assets: {{kind: s3, bucket: {bucket}, endpoint_url: "{url}"}}
action:
  command: "{python} retag.py"
  env:
    PROD_S3: "{url}"{extra}
expect:
  assets:
    may: ["modify object {bucket}/invoices/*"]
policy:
  rehearse_rollback: true
"""


def _tags(client: Any, name: str, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in client.get_object_tagging(Bucket=name, Key=key)["TagSet"]}


@pytest.fixture
def tagged(bucket: tuple[Any, str]) -> tuple[Any, str]:
    client, name = bucket
    for i in range(3):
        client.put_object(Bucket=name, Key=f"invoices/{i}.json", Body=json.dumps({"n": i}).encode(),
                          ContentType="application/json", Metadata={"owner": "billing"},
                          Tagging=urlencode({"state": "open", "n": str(i)}))
    return client, name


def _retag_plan(tmp_path: Path, name: str, url: str, fail: bool = False) -> Path:
    extra = '\n    FAIL_AFTER_FIRST: "1"' if fail else ""
    return write_plan(tmp_path, PLAN.format(bucket=name, url=url, python=sys.executable, extra=extra),
                      {"retag.py": RETAG})


def _assert_at_checkpoint(client: Any, name: str) -> None:
    for i in range(3):
        assert _tags(client, name, f"invoices/{i}.json") == {"state": "open", "n": str(i)}, i
        got = client.get_object(Bucket=name, Key=f"invoices/{i}.json")
        assert json.loads(got["Body"].read()) == {"n": i}
        assert got["ContentType"] == "application/json" and got["Metadata"] == {"owner": "billing"}


def test_an_action_that_changes_tags_is_rehearsed_applied_and_rolled_back_exactly(tagged, shadow_cli, s3_server: str,
                                                                                 tmp_path: Path) -> None:
    client, name = tagged
    plan = _retag_plan(tmp_path, name, s3_server)

    applied = shadow_cli("apply", "-f", str(plan), "--json")

    assert applied.code == 0, applied.text
    report = json.loads(applied.out)
    assert report["outcome"] == "applied", report["reason"]
    assets = next(t for t in report["targets"] if t["name"] == "assets")
    rehearsed = {c["name"]: c["detail"] for c in assets["changes"]}
    assert rehearsed[f"{name}/invoices/0.json"] == {"tags": {"from": {"n": "0", "state": "open"},
                                                             "to": {"state": "paid"}}}
    assert {c["name"] for c in assets["production_changes"]} == {f"{name}/invoices/0.json", f"{name}/invoices/1.json"}
    assert _tags(client, name, "invoices/0.json") == {"state": "paid"}

    rolled = shadow_cli("rollback", report["run_id"], "--json")

    assert rolled.code == 0, rolled.text
    assert json.loads(rolled.out)["outcome"] == "restored", rolled.out
    _assert_at_checkpoint(client, name)


def test_a_failed_apply_that_changed_tags_is_undone_exactly(tagged, shadow_cli, s3_server: str,
                                                           tmp_path: Path) -> None:
    client, name = tagged
    plan = _retag_plan(tmp_path, name, s3_server, fail=True)

    failed = shadow_cli("apply", "-f", str(plan), "--json")

    report = json.loads(failed.out)
    assert report["outcome"] == "rolled_back", report["reason"]
    _assert_at_checkpoint(client, name)


def test_rollback_full_puts_back_the_tags_the_apply_changed_in_place(tagged, shadow_cli, s3_server: str,
                                                                     tmp_path: Path) -> None:
    client, name = tagged
    applied = shadow_cli("apply", "-f", str(_retag_plan(tmp_path, name, s3_server)), "--json")
    assert applied.code == 0, applied.text
    assert _tags(client, name, "invoices/0.json") == {"state": "paid"}

    rolled = shadow_cli("rollback", json.loads(applied.out)["run_id"], "--full", "--json")

    assert rolled.code == 0, rolled.text
    report = json.loads(rolled.out)
    assert report["outcome"] == "restored", report["reason"]
    assert next(t for t in report["targets"] if t["name"] == "assets")["restore"]["mode"] == "full"
    _assert_at_checkpoint(client, name)


def test_tags_changed_in_place_are_applied_and_undone_while_another_writer_keeps_writing(
        tagged, shadow_cli, s3_server: str, tmp_path: Path) -> None:
    """Production never stands still: a writer puts, overwrites and deletes objects under logs/ of the same bucket
    through the apply, the rollback, and a failed apply's undo. The tags come back exactly; none of its writes is
    lost, and none is counted as the action's change."""
    client, name = tagged
    with S3Writer(s3_server, name, "logs/", tmp_path / "writes.jsonl") as writer:
        applied = shadow_cli("apply", "-f", str(_retag_plan(tmp_path / "ok", name, s3_server)), "--json")
        assert applied.code == 0, applied.text
        report = json.loads(applied.out)
        assert report["outcome"] == "applied", report["reason"]
        assets = next(t for t in report["targets"] if t["name"] == "assets")
        assert {c["name"] for c in assets["production_changes"]} == {f"{name}/invoices/0.json",
                                                                     f"{name}/invoices/1.json"}
        assert _tags(client, name, "invoices/0.json") == {"state": "paid"}

        rolled = shadow_cli("rollback", report["run_id"], "--json")
        assert rolled.code == 0, rolled.text
        back = json.loads(rolled.out)
        assert back["outcome"] == "restored", back["reason"]
        assert next(t for t in back["targets"] if t["name"] == "assets")["restore"]["mode"] == "undo"
        _assert_at_checkpoint(client, name)

        failed = shadow_cli("apply", "-f", str(_retag_plan(tmp_path / "fails", name, s3_server, fail=True)),
                            "--json")
        assert json.loads(failed.out)["outcome"] == "rolled_back", failed.text
        _assert_at_checkpoint(client, name)
        writer.stop()
    assert writer.assert_kept(client) > 10


def test_a_bad_track_value_is_bad_input_naming_the_key(shadow_cli, tmp_path: Path) -> None:
    write_plan(tmp_path, 'version: 1\ntargets:\n  assets: {kind: s3, bucket: acme, track: [tags, acl]}\n'
                         'action: {command: "true"}\n')

    r = shadow_cli("plan")

    assert r.code == 2, r.text
    assert "targets.assets.track" in r.err and "'acl'" in r.err and "tags, metadata" in r.err
    assert "Traceback" not in r.text


# A Postgres change no undo record can put back (a dropped index) makes a failed apply of the plan restore the
# whole checkpoint of every target — the S3 one too, whose default checkpoint holds no tags.
MIXED = """
import os, sys
import boto3, psycopg

production = os.environ.get("AWS_ENDPOINT_URL") == os.environ["PROD_S3"]
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("UPDATE users SET full_name = upper(full_name) WHERE id = 1")
    # A changed function: no undo record puts it back, so the whole checkpoint is restored (tags included).
    conn.execute("COMMENT ON FUNCTION log_cancellation() IS 'changed by the deploy hook'")
boto3.client("s3").put_object_tagging(Bucket=os.environ["SHADOW_ASSETS_BUCKET"], Key="invoices/0.json",
                                      Tagging={"TagSet": [{"Key": "state", "Value": "paid"}]})
if production and os.environ.get("FAIL"):
    sys.exit("the deploy hook failed after retagging")
"""

MIXED_PLAN = """
version: 1
targets:
  app: {{kind: postgres, dsn: "{dsn}"}}
  assets: {{kind: s3, bucket: {bucket}, endpoint_url: "{url}"}}
action:
  command: "{python} mixed.py"
  env:
    PROD_S3: "{url}"
    FAIL: "1"
expect:
  app:
    may: ["update rows public.users", "alter function public.log_cancellation()"]
  assets:
    may: ["modify object {bucket}/invoices/*"]
policy:
  rehearse_rollback: false
"""


def _mixed_plan(tmp_path: Path, prod_db: Any, name: str, url: str) -> Path:
    return write_plan(tmp_path, MIXED_PLAN.format(dsn=prod_db.dsn, bucket=name, url=url, python=sys.executable),
                      {"mixed.py": MIXED})


def test_a_whole_checkpoint_restore_puts_back_tags_the_failed_apply_changed_in_place(tagged, prod_db, shadow_cli,
                                                                                    s3_server: str,
                                                                                    tmp_path: Path) -> None:
    client, name = tagged
    checkpoint = prod_db.fingerprint()

    failed = shadow_cli("apply", "-f", str(_mixed_plan(tmp_path, prod_db, name, s3_server)), "--json")

    report = json.loads(failed.out)
    assert report["outcome"] == "rolled_back", report["reason"]
    assert "restored to the checkpoint and verified" in report["reason"], report["reason"]
    assets = next(t for t in report["targets"] if t["name"] == "assets")
    assert assets["restore"]["needed"] and assets["restore"]["verified"], assets["restore"]
    assert assets["restore"]["mode"] == "full", assets["restore"]
    _assert_at_checkpoint(client, name)
    assert prod_db.fingerprint() == checkpoint


def test_recover_after_a_kill_restores_the_tags_the_apply_changed_in_place(tagged, prod_db, s3_server: str,
                                                                         tmp_path: Path) -> None:
    """Killed just after the failed action, before anything was put back: ``shadow recover`` restores the whole
    checkpoint from a new process, tags included."""
    client, name = tagged
    checkpoint = prod_db.fingerprint()
    plan = _mixed_plan(tmp_path, prod_db, name, s3_server)
    trace = tmp_path / "trace.txt"
    traced = run_cli("apply", "-f", str(plan), state=tmp_path / "traced", cwd=tmp_path,
                     env={"SHADOW_FAULT_TRACE": str(trace)})
    assert traced.code != 0, traced.text
    points = [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]
    point = next(n for n, p in enumerate(points, 1) if p.startswith("begin restore"))
    client.put_object_tagging(Bucket=name, Key="invoices/0.json",  # whatever the traced run left
                              Tagging={"TagSet": [{"Key": "state", "Value": "open"}, {"Key": "n", "Value": "0"}]})
    assert prod_db.fingerprint() == checkpoint and _tags(client, name, "invoices/0.json")["state"] == "open"

    killed = run_cli("apply", "-f", str(plan), state=tmp_path / "state", cwd=tmp_path,
                     env={"SHADOW_FAULT_KILL_AT": str(point)})
    assert killed.code == -signal.SIGKILL, (points[point - 1], killed.text)
    assert _tags(client, name, "invoices/0.json") == {"state": "paid"}
    recovered = run_cli("recover", state=tmp_path / "state", cwd=tmp_path)

    assert recovered.code == 0 and "Traceback" not in recovered.err, recovered.text
    assert "rolled_back" in recovered.out or "rolled back" in recovered.out, recovered.text
    _assert_at_checkpoint(client, name)
    assert prod_db.fingerprint() == checkpoint
