"""Checkpointing and restoring a versioned S3 prefix after 1,000 changes: shadow against a plain listing, the
per-object checkpoint and a naive copy-back, in the same run.

    .venv/bin/python benchmarks/bench_s3_restore.py [--objects 10000] [--changed 1000] [--no-experiments]
                                                     [--no-per-object]

moto's S3 server runs as a separate process on 127.0.0.1 (throwaway ``testing`` credentials). A versioned bucket
gets ``--objects`` small JSON objects (~300 bytes) under ``data/`` (spread over ten sub-prefixes), uploaded from a
thread pool, and is checkpointed with ``S3Target.checkpoint`` — the default (listing only), measured against a
plain ``list_objects_v2`` of the scope and (unless ``--no-per-object``) against the per-object checkpoint every
checkpoint was before issue 16: the same target with ``track: [metadata, tags]`` (a HEAD and a tagging read per
object). Then ``--changed`` keys change: a third modified, a third deleted, a third added new.

- **shadow**: ``S3Target.restore(checkpoint, store)``, then ``verify_restored`` as a separate step.
- **naive**: on the same mutations applied again the same way (same keys, so both start from equivalent
  states), ``copy_object`` of every checkpoint key from its checkpoint version, plus ``delete_object`` of every key
  created since (found with ``list_objects_v2``), from a thread pool as wide as shadow's.

Requests are counted with a botocore ``before-send.s3.*`` hook on each client (one per HTTP attempt, retries
included) and split into listing pages (ListObjectVersions / ListObjectsV2), reads (HEAD / GET) and writes
(PUT / DELETE / POST, copies included). Shadow's restore is also split into its phases by wrapping (never editing)
the target's methods on the instance.

Targets: the checkpoint sends about one request per 1,000 objects; shadow's restore + verification sends no more
requests than the changed keys plus its listing pages, and its wall time is at least 5x below the naive
restore's. With ``--experiments`` (the default) the script then measures, outside
the timed parts, what would move those numbers: the listings alone, one sub-prefix listing, the per-key
HEAD + tagging observation, and a manifest-first restore prototype on a third round of the same mutations.
"""

from __future__ import annotations

import os

# Throwaway credentials for the local moto server only: set them before boto3 builds a session.
for _var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_var, None)
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

from adapters.s3.observe import list_current  # noqa: E402
from adapters.s3.target import WORKERS, S3Target, _client  # noqa: E402
from shadow.settings import Settings  # noqa: E402
from snapshots import Artifact, Store  # noqa: E402

BUCKET = "bench-restore"
PREFIX = "data/"
SUBPREFIXES = 10
LISTING_OPS = {"ListObjectVersions", "ListObjectsV2", "ListObjects"}


# --------------------------------------------------------------------------------------------------------------
# Counting requests
# --------------------------------------------------------------------------------------------------------------
def classify(method: str, url: str, op: str) -> str:
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    if op in LISTING_OPS or (method == "GET" and ("versions" in query or "list-type" in query)):
        return "listing"
    if method in ("GET", "HEAD"):
        return "reads"
    return "writes"  # PUT (copies are PUTs with x-amz-copy-source), DELETE, POST


class Meter:
    """Counts every HTTP attempt one boto3 client sends, by class and by operation."""

    def __init__(self, client: Any) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        client.meta.events.register("before-send.s3.*", self._hook)

    def _hook(self, request: Any, event_name: str = "", **_: Any) -> None:
        op = event_name.rsplit(".", 1)[-1]
        kind = classify(request.method, request.url, op)
        with self._lock:
            self.counts[kind] += 1
            self.counts[f"op:{op}"] += 1
        # returning None: the request is sent as usual

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.counts)


@dataclass
class Measure:
    label: str
    seconds: float
    counts: Counter[str]

    @property
    def listing(self) -> int:
        return self.counts["listing"]

    @property
    def reads(self) -> int:
        return self.counts["reads"]

    @property
    def writes(self) -> int:
        return self.counts["writes"]

    @property
    def total(self) -> int:
        return self.listing + self.reads + self.writes

    def ops(self) -> str:
        ops = sorted(((k[3:], v) for k, v in self.counts.items() if k.startswith("op:")), key=lambda kv: -kv[1])
        return ", ".join(f"{op} {n:,}" for op, n in ops)


