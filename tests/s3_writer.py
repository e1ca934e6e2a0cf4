"""Another writer on a production bucket: a separate process that puts, overwrites and deletes objects under one
prefix at a bounded rate and logs every write *after* S3 acknowledged it.

Tests start it around ``shadow plan`` / ``apply`` / ``rollback`` and check that nothing it wrote was lost
(:meth:`S3Writer.assert_kept`). Run as ``python -m tests.s3_writer ENDPOINT BUCKET PREFIX LOG [--every S]``; it
stops at SIGTERM or after ``--seconds``.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.s3_writer")
    for name in ("endpoint", "bucket", "prefix", "log"):
        p.add_argument(name)
    p.add_argument("--every", type=float, default=0.05)
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import boto3

    stop = False

    def on_term(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    client = boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    rng = random.Random(args.seed)
    mine: list[str] = []
    deadline = time.monotonic() + args.seconds
    with open(args.log, "a", buffering=1) as log:
        log.write(json.dumps({"op": "start"}) + "\n")
        n = 0
        while not stop and time.monotonic() < deadline:
            n += 1
            roll = rng.random()
            try:
                if roll < 0.6 or len(mine) < 3:
                    key = f"{args.prefix}w{n:05d}.txt"
                    client.put_object(Bucket=args.bucket, Key=key, Body=f"writer {n}".encode())
                    mine.append(key)
                    log.write(json.dumps({"op": "put", "key": key, "body": f"writer {n}"}) + "\n")
                elif roll < 0.85:
                    key = rng.choice(mine)
                    client.put_object(Bucket=args.bucket, Key=key, Body=f"writer {n}".encode())
                    log.write(json.dumps({"op": "put", "key": key, "body": f"writer {n}"}) + "\n")
                else:
                    key = mine.pop(rng.randrange(len(mine)))
                    client.delete_object(Bucket=args.bucket, Key=key)
                    log.write(json.dumps({"op": "delete", "key": key}) + "\n")
            except Exception:  # noqa: BLE001 - the server busy or gone: the write did not happen, try the next
                pass
            time.sleep(args.every)
        log.write(json.dumps({"op": "stop"}) + "\n")
    return 0


class S3Writer:
    """A running writer process (see the module docstring)."""

    def __init__(self, endpoint: str, bucket: str, prefix: str, log: Path, every: float = 0.05,
                 seconds: float = 120.0) -> None:
        self.bucket, self.log = bucket, log
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.s3_writer", endpoint, bucket, prefix, str(log),
                                      "--every", str(every), "--seconds", str(seconds)],
                                     cwd=Path(__file__).resolve().parent.parent)
        deadline = time.monotonic() + 30
        while not self.writes() and time.monotonic() < deadline:
            time.sleep(0.05)

    def writes(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [w for w in (json.loads(line) for line in self.log.read_text().splitlines() if line.strip())
                if w["op"] not in ("start", "stop")]

    def stop(self) -> list[dict[str, Any]]:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return self.writes()

    def __enter__(self) -> S3Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def assert_kept(self, client: Any) -> int:
        """Every acknowledged write is in the bucket: each key with its last body, deleted keys gone."""
        writes = self.writes()
        assert writes, "the writer wrote nothing: the test proves nothing"
        last: dict[str, str | None] = {}
        for w in writes:
            last[w["key"]] = w.get("body")
        for key, body in last.items():
            try:
                found: str | None = client.get_object(Bucket=self.bucket, Key=key)["Body"].read().decode()
            except client.exceptions.NoSuchKey:
                found = None
            assert found == body, f"the writer's {key} is {found!r}, it last wrote {body!r}"
        return len(writes)


if __name__ == "__main__":
    sys.exit(main())
