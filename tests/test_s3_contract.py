"""The s3 adapter's contract, against moto's S3 *server* as production (a real HTTP endpoint, no in-process mock).

On a versioned and on an unversioned bucket:

    checkpoint → the shadow built from it observes equal to the checkpoint and holds the same objects (fidelity) →
    production is changed in many ways (each change must be visible to the observation) →
    restore → production observes equal to the checkpoint again, the bytes came back, nothing outside the prefix
    was touched, and no version was destroyed.

And the diff side: changes made inside a shadow are reported as ``add | delete | modify object <bucket>/<key>``
with the right details and content diffs. Buckets hold tens of objects: moto's server lists versions slowly.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from adapters.postgres.cluster import free_port
from adapters.s3.target import S3Shadow, S3Target
from shadow.errors import InfrastructureError, SnapshotCorrupt, TargetUnreachable
from shadow.settings import Settings
from snapshots import Store
from tests.conftest import ROOT

RUN_ID = "contract"
PREFIX = "inv/"
MiB = 1024 * 1024


@dataclass(frozen=True)
class Obj:
    body: bytes
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def big(seed: int) -> bytes:
    return bytes((i * seed) % 251 for i in range(256)) * (5 * MiB // 256)


# Production before the checkpoint: under the prefix (the target's scope) ...
SEED = {
    "inv/a.json": Obj(b'{"total": 10, "currency": "EUR"}', "application/json", {"owner": "ann"}, {"team": "billing"}),
    "inv/2026/03/nested/deep.txt": Obj(b"deep\n", "text/plain"),
    "inv/2026/März Rechnung #1.json": Obj('{"kunde": "Müller"}'.encode(), "application/json", {"lang": "de"}),
    "inv/with space & plus+.txt": Obj(b"spaces", "text/plain", tags={"kind": "odd key"}),
    "inv/empty": Obj(b""),
    "inv/big.bin": Obj(big(7), "application/octet-stream", {"parts": "one"}),
    "inv/doomed.txt": Obj(b"deleted after the checkpoint", "text/plain", {"v": "1"}, {"fate": "deleted"}),
    "inv/phoenix.txt": Obj(b"the original phoenix", "text/plain", {"v": "1"}),
    "inv/retype.txt": Obj(b"type changes", "text/plain"),
    "inv/remeta.txt": Obj(b"metadata changes", "text/plain", {"owner": "bob", "stage": "draft"}),
    "inv/retag.txt": Obj(b"tags change", "text/plain", tags={"a": "1"}),
    "inv/untag.txt": Obj(b"tags removed", "text/plain", tags={"a": "1", "b": "2"}),
    "inv/emptied.txt": Obj(b"made empty later", "text/plain"),
}
# ... and outside it: never observed, never restored (note "inventory.txt" shares the string "inv").
OUTSIDE = {
    "other/keep.txt": Obj(b"outside", "text/plain"),
    "inventory.txt": Obj(b"not under inv/", "text/plain"),
}
CREATED = {"inv/new.txt": b"created since", "inv/new/nested/deeper.json": b"{}"}


@dataclass
class Prod:
    """One production bucket on the moto server, with the helpers the assertions need."""

    client: Any
    bucket: str
    url: str
    versioned: bool

    def put(self, key: str, obj: Obj) -> None:
        extra: dict[str, Any] = {"ContentType": obj.content_type, "Metadata": obj.metadata}
        if obj.tags:
            extra["Tagging"] = urlencode(obj.tags)
        self.client.put_object(Bucket=self.bucket, Key=key, Body=obj.body, **extra)

    def seed(self, objects: dict[str, Obj]) -> None:
        for key, obj in objects.items():
            self.put(key, obj)

    def read(self, key: str) -> Obj:
        got = self.client.get_object(Bucket=self.bucket, Key=key)
        tags = self.client.get_object_tagging(Bucket=self.bucket, Key=key)["TagSet"]
        return Obj(got["Body"].read(), got["ContentType"], got["Metadata"], {t["Key"]: t["Value"] for t in tags})

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError:
            return False

    def history(self, prefix: str = "") -> dict[str, list[tuple[str, bool]]]:
        """key → [(version id, is a delete marker)] of every version S3 keeps."""
        out: dict[str, list[tuple[str, bool]]] = {}
        for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Versions", []):
                out.setdefault(item["Key"], []).append((item["VersionId"], False))
            for item in page.get("DeleteMarkers", []):
                out.setdefault(item["Key"], []).append((item["VersionId"], True))
        return out

    def version_ids(self, prefix: str = "") -> set[tuple[str, str]]:
        """(key, version id) of every object version, delete markers left out (a restore removes some)."""
        return {(key, vid) for key, versions in self.history(prefix).items() for vid, marker in versions
                if not marker}

    def latest_is_marker(self, key: str) -> bool:
        page = self.client.list_object_versions(Bucket=self.bucket, Prefix=key)
        return any(m["Key"] == key and m["IsLatest"] for m in page.get("DeleteMarkers", []))


def _plain_bucket(s3_server: str) -> tuple[Any, str]:
    """A fresh bucket that was never versioned."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    name = "prod-plain-" + uuid.uuid4().hex[:10]
    client.create_bucket(Bucket=name)
    return client, name