def measured(label: str, meters: list[Meter], fn: Callable[[], Any]) -> tuple[Measure, Any]:
    before = [m.snapshot() for m in meters]
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    counts: Counter[str] = Counter()
    for m, b in zip(meters, before):
        counts += m.snapshot() - b
    return Measure(label, seconds, counts), result


@contextmanager
def phases(target: S3Target, meter: Meter, rows: list[Measure]) -> Iterator[None]:
    """Time shadow's restore by phase, by wrapping the target's methods on this instance only."""

    def wrap(name: str, label: Callable[..., str]) -> None:
        original = getattr(target, name, None)
        if original is None:  # the adapter changed shape: no breakdown for this piece
            return

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            before, start = meter.snapshot(), time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                rows.append(Measure(label(*args, **kwargs), time.perf_counter() - start, meter.snapshot() - before))

        setattr(target, name, wrapper)

    wrapped = ("_changed_ops", "_undelete", "_deleted_ops", "_plan_copy_restore", "observe")
    wrap("_changed_ops", lambda *a, **k: "plan: modified and created keys (from list_objects_v2)")
    wrap("_undelete", lambda *a, **k: "deleted keys: batch unmark + re-list (overlaps writes)")
    wrap("_deleted_ops", lambda *a, **k: "deleted keys left: version history")
    wrap("_plan_copy_restore", lambda *a, **k: "plan: list current objects")
    wrap("observe", lambda *a, **k: "observe(): the listing (and tracked properties)")
    try:
        yield
    finally:
        for name in wrapped:
            target.__dict__.pop(name, None)


# --------------------------------------------------------------------------------------------------------------
# The moto server, the bucket and the mutations
# --------------------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def moto_server() -> Iterator[str]:
    port = free_port()
    env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {url} (exit code {proc.poll()})") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def body(key: str, note: str) -> bytes:
    doc = {"key": key, "note": note, "owner": "bench", "amount": len(key) * 7,
           "lines": [{"sku": f"SKU-{n:04d}", "qty": n % 5 + 1} for n in range(6)]}
    return json.dumps(doc, indent=1).encode()


def put(client: Any, key: str, note: str) -> None:
    client.put_object(Bucket=BUCKET, Key=key, Body=body(key, note), ContentType="application/json",
                      Metadata={"source": "bench"})


def pool_run(fn: Callable[[Any], Any], items: list[Any], workers: int = WORKERS) -> list[Any]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def key_of(i: int) -> str:
    return f"{PREFIX}p{i % SUBPREFIXES}/obj-{i:06d}.json"


@dataclass
class Mutations:
    modified: list[str]
    deleted: list[str]
    added: list[str]

    @classmethod
    def choose(cls, objects: int, changed: int) -> Mutations:
        third = changed // 3
        existing = random.Random(20260101).sample(range(objects), 2 * third)
        return cls(modified=[key_of(i) for i in existing[:third]], deleted=[key_of(i) for i in existing[third:]],
                   added=[key_of(objects + n) for n in range(changed - 2 * third)])

    @property
    def total(self) -> int:
        return len(self.modified) + len(self.deleted) + len(self.added)

    def apply(self, client: Any, round_: int) -> None:
        ops: list[Callable[[], Any]] = []
        ops += [partial(put, client, k, f"modified in round {round_}") for k in self.modified]
        ops += [partial(client.delete_object, Bucket=BUCKET, Key=k) for k in self.deleted]
        ops += [partial(put, client, k, f"added in round {round_}") for k in self.added]
        pool_run(lambda op: op(), ops)


def matches_manifest(client: Any, manifest: dict[str, dict[str, Any]]) -> bool:
    """Cheap check (not timed): the current keys and ETags are the checkpoint's."""
    now = list_current(client, BUCKET, PREFIX)
    return {k: v["etag"] for k, v in now.items()} == {k: v["etag"] for k, v in manifest.items()}