@pytest.fixture(params=["versioned", "unversioned"])
def prod(request: pytest.FixtureRequest, s3_server: str) -> Prod:
    if request.param == "versioned":
        client, name = request.getfixturevalue("bucket")
    else:
        client, name = _plain_bucket(s3_server)
    return Prod(client, name, s3_server, request.param == "versioned")


VERSIONED_ONLY = pytest.mark.parametrize("prod", ["versioned"], indirect=True)
TRACK_ALL = ["tags", "metadata"]  # an s3 target's `track:` that observes every property of every object


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def make_target(prod: Prod, tmp_path: Path, prefix: str = PREFIX, name: str = "invoices",
                bucket: str | None = None, url: str | None = None, **extra: Any) -> S3Target:
    spec = {"bucket": bucket or prod.bucket, "prefix": prefix, "endpoint_url": url or prod.url, **extra}
    return S3Target(name, spec, Settings.from_env(state_dir=str(tmp_path)))


class Requests:
    """Every request a boto3 client sends, by operation name."""

    def __init__(self, client: Any) -> None:
        self.sent: list[str] = []
        client.meta.events.register("before-send.s3.*", self._record)

    def _record(self, event_name: str, **_: Any) -> None:
        self.sent.append(event_name.rsplit(".", 1)[-1])

    @property
    def writes(self) -> list[str]:
        return [op for op in self.sent if not op.startswith(("List", "Get", "Head"))]

    def count(self, *ops: str) -> int:
        return sum(self.sent.count(op) for op in ops)

    @property
    def listing(self) -> int:
        """Listing pages sent (of current objects or of versions)."""
        return self.count("ListObjectVersions", "ListObjectsV2", "ListObjects")


def mutate(prod: Prod) -> None:
    """Every kind of change production can see after a checkpoint, inside the prefix and outside it."""
    c, b = prod.client, prod.bucket
    prod.put("inv/a.json", Obj(b'{"total": 99, "currency": "EUR"}', "application/json", {"owner": "ann"},
                               {"team": "billing"}))
    prod.put("inv/big.bin", Obj(big(11), "application/octet-stream", {"parts": "one"}))
    prod.put("inv/empty", Obj(b"no longer empty"))
    prod.put("inv/emptied.txt", Obj(b"", "text/plain"))
    c.delete_object(Bucket=b, Key="inv/doomed.txt")
    c.delete_object(Bucket=b, Key="inv/phoenix.txt")
    prod.put("inv/phoenix.txt", Obj(b"risen with new content", "text/plain", {"v": "2"}))
    c.delete_object(Bucket=b, Key="inv/2026/März Rechnung #1.json")
    c.copy_object(Bucket=b, Key="inv/retype.txt", CopySource={"Bucket": b, "Key": "inv/retype.txt"},
                  ContentType="text/markdown", MetadataDirective="REPLACE")
    c.copy_object(Bucket=b, Key="inv/remeta.txt", CopySource={"Bucket": b, "Key": "inv/remeta.txt"},
                  ContentType="text/plain", Metadata={"owner": "eve"}, MetadataDirective="REPLACE")
    c.put_object_tagging(Bucket=b, Key="inv/retag.txt", Tagging={"TagSet": [{"Key": "a", "Value": "2"},
                                                                          {"Key": "new", "Value": "x"}]})
    c.delete_object_tagging(Bucket=b, Key="inv/untag.txt")
    for key, body in CREATED.items():
        prod.put(key, Obj(body))
    # Outside the prefix: the restore must leave these changes alone.
    prod.put("other/keep.txt", Obj(b"changed outside, after the checkpoint", "text/plain"))
    prod.put("inventory.txt", Obj(b"also changed", "text/plain"))
    prod.put("other/later.txt", Obj(b"created outside"))


# -- checkpoint → shadow → mutate → restore ------------------------------------------------------------------


@pytest.mark.parametrize("track", [[], ["tags"], ["metadata", "tags"]])
def test_checkpoint_observes_only_the_prefix(prod: Prod, tmp_path: Path, store: Store, track: list[str]) -> None:
    prod.seed(SEED | OUTSIDE)
    cp = make_target(prod, tmp_path, track=track).checkpoint(store, RUN_ID)

    assert set(cp.observation["objects"]["object"]) == {f"{prod.bucket}/{k}" for k in SEED}
    a = cp.observation["objects"]["object"][f"{prod.bucket}/inv/a.json"]
    assert a["size"] == len(SEED["inv/a.json"].body)
    # By default the listing alone: what else an object has costs a request per object, and is read only
    # when the target tracks it.
    assert set(a) == {"etag", "size"} | ({"tags"} if "tags" in track else set()) | (
        {"content_type", "metadata"} if "metadata" in track else set())
    if "metadata" in track:
        assert a["content_type"] == "application/json" and a["metadata"] == {"owner": "ann"}
    if "tags" in track:
        assert a["tags"] == {"team": "billing"}
    findings = [f["id"] for f in cp.meta["findings"]]
    if prod.versioned:
        assert cp.meta["mode"] == "versions" and findings == [] and cp.meta["copied_bytes"] == 0
    else:
        assert cp.meta["mode"] == "copies" and findings == ["s3-unversioned"]
        assert cp.meta["copied_bytes"] == sum(len(o.body) for o in SEED.values())


@pytest.mark.parametrize("track", [[], TRACK_ALL])
def test_shadow_holds_the_checkpointed_objects(prod: Prod, tmp_path: Path, store: Store, track: list[str]) -> None:
    prod.seed(SEED | OUTSIDE)
    target = make_target(prod, tmp_path, track=track)
    cp = target.checkpoint(store, RUN_ID)
    mutate(prod)  # the shadow is built from the checkpoint, not from production as it is now

    with target.shadow(cp, store, RUN_ID, "local") as sh:
        assert sh.fidelity == []
        assert sh.changes() == []
        shadow_prod = Prod(sh.client, prod.bucket, sh.url, prod.versioned)
        for key, obj in SEED.items():
            if prod.versioned and not track and key in ("inv/retag.txt", "inv/untag.txt"):
                # The price of a listing-only checkpoint: tags are kept per version and change in place, so
                # the shadow gets the checkpoint version's tags as they are now (`track: [tags]` keeps them).
                assert shadow_prod.read(key) == Obj(obj.body, obj.content_type, obj.metadata,
                                                    prod.read(key).tags), key
                continue
            assert shadow_prod.read(key) == obj, key
        assert not any(shadow_prod.exists(k) for k in [*OUTSIDE, *CREATED])
        assert sh.endpoint.exclusive_env["AWS_ENDPOINT_URL"] == sh.url
        assert sh.url.startswith("http://127.0.0.1:")


def test_restore_brings_production_back_to_the_checkpoint(prod: Prod, tmp_path: Path, store: Store) -> None:
    prod.seed(SEED | OUTSIDE)
    target = make_target(prod, tmp_path, track=TRACK_ALL)
    cp = target.checkpoint(store, RUN_ID)
    mutate(prod)
    outside_before = {k: prod.read(k) for k in [*OUTSIDE, "other/later.txt"]}
    versions_before = prod.version_ids()

    changed = {c.address for c in target.changes_since(cp, None)}
    assert changed == {
        *(f"modify object {prod.bucket}/{k}" for k in
          ("inv/a.json", "inv/big.bin", "inv/empty", "inv/emptied.txt", "inv/phoenix.txt", "inv/retype.txt",
           "inv/remeta.txt", "inv/retag.txt", "inv/untag.txt")),
        f"delete object {prod.bucket}/inv/doomed.txt", f"delete object {prod.bucket}/inv/2026/März Rechnung #1.json",
        *(f"add object {prod.bucket}/{k}" for k in CREATED),
    }
    assert target.verify_restored(cp) != []

    target.restore(cp, store)

    assert target.verify_restored(cp) == []
    for key, obj in SEED.items():
        assert prod.read(key) == obj, key
    assert not any(prod.exists(k) for k in CREATED)
    assert {k: prod.read(k) for k in outside_before} == outside_before
    if prod.versioned:
        assert prod.version_ids() >= versions_before, "restore destroyed a version"
        assert prod.version_ids("other/") == {v for v in versions_before if v[0].startswith("other/")}
        assert prod.version_ids("inventory") == {v for v in versions_before if v[0] == "inventory.txt"}
        assert all(prod.latest_is_marker(k) for k in CREATED)