# --------------------------------------------------------------------------------------------------------------
# Restores other than shadow's
# --------------------------------------------------------------------------------------------------------------
def copy_back(client: Any, key: str, version_id: str) -> None:
    client.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": key, "VersionId": version_id},
                       MetadataDirective="COPY", TaggingDirective="COPY")


def naive_restore(client: Any, manifest: dict[str, dict[str, Any]]) -> None:
    """Copy every checkpoint key back from its checkpoint version, delete every key created since."""
    created = set(list_current(client, BUCKET, PREFIX)) - set(manifest)
    ops: list[Callable[[], Any]] = [partial(copy_back, client, k, e["version_id"]) for k, e in manifest.items()]
    ops += [partial(client.delete_object, Bucket=BUCKET, Key=k) for k in created]
    pool_run(lambda op: op(), ops)


def manifest_first_restore(client: Any, manifest: dict[str, dict[str, Any]]) -> None:
    """Prototype (not shadow's code): find the changed keys with list_objects_v2 + the manifest's ETags, then touch
    only those. A deleted key is copied back from its checkpoint version (one PUT, no per-key version listing).
    What it cannot see: tags changed in place and metadata-only copies that kept the ETag."""
    current = list_current(client, BUCKET, PREFIX)
    ops: list[Callable[[], Any]] = [partial(client.delete_object, Bucket=BUCKET, Key=k)
                                    for k in set(current) - set(manifest)]
    for key, entry in manifest.items():
        have = current.get(key)
        if have is None or have["etag"] != entry["etag"]:
            ops.append(partial(copy_back, client, key, entry["version_id"]))
    pool_run(lambda op: op(), ops)


# --------------------------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------------------------
def row(m: Measure, indent: str = "") -> str:
    return (f"{indent + m.label:<58} {m.seconds:9.2f} {m.total:10,} {m.listing:9,} {m.reads:9,} {m.writes:9,}")