def test_restore_is_idempotent(prod: Prod, tmp_path: Path, store: Store) -> None:
    prod.seed(SEED)
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)
    mutate(prod)
    target.restore(cp, store)
    versions = prod.version_ids()
    requests = Requests(target.client())

    target.restore(cp, store)

    assert requests.writes == []
    assert prod.version_ids() == versions
    assert target.verify_restored(cp) == []


def test_restore_of_an_untouched_bucket_sends_no_writes(prod: Prod, tmp_path: Path, store: Store) -> None:
    prod.seed(SEED)
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)
    requests = Requests(target.client())

    target.restore(cp, store)

    assert requests.writes == []


def test_restore_sends_one_write_per_changed_key(prod: Prod, tmp_path: Path, store: Store) -> None:
    prod.seed(SEED)
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)
    prod.put("inv/a.json", Obj(b'{"total": 11}', "application/json"))
    prod.client.delete_object(Bucket=prod.bucket, Key="inv/doomed.txt")
    prod.client.put_object_tagging(Bucket=prod.bucket, Key="inv/retag.txt",
                                   Tagging={"TagSet": [{"Key": "a", "Value": "9"}]})
    prod.put("inv/new.txt", Obj(b"new"))
    requests = Requests(target.client())

    target.restore(cp, store)

    assert len(requests.writes) <= 4, requests.writes
    assert target.verify_restored(cp) == []


@VERSIONED_ONLY
def test_versioned_restore_is_planned_from_the_listing_and_tags_settle_in_verification(
        prod: Prod, tmp_path: Path, store: Store, confirm: str) -> None:
    prod.seed(SEED)
    target = make_target(prod, tmp_path, track=TRACK_ALL)
    cp = target.checkpoint(store, RUN_ID)
    prod.put("inv/a.json", Obj(b'{"total": 11}', "application/json"))
    prod.client.delete_object(Bucket=prod.bucket, Key="inv/doomed.txt")
    prod.client.put_object_tagging(Bucket=prod.bucket, Key="inv/retag.txt",
                                   Tagging={"TagSet": [{"Key": "a", "Value": "9"}]})
    prod.put("inv/new.txt", Obj(b"new"))
    requests = Requests(target.client())

    target.restore(cp, store)

    # One copy for the modified key, one batch that marks the created key deleted, one batch that removes the
    # marker hiding the deleted key — found with one HEAD of that key. Whether the key is back is one more
    # listing, or one more HEAD where the scope is large.
    assert sorted(requests.writes) == ["CopyObject", "DeleteObjects", "DeleteObjects"], requests.sent
    reads = [op for op in requests.sent if op.startswith(("Get", "Head"))]
    assert reads == ["HeadObject"] * (1 if confirm == "listing" else 2), requests.sent
    assert requests.sent.count("ListObjectsV2") == (2 if confirm == "listing" else 1), requests.sent
    assert "ListObjectVersions" not in requests.sent, "no version history needed"
    assert prod.read("inv/retag.txt").tags == {"a": "9"}, "tag-only changes are left to verification"

    assert target.verify_restored(cp) == []
    assert prod.read("inv/retag.txt").tags == SEED["inv/retag.txt"].tags
    assert target.verify_restored(cp) == []


def test_unversioned_restore_refuses_a_corrupt_copy_before_writing(s3_server: str, tmp_path: Path,
                                                                  store: Store) -> None:
    prod = Prod(*_plain_bucket(s3_server), s3_server, versioned=False)
    prod.seed(SEED)
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)
    prod.put("inv/a.json", Obj(b"{}", "application/json"))
    prod.put("inv/new.txt", Obj(b"new"))
    store.object_path(hashlib.sha256(SEED["inv/a.json"].body).hexdigest()).write_bytes(b"bit rot")
    requests = Requests(target.client())

    with pytest.raises(SnapshotCorrupt):
        target.restore(cp, store)

    assert requests.writes == []
    assert prod.read("inv/a.json").body == b"{}"


@VERSIONED_ONLY
def test_restore_of_a_multipart_object(prod: Prod, tmp_path: Path, store: Store) -> None:
    upload = prod.client.create_multipart_upload(Bucket=prod.bucket, Key="inv/parts.bin")
    parts = []
    for number, body in enumerate((big(3), b"tail"), start=1):
        etag = prod.client.upload_part(Bucket=prod.bucket, Key="inv/parts.bin", UploadId=upload["UploadId"],
                                       PartNumber=number, Body=body)["ETag"]
        parts.append({"ETag": etag, "PartNumber": number})
    prod.client.complete_multipart_upload(Bucket=prod.bucket, Key="inv/parts.bin", UploadId=upload["UploadId"],
                                          MultipartUpload={"Parts": parts})
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)
    prod.put("inv/parts.bin", Obj(b"overwritten"))

    target.restore(cp, store)

    assert prod.read("inv/parts.bin").body == big(3) + b"tail"
    assert target.verify_restored(cp) == []


# -- versions: what a restore does to a versioned bucket's history ------------------------------------------


@VERSIONED_ONLY
def test_restoring_a_deleted_key_removes_only_the_markers_made_since(prod: Prod, tmp_path: Path,
                                                                     store: Store) -> None:
    prod.seed(SEED)
    # History before the checkpoint, with a delete marker of its own: it must survive the restore.
    prod.client.delete_object(Bucket=prod.bucket, Key="inv/doomed.txt")
    prod.put("inv/doomed.txt", SEED["inv/doomed.txt"])
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)
    before_deletion = prod.history("inv/doomed.txt")["inv/doomed.txt"]

    prod.client.delete_object(Bucket=prod.bucket, Key="inv/doomed.txt")
    assert not prod.exists("inv/doomed.txt")
    target.restore(cp, store)

    assert prod.read("inv/doomed.txt") == SEED["inv/doomed.txt"]
    # No new version was written: exactly the history from before the deletion is left.
    assert sorted(prod.history("inv/doomed.txt")["inv/doomed.txt"]) == sorted(before_deletion)
    assert target.verify_restored(cp) == []


@VERSIONED_ONLY
def test_a_key_deleted_and_recreated_gets_its_checkpoint_version_copied_back(prod: Prod, tmp_path: Path,
                                                                            store: Store) -> None:
    prod.seed(SEED)
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)
    prod.client.delete_object(Bucket=prod.bucket, Key="inv/phoenix.txt")
    prod.put("inv/phoenix.txt", Obj(b"risen", "text/html", {"v": "2"}, {"x": "y"}))
    before = prod.history("inv/phoenix.txt")["inv/phoenix.txt"]

    target.restore(cp, store)

    assert prod.read("inv/phoenix.txt") == SEED["inv/phoenix.txt"]
    after = prod.history("inv/phoenix.txt")["inv/phoenix.txt"]
    assert set(after) > set(before) and len(after) == len(before) + 1  # one new version: the copy