HEADER = f"{'restore':<58} {'seconds':>9} {'requests':>10} {'listing':>9} {'reads':>9} {'writes':>9}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--changed", type=int, default=1_000)
    parser.add_argument("--experiments", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--per-object", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the per-object checkpoint (track: [metadata, tags]) for comparison")
    args = parser.parse_args()
    if args.changed // 3 * 2 > args.objects:
        parser.error("--changed must be at most 1.5x --objects")
    mutations = Mutations.choose(args.objects, args.changed)

    with moto_server() as url, tempfile.TemporaryDirectory() as tmp:
        setup = _client(url)  # uploads and mutations: not counted
        setup.create_bucket(Bucket=BUCKET)
        setup.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        start = time.perf_counter()
        pool_run(lambda i: put(setup, key_of(i), "original"), list(range(args.objects)))
        print(f"moto server {url}: uploaded {args.objects:,} objects (~{len(body(key_of(0), 'original'))} bytes) "
              f"under s3://{BUCKET}/{PREFIX} in {time.perf_counter() - start:.1f} s")

        target = S3Target("bench", {"bucket": BUCKET, "prefix": PREFIX, "endpoint_url": url},
                          Settings.from_env(state_dir=tmp))
        store = Store(Path(tmp) / "store")
        meter = Meter(target.client())
        lister = _client(url)
        list_meter = Meter(lister)
        plain, _ = measured("plain list_objects_v2 of the scope", [list_meter],
                            lambda: list_current(lister, BUCKET, PREFIX))
        cp_measure, checkpoint = measured("checkpoint (default: listing only)", [meter],
                                          lambda: target.checkpoint(store, "bench"))
        cp_rows = [plain, cp_measure]
        if args.per_object:
            old = S3Target("bench", {"bucket": BUCKET, "prefix": PREFIX, "endpoint_url": url,
                                     "track": ["metadata", "tags"]}, Settings.from_env(state_dir=tmp))
            old_meter = Meter(old.client())
            cp_rows.append(measured("checkpoint per object (track: [metadata, tags])", [old_meter],
                                    lambda: old.checkpoint(store, "bench-old"))[0])
        art = checkpoint.artifacts["manifest"]
        manifest: dict[str, dict[str, Any]] = json.loads(
            store.open_verified(Artifact(art["sha256"], int(art["size"]))).read_text())
        print(f"checkpoint: {len(manifest):,} objects, mode {checkpoint.meta.get('mode')}, "
              f"{cp_measure.seconds:.1f} s, {cp_measure.total:,} requests ({cp_measure.ops()})")
        print(HEADER.replace("restore ", "checkpoint ", 1))
        for m in cp_rows:
            print(row(m))
        pages = -(-args.objects // 1000)
        print(f"{'ratio checkpoint / plain listing':<58} {cp_measure.seconds / plain.seconds:8.2f}x "
              f"{cp_measure.total / max(plain.total, 1):9.2f}x")
        if args.per_object:
            per_object = cp_rows[-1]
            print(f"{'ratio per-object / default checkpoint':<58} {per_object.seconds / cp_measure.seconds:8.2f}x "
                  f"{per_object.total / max(cp_measure.total, 1):9.2f}x")
        print(f"target 0: the checkpoint sends <= ceil(objects / 1,000) + 3 = {pages + 3:,} requests: "
              f"{cp_measure.total:,} -> {'MET' if cp_measure.total <= pages + 3 else 'NOT MET'} "
              f"(reads: {cp_measure.reads:,}; AWS pages at 1,000, moto answers in one page)")
        print(f"mutations: {len(mutations.modified):,} modified, {len(mutations.deleted):,} deleted, "
              f"{len(mutations.added):,} added = {mutations.total:,} changed keys")
        print()

        # (a) shadow's restore, then its verification as a separate step
        mutations.apply(setup, 1)
        breakdown: list[Measure] = []
        with phases(target, meter, breakdown):
            shadow, _ = measured("shadow: S3Target.restore", [meter], lambda: target.restore(checkpoint, store))
        verify, problems = measured("shadow: verify_restored (separate step)", [meter],
                                    lambda: target.verify_restored(checkpoint))

        # (b) the naive restore, from the same mutations applied again
        mutations.apply(setup, 2)
        naive_client = _client(url)
        naive_meter = Meter(naive_client)
        naive, _ = measured("naive: copy every key back + delete created", [naive_meter],
                            lambda: naive_restore(naive_client, manifest))
        naive_ok = matches_manifest(setup, manifest)

        print(HEADER)
        print(row(shadow))
        covered = Measure("(the rest: list_objects_v2, the HEADs and the writes)",
                          shadow.seconds - sum(m.seconds for m in breakdown), shadow.counts - sum((m.counts for m in breakdown), Counter()))
        for m in breakdown + ([covered] if breakdown else []):
            print(row(m, "  - "))
        print(row(verify))
        print(row(Measure("shadow: restore + verify_restored", shadow.seconds + verify.seconds,
                          shadow.counts + verify.counts)))
        print(row(naive))
        print(f"{'ratio naive / shadow restore':<58} {naive.seconds / shadow.seconds:8.2f}x "
              f"{naive.total / max(shadow.total, 1):9.2f}x")
        print(f"{'ratio naive / (shadow restore + verify)':<58} "
              f"{naive.seconds / (shadow.seconds + verify.seconds):8.2f}x "
              f"{naive.total / max(shadow.total + verify.total, 1):9.2f}x")
        print()
        print(f"shadow restore requests by operation: {shadow.ops()}")
        print(f"verify_restored requests by operation: {verify.ops()}")
        print(f"naive restore requests by operation:  {naive.ops()}")
        verdict = "clean" if not problems else f"{len(problems)} problem(s), e.g. {problems[0]}"
        print(f"verify_restored after shadow's restore: {verdict}; "
              f"naive restore reached the checkpoint's keys and ETags: {'yes' if naive_ok else 'NO'}")
        print()

        both = Measure("shadow: restore + verify_restored", shadow.seconds + verify.seconds,
                       shadow.counts + verify.counts)
        limit = mutations.total + both.listing
        met_requests = both.total <= limit
        speedup = naive.seconds / both.seconds
        scope_pages = both.counts["op:ListObjectsV2"]
        key_listings = both.counts["op:ListObjectVersions"]
        print(f"target 1: restore + verify send <= changed keys + listing pages: {both.total:,} requests vs "
              f"{mutations.total:,} + {both.listing:,} = {limit:,} -> {'MET' if met_requests else 'NOT MET'}"
              + ("" if met_requests else f" ({both.total - limit:,} over: {both.reads:,} reads, "
                                         f"{both.writes:,} writes for {mutations.total:,} changed keys)"))
        print(f"          listing pages = {scope_pages:,} ListObjectsV2 + {key_listings:,} ListObjectVersions "
              f"(the verification's); reads: {both.reads:,} (one HEAD per key deleted since, naming the delete "
              f"marker to remove); verify_restored alone: {verify.total:,} request(s)")
        print(f"target 2: restore + verify wall time >= 5x below the naive restore's: {speedup:.2f}x "
              f"({both.seconds:.2f} s vs {naive.seconds:.2f} s) -> {'MET' if speedup >= 5 else 'NOT MET'}; "
              f"requests {naive.total / max(both.total, 1):.2f}x fewer")

        if not args.experiments:
            return

        # Experiments: what would move the numbers (outside the timed parts; the bucket is at the checkpoint now)
        print()
        print("experiments (same server, state back at the checkpoint, histories now longer):")
        probe = _client(url)
        probe_meter = Meter(probe)

        def list_all_versions(prefix: str) -> int:
            pages = probe.get_paginator("list_object_versions").paginate(Bucket=BUCKET, Prefix=prefix)
            return sum(len(p.get("Versions", [])) + len(p.get("DeleteMarkers", [])) for p in pages)

        exp: list[Measure] = []
        m, n_versions = measured("list_object_versions, whole scope", [probe_meter], lambda: list_all_versions(PREFIX))
        m.label += f" ({n_versions:,} versions+markers)"
        exp.append(m)
        m, _ = measured(f"list_object_versions, one sub-prefix {PREFIX}p0/ (1/{SUBPREFIXES})", [probe_meter],
                        lambda: list_all_versions(f"{PREFIX}p0/"))
        exp.append(m)
        m, _ = measured(f"list_object_versions, {SUBPREFIXES} sub-prefixes, {SUBPREFIXES} threads", [probe_meter],
                        lambda: pool_run(list_all_versions, [f"{PREFIX}p{i}/" for i in range(SUBPREFIXES)],
                                         SUBPREFIXES))
        exp.append(m)
        m, current = measured("list_objects_v2, whole scope", [probe_meter],
                              lambda: list_current(probe, BUCKET, PREFIX))
        m.label += f" ({len(current):,} keys)"
        exp.append(m)
        exp.append(measured("observe(): the default, listing only", [meter], target.observe)[0])
        exp.append(measured("GetObjectTagging only, every key (no HEAD)", [probe_meter],
                            lambda: pool_run(lambda k: probe.get_object_tagging(Bucket=BUCKET, Key=k),
                                             sorted(current)))[0])

        mutations.apply(setup, 3)
        proto_client = _client(url)
        proto_meter = Meter(proto_client)
        proto, _ = measured("prototype: list_objects_v2 + manifest, touch changed only", [proto_meter],
                            lambda: manifest_first_restore(proto_client, manifest))
        proto_ok = matches_manifest(setup, manifest)
        exp.append(proto)
        print(HEADER.replace("restore ", "measure ", 1))
        for m in exp:
            print(row(m))
        print(f"prototype requests by operation: {proto.ops()}; reached the checkpoint's keys and ETags: "
              f"{'yes' if proto_ok else 'NO'}; naive / prototype: {naive.seconds / proto.seconds:.2f}x time, "
              f"{naive.total / max(proto.total, 1):.2f}x requests")


if __name__ == "__main__":
    main()