@pytest.fixture(params=["listing", "heads"])
def confirm(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How a restore confirms that removing delete markers brought keys back: one more listing of the scope, or
    (a few keys in a large scope — made large here by counting one object per listing page) a HEAD per key."""
    if request.param == "heads":
        monkeypatch.setattr("adapters.s3.restore.LIST_PAGE", 1)
    return str(request.param)


@VERSIONED_ONLY
def test_a_key_deleted_twice_since_loses_both_markers(prod: Prod, tmp_path: Path, store: Store,
                                                      confirm: str) -> None:
    prod.seed(SEED)
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)
    before = prod.history("inv/doomed.txt")["inv/doomed.txt"]
    prod.client.delete_object(Bucket=prod.bucket, Key="inv/doomed.txt")
    prod.client.delete_object(Bucket=prod.bucket, Key="inv/doomed.txt")  # a marker on a marker
    assert len(prod.history("inv/doomed.txt")["inv/doomed.txt"]) == len(before) + 2

    target.restore(cp, store)

    assert prod.read("inv/doomed.txt") == SEED["inv/doomed.txt"]
    assert sorted(prod.history("inv/doomed.txt")["inv/doomed.txt"]) == sorted(before)
    assert target.verify_restored(cp) == []


@VERSIONED_ONLY
def test_a_key_deleted_recreated_and_deleted_again_gets_its_checkpoint_version_copied_back(
        prod: Prod, tmp_path: Path, store: Store, confirm: str) -> None:
    prod.seed(SEED)
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)
    prod.client.delete_object(Bucket=prod.bucket, Key="inv/phoenix.txt")
    prod.put("inv/phoenix.txt", Obj(b"risen for a while", "text/html"))
    prod.client.delete_object(Bucket=prod.bucket, Key="inv/phoenix.txt")
    written_since = {vid for vid, marker in prod.history("inv/phoenix.txt")["inv/phoenix.txt"] if not marker}

    target.restore(cp, store)

    # Removing the newest marker showed the version written since, not the checkpoint's: the restore saw that
    # and copied the checkpoint version back over it. Every version is still there.
    assert prod.read("inv/phoenix.txt") == SEED["inv/phoenix.txt"]
    after = {vid for vid, marker in prod.history("inv/phoenix.txt")["inv/phoenix.txt"] if not marker}
    assert written_since < after
    assert target.verify_restored(cp) == []


@VERSIONED_ONLY
def test_a_deleted_key_whose_checkpoint_version_is_gone_fails_and_stays_deleted(
        prod: Prod, tmp_path: Path, store: Store, confirm: str) -> None:
    prod.seed(SEED)
    prod.put("inv/doomed.txt", Obj(b"an older version, from before the checkpoint"))
    prod.put("inv/doomed.txt", SEED["inv/doomed.txt"])
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)
    checkpoint_version = cp.meta["versions"]["inv/doomed.txt"]
    prod.client.delete_object(Bucket=prod.bucket, Key="inv/doomed.txt")
    prod.client.delete_object(Bucket=prod.bucket, Key="inv/doomed.txt", VersionId=checkpoint_version)

    with pytest.raises(InfrastructureError, match="no longer exist.*inv/doomed.txt"):
        target.restore(cp, store)

    # The marker made since was removed, but the older version it then showed is hidden again.
    assert not prod.exists("inv/doomed.txt")


def test_deletes_go_in_batches_of_1000_and_keys_xml_cannot_carry_go_alone(tmp_path: Path) -> None:
    """Pure logic, with a recording client: moto's server cannot store or list such keys faithfully (it lists a
    \r as \n and fails on \uffff), so no real endpoint here can show the hazard. In a DeleteObjects body XML
    turns \r into \n — a delete marker on another key — and cannot carry \x01 or \uffff at all."""
    sent: list[tuple[str, Any]] = []

    class Recorder:
        def delete_objects(self, Bucket: str, Delete: dict[str, Any]) -> dict[str, Any]:
            sent.append(("batch", [o["Key"] for o in Delete["Objects"]]))
            return {}

        def delete_object(self, Bucket: str, **kwargs: Any) -> None:
            sent.append(("one", kwargs))

    target = S3Target("t", {"bucket": "acme"}, Settings.from_env(state_dir=str(tmp_path)))
    plain = [{"Key": f"inv/k{i:04d} ü ✓", "VersionId": f"v{i}"} for i in range(2500)]
    odd = [{"Key": "inv/cr\rkey", "VersionId": "m1"}, {"Key": "inv/ctl\x01"}, {"Key": "inv/x\uffff"}]

    for op in target._batched_deletes(Recorder(), plain[:1200] + odd + plain[1200:]):
        op()

    assert [len(keys) for what, keys in sent if what == "batch"] == [1000, 1000, 500]
    assert [keys for what, keys in sent if what == "one"] == odd
    assert {k for what, keys in sent if what == "batch" for k in keys} == {o["Key"] for o in plain}


@VERSIONED_ONLY
def test_a_key_created_since_gets_a_delete_marker_and_keeps_its_versions(prod: Prod, tmp_path: Path,
                                                                        store: Store) -> None:
    prod.seed({"inv/a.json": SEED["inv/a.json"]})
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)
    prod.put("inv/new.txt", Obj(b"one"))
    prod.put("inv/new.txt", Obj(b"two"))
    created = prod.history("inv/new.txt")["inv/new.txt"]

    target.restore(cp, store)

    assert not prod.exists("inv/new.txt")
    after = prod.history("inv/new.txt")["inv/new.txt"]
    assert set(created) < set(after) and [m for _, m in after].count(True) == 1


# -- safety findings -----------------------------------------------------------------------------------------


@VERSIONED_ONLY
@pytest.mark.parametrize(("rule_filter", "days", "retain_days", "found"), [
    ({"Prefix": "inv/"}, 7, None, True),
    ({"Prefix": ""}, 7, None, True),
    ({"Prefix": "inv/2026/"}, 7, None, True),
    ({"And": {"Prefix": "inv/", "Tags": [{"Key": "tier", "Value": "cold"}]}}, 7, None, True),
    ({"Tag": {"Key": "tier", "Value": "cold"}}, 7, None, True),
    ({"Prefix": "other/"}, 7, None, False),
    ({"Prefix": "inv/"}, 90, None, False),  # outlives the default retention (30 days)
    ({"Prefix": "inv/"}, 7, 7, False),  # the target accepts a one-week window
    ({"Prefix": "inv/"}, 7, 8, True),
])
def test_noncurrent_version_expiry_before_the_retention_ends_is_a_finding(
        prod: Prod, tmp_path: Path, store: Store, rule_filter: dict[str, Any], days: int, retain_days: int | None,
        found: bool) -> None:
    prod.seed({"inv/a.json": SEED["inv/a.json"]})
    prod.client.put_bucket_lifecycle_configuration(Bucket=prod.bucket, LifecycleConfiguration={"Rules": [
        {"ID": "tidy", "Status": "Enabled", "Filter": rule_filter,
         "NoncurrentVersionExpiration": {"NoncurrentDays": days}},
    ]})
    target = make_target(prod, tmp_path, **({"retain_days": retain_days} if retain_days else {}))

    cp = target.checkpoint(store, RUN_ID)

    expiry = [f for f in cp.meta["findings"] if f["id"] == "s3-lifecycle-expiry"]
    assert bool(expiry) == found
    if found:
        message = expiry[0]["message"]
        assert f"{days} day" in message and "'tidy'" in message and f"retention of {retain_days or 30}" in message
        assert expiry[0]["allowed"] is False


# -- the diff side: changes made inside a shadow ---------------------------------------------------------------

DIFFABLE = {
    "inv/order.json": Obj(b'{"id": 7, "status": "open", "lines": [{"sku": "A", "qty": 1}]}', "application/json"),
    "inv/config.yaml": Obj(b"retries: 3\nregion: eu-north-1\n", "application/yaml"),
    "inv/readme.txt": Obj(b"line one\nline two\nline three\n", "text/plain"),
    "inv/large.json": Obj(b'{"pad": "' + b"x" * (70 * 1024) + b'", "n": 1}', "application/json"),
    "inv/gone.txt": Obj(b"bye", "text/plain"),
    "inv/labels.txt": Obj(b"labels", "text/plain", {"m": "1"}, {"t": "1"}),
}


def changes_by_address(sh: S3Shadow) -> dict[str, dict[str, Any]]:
    return {c.address: c.detail for c in sh.changes()}


def test_shadow_changes_name_each_object_with_its_details(prod: Prod, tmp_path: Path, store: Store) -> None:
    prod.seed(DIFFABLE | OUTSIDE)
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)

    with target.shadow(cp, store, RUN_ID, "local") as sh:
        c, b = sh.client, prod.bucket
        c.put_object(Bucket=b, Key="inv/added.txt", Body=b"hello")
        c.put_object(Bucket=b, Key="other/outside.txt", Body=b"not in scope")
        c.delete_object(Bucket=b, Key="inv/gone.txt")
        c.put_object_tagging(Bucket=b, Key="inv/labels.txt", Tagging={"TagSet": [{"Key": "t", "Value": "2"}]})
        c.copy_object(Bucket=b, Key="inv/readme.txt", CopySource={"Bucket": b, "Key": "inv/readme.txt"},
                      ContentType="text/markdown", MetadataDirective="REPLACE")
        changes = changes_by_address(sh)

    assert set(changes) == {f"add object {b}/inv/added.txt", f"delete object {b}/inv/gone.txt",
                            f"modify object {b}/inv/labels.txt", f"modify object {b}/inv/readme.txt"}
    assert changes[f"add object {b}/inv/added.txt"]["size"] == 5
    assert changes[f"delete object {b}/inv/gone.txt"]["size"] == 3
    assert changes[f"modify object {b}/inv/labels.txt"] == {"tags": {"from": {"t": "1"}, "to": {"t": "2"}}}
    assert changes[f"modify object {b}/inv/readme.txt"] == {"content_type": {"from": "text/plain",
                                                                            "to": "text/markdown"}}


def test_shadow_modify_carries_a_content_diff_of_small_objects(prod: Prod, tmp_path: Path, store: Store) -> None:
    prod.seed(DIFFABLE)
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)

    with target.shadow(cp, store, RUN_ID, "local") as sh:
        c, b = sh.client, prod.bucket
        c.put_object(Bucket=b, Key="inv/order.json", ContentType="application/json",
                     Body=b'{"id": 7, "status": "paid", "lines": [{"sku": "A", "qty": 1}]}')
        c.put_object(Bucket=b, Key="inv/config.yaml", ContentType="application/yaml",
                     Body=b"retries: 5\nregion: eu-north-1\n")
        c.put_object(Bucket=b, Key="inv/readme.txt", ContentType="text/plain",
                     Body=b"line one\nline 2\nline three\n")
        c.put_object(Bucket=b, Key="inv/large.json", ContentType="application/json",
                     Body=DIFFABLE["inv/large.json"].body.replace(b'"n": 1', b'"n": 2'))
        changes = changes_by_address(sh)

    order = changes[f"modify object {b}/inv/order.json"]
    assert set(order) >= {"etag", "content_diff"}
    assert any("status" in line and "open" in line and "paid" in line for line in order["content_diff"])
    config = changes[f"modify object {b}/inv/config.yaml"]["content_diff"]
    assert any("retries" in line and "3" in line and "5" in line for line in config)
    readme = changes[f"modify object {b}/inv/readme.txt"]["content_diff"]
    assert "-line two" in readme and "+line 2" in readme
    large = changes[f"modify object {b}/inv/large.json"]
    assert "etag" in large and "content_diff" not in large


def test_a_shadow_is_disposable(prod: Prod, tmp_path: Path, store: Store) -> None:
    prod.seed({"inv/a.json": SEED["inv/a.json"]})
    target = make_target(prod, tmp_path)
    cp = target.checkpoint(store, RUN_ID)
    with target.shadow(cp, store, RUN_ID, "local") as first:
        first.client.put_object(Bucket=prod.bucket, Key="inv/left-behind.txt", Body=b"x")
        first.client.delete_object(Bucket=prod.bucket, Key="inv/a.json")
        first_url = first.url

    with target.shadow(cp, store, RUN_ID, "local") as second:
        assert second.fidelity == [] and second.changes() == []
        assert second.url != first_url
    with pytest.raises(EndpointConnectionError):  # the first shadow's endpoint is gone
        first.client.list_objects_v2(Bucket=prod.bucket)


def test_two_targets_on_one_bucket_can_be_shadowed_at_once(prod: Prod, tmp_path: Path, store: Store) -> None:
    prod.seed(SEED | OUTSIDE)
    invoices, other = make_target(prod, tmp_path), make_target(prod, tmp_path, prefix="other/", name="other")
    cp_invoices, cp_other = invoices.checkpoint(store, RUN_ID), other.checkpoint(store, RUN_ID)

    with invoices.shadow(cp_invoices, store, RUN_ID, "local") as a, other.shadow(cp_other, store, RUN_ID,
                                                                                 "local") as b:
        a.client.put_object(Bucket=prod.bucket, Key="inv/from-a.txt", Body=b"a")
        assert a.fidelity == [] and b.fidelity == []
        assert [c.address for c in a.changes()] == [f"add object {prod.bucket}/inv/from-a.txt"]
        assert b.changes() == []
        # Each shadow holds its own scope only: the other target's objects are not there.
        assert b.client.list_objects_v2(Bucket=prod.bucket, Prefix=PREFIX)["KeyCount"] == 0
        assert a.client.list_objects_v2(Bucket=prod.bucket, Prefix="other/")["KeyCount"] == 0


def test_a_shadow_server_goes_when_the_process_that_started_it_is_killed() -> None:
    script = ("import time\nfrom adapters.s3.target import moto_server\n"
              "with moto_server('shadow-s3 run=killed'):\n    print('ready', flush=True)\n    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE)
    assert parent.stdout is not None and parent.stdout.readline() == b"ready\n"
    children = subprocess.run(["pgrep", "-P", str(parent.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) == 1

    parent.kill()  # SIGKILL: no finally, no __exit__ runs
    parent.wait()

    deadline = time.monotonic() + 15
    while running(int(children[0])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(int(children[0])), "the shadow's moto server outlived its parent"


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for whoever adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# -- errors ------------------------------------------------------------------------------------------------


def test_a_missing_bucket_is_unreachable_with_a_clear_message(s3_server: str, tmp_path: Path,
                                                              store: Store) -> None:
    target = S3Target("invoices", {"bucket": "no-such-bucket-" + uuid.uuid4().hex[:8], "prefix": PREFIX,
                                   "endpoint_url": s3_server}, Settings.from_env(state_dir=str(tmp_path)))
    with pytest.raises(TargetUnreachable) as err:
        target.observe()
    assert "NoSuchBucket" in str(err.value) and target.bucket in str(err.value) and "invoices" in str(err.value)
    with pytest.raises(TargetUnreachable):
        target.checkpoint(store, RUN_ID)


def test_a_wrong_endpoint_is_unreachable_with_a_clear_message(s3_server: str, tmp_path: Path,
                                                              store: Store) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    target = S3Target("invoices", {"bucket": "prod", "prefix": PREFIX, "endpoint_url": url},
                      Settings.from_env(state_dir=str(tmp_path)))
    with pytest.raises(TargetUnreachable) as err:
        target.observe()
    assert url in str(err.value) and "invoices" in str(err.value)
    with pytest.raises(TargetUnreachable):
        target.checkpoint(store, RUN_ID)
