"""Production never stands still, on S3 (issue 15, item 7): plan, apply and roll back while another writer keeps
putting, overwriting and deleting objects in the same bucket.

Drift is judged on the keys the action read, wrote or listed in its rehearsal (measured from the requests the
shadow's server served); verification on the action's own writes; undo puts back only the keys the run changed.
Every test runs a real writer process (:mod:`tests.s3_writer`) against moto's server and checks afterwards that
every write it made is still there.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.s3.footprint import parse
from tests.conftest import BOTH_BACKENDS, run_cli, write_plan
from tests.s3_writer import S3Writer

REWRITE = """
import json, os, sys
import boto3

s3 = boto3.client("s3")  # AWS_ENDPOINT_URL / credentials come from the environment shadow hands over
bucket = os.environ["SHADOW_ASSETS_BUCKET"]
production = os.environ.get("AWS_ENDPOINT_URL") == os.environ["PROD_S3"]
items = [i for i in s3.list_objects_v2(Bucket=bucket, Prefix="invoices/").get("Contents", [])
         if i["Key"].endswith(".json")]
for n, item in enumerate(items):
    if n and production and os.environ.get("FAIL_AFTER_FIRST"):
        sys.exit("network dropped after the first object")
    doc = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
    doc["currency"] = "EUR"
    s3.put_object(Bucket=bucket, Key=item["Key"], Body=json.dumps(doc), ContentType="application/json")
"""

PLAN = """
version: 1
targets:
  assets: {{kind: s3, bucket: {bucket}, endpoint_url: "{url}"}}
action:
  command: "{python} rewrite.py"
  env:
    PROD_S3: "{url}"{extra}
expect:
  assets:
    may: ["modify object {bucket}/invoices/*"]
    objects:
      "invoices/*": {{deleted: 0, added: 0, modified: "<= 10"}}
policy:
  rehearse_rollback: false
"""


@pytest.fixture
def shop(bucket: tuple[Any, str], s3_server: str, tmp_path: Path) -> tuple[Any, str, Path]:
    client, name = bucket
    for i in range(4):
        client.put_object(Bucket=name, Key=f"invoices/{i}.json", Body=json.dumps({"n": i}),
                          ContentType="application/json")
    client.put_object(Bucket=name, Key="logs/seed.txt", Body=b"seed")
    return client, name, _plan(tmp_path, name, s3_server)


def _plan(tmp_path: Path, name: str, url: str, fail: bool = False) -> Path:
    extra = '\n    FAIL_AFTER_FIRST: "1"' if fail else ""
    return write_plan(tmp_path, PLAN.format(bucket=name, url=url, python=sys.executable, extra=extra),
                      {"rewrite.py": REWRITE})


def _invoice(client: Any, name: str, i: int) -> dict[str, Any]:
    return dict(json.loads(client.get_object(Bucket=name, Key=f"invoices/{i}.json")["Body"].read()))


def _seed_invoices(client: Any, name: str) -> None:
    """The invoices as the checkpoint has them."""
    for i in range(4):
        client.put_object(Bucket=name, Key=f"invoices/{i}.json", Body=json.dumps({"n": i}),
                          ContentType="application/json")


def _invoices_at(client: Any, name: str, changed: str, where: str) -> str:
    """"checkpoint", or ``changed`` when every invoice carries the run's currency; never anything in between."""
    docs = [_invoice(client, name, i) for i in range(4)]
    at = ("checkpoint" if docs == [{"n": i} for i in range(4)] else
          changed if docs == [{"n": i, "currency": "EUR"} for i in range(4)] else None)
    assert at, f"killed at {where!r}: the invoices are neither ({docs})"
    return at


def _target(report: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in report["targets"] if t["name"] == "assets")


def test_the_footprint_is_the_keys_read_written_and_the_prefixes_listed() -> None:
    log = (b'127.0.0.1 - - [02/Dec/2026 10:00:00] "GET /b?list-type=2&prefix=invoices%2F HTTP/1.1" 200 -\n'
           b'127.0.0.1 - - [02/Dec/2026 10:00:00] "GET /b/invoices/0.json HTTP/1.1" 200 -\n'
           b'127.0.0.1 - - [02/Dec/2026 10:00:00] "PUT /b/caf%C3%A9/x%20y?tagging HTTP/1.1" 200 -\n'
           b'127.0.0.1 - - [02/Dec/2026 10:00:00] "GET /b?versioning HTTP/1.1" 200 -\n')
    found = parse(log, "b")
    assert (found.keys, found.prefixes, found.everything) == ({"invoices/0.json", "café/x y"}, {"invoices/"}, False)
    assert found.covers("invoices/9.json") and found.covers("café/x y") and not found.covers("logs/w1.txt")
    batch = parse(b'"POST /b?delete HTTP/1.1" 200 -', "b")
    assert batch.everything and batch.covers("logs/w1.txt"), "a DeleteObjects batch names its keys in its body"
    assert parse(b'"GET /other/key HTTP/1.1" 200 -', "b").everything, "a key that names no key of the bucket"


@BOTH_BACKENDS
def test_apply_and_rollback_keep_every_write_of_another_writer(shop, shadow_cli, s3_server: str,
                                                               tmp_path: Path) -> None:
    """The footprint is measured on both backends (a local server's request log, a container's own log): the
    other writer's keys are outside it, so they neither block the apply nor count as its change."""
    client, name, plan = shop
    with S3Writer(s3_server, name, "logs/", tmp_path / "writes.jsonl") as writer:
        applied = shadow_cli("apply", "-f", str(plan), "--json")
        assert applied.code == 0, applied.text
        report = json.loads(applied.out)
        assert report["outcome"] == "applied", report["reason"]
        assert all(_invoice(client, name, i)["currency"] == "EUR" for i in range(4))
        changes = _target(report)["production_changes"]
        assert {c["name"] for c in changes} == {f"{name}/invoices/{i}.json" for i in range(4)}, \
            "the apply's own change set holds the action's writes only, never the other writer's"
        assert any("logs/w" in w for w in _target(report)["warnings"]), "the other writer's changes are reported"
        run = report["run_id"]
        rolled = shadow_cli("rollback", run, "--json")
        writer.stop()
    assert rolled.code == 0, rolled.text
    back = json.loads(rolled.out)
    assert back["outcome"] == "restored", back["reason"]
    assert "undid run" in back["reason"] and _target(back)["restore"]["mode"] == "undo"
    assert all(_invoice(client, name, i) == {"n": i} for i in range(4))
    assert writer.assert_kept(client) > 10


def test_a_write_to_a_key_the_run_changed_is_a_conflict_unless_forced(shop, shadow_cli) -> None:
    client, name, plan = shop
    applied = shadow_cli("apply", "-f", str(plan), "--json")
    assert applied.code == 0, applied.text
    run = json.loads(applied.out)["run_id"]
    client.put_object(Bucket=name, Key="invoices/2.json", Body=b'{"n": 2, "edited": "by hand"}')
    refused = shadow_cli("rollback", run, "--json")
    assert refused.code != 0
    assert "invoices/2.json" in json.loads(refused.out)["reason"]
    assert _invoice(client, name, 1)["currency"] == "EUR", "a refused rollback leaves production untouched"
    forced = shadow_cli("rollback", run, "--force", "--json")
    assert forced.code == 0, forced.text
    report = json.loads(forced.out)
    assert any("overwrote" in w and "invoices/2.json" in w for w in _target(report)["warnings"])
    assert all(_invoice(client, name, i) == {"n": i} for i in range(4))


def test_a_failure_in_production_undoes_only_the_actions_own_writes(bucket, s3_server: str, shadow_cli,
                                                                   tmp_path: Path) -> None:
    client, name = bucket
    for i in range(4):
        client.put_object(Bucket=name, Key=f"invoices/{i}.json", Body=json.dumps({"n": i}),
                          ContentType="application/json")
    plan = _plan(tmp_path, name, s3_server, fail=True)
    with S3Writer(s3_server, name, "logs/", tmp_path / "writes.jsonl") as writer:
        failed = shadow_cli("apply", "-f", str(plan), "--json")
        writer.stop()
    report = json.loads(failed.out)
    assert report["outcome"] == "rolled_back", report["reason"]
    assert "undid run" in report["reason"], report["reason"]
    assert all(_invoice(client, name, i) == {"n": i} for i in range(4))
    assert writer.assert_kept(client) > 3


def test_drift_on_a_prefix_the_action_listed_refuses_the_apply(shop, shadow_cli, s3_server: str,
                                                              tmp_path: Path) -> None:
    """Another writer keeps adding invoices while shadow works: the rehearsal did not see them, so it cannot
    predict the apply — rehearsed again on a fresh checkpoint, production moved again, refused; nothing applied,
    the writer's objects kept."""
    client, name, plan = shop
    with S3Writer(s3_server, name, "invoices/new-", tmp_path / "writes.jsonl", every=0.02) as writer:
        refused = shadow_cli("apply", "-f", str(plan), "--json")
        writer.stop()
    report = json.loads(refused.out)
    assert report["outcome"] == "refused", report["reason"]
    assert "moved again" in report["reason"], "rehearsed once more on a fresh checkpoint, then refused"
    assert "reads or writes" in report["reason"] and "invoices/new-" in report["reason"]
    assert all(_invoice(client, name, i) == {"n": i} for i in range(4))
    assert writer.assert_kept(client) > 3


def test_sigkill_at_every_transition_of_an_s3_apply_then_recover(shop, s3_server: str, tmp_path: Path) -> None:
    """A killed apply is settled by ``recover`` from the records it kept before the action: only the action's own
    writes are undone, the other writer's are kept, and the invoices end at the checkpoint or as rehearsed."""
    client, name, plan = shop
    trace = tmp_path / "trace.txt"
    done = run_cli("apply", "-f", str(plan), state=tmp_path / "traced", cwd=tmp_path,
                   env={"SHADOW_FAULT_TRACE": str(trace)})
    assert done.code == 0, done.text
    points = [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]
    assert "phase applied" in points and any(p.startswith("begin before apply") for p in points), points
    # Every point from the undo records on (before them production is only read: tests/test_crash_safety.py).
    first = next(n for n, p in enumerate(points, 1) if p.startswith("begin before apply"))
    outcomes = {}
    with S3Writer(s3_server, name, "logs/", tmp_path / "writes.jsonl") as writer:
        for point in range(first, len(points) + 1):
            _seed_invoices(client, name)
            state = tmp_path / f"state{point}"
            killed = run_cli("apply", "-f", str(plan), state=state, cwd=tmp_path,
                             env={"SHADOW_FAULT_KILL_AT": str(point)})
            assert killed.code == -signal.SIGKILL, (points[point - 1], killed.text)
            recovered = run_cli("recover", state=state, cwd=tmp_path)
            assert recovered.code == 0 and "Traceback" not in recovered.err, (points[point - 1], recovered.text)
            at = _invoices_at(client, name, "rehearsed", points[point - 1])
            outcomes[points[point - 1]] = at
        writer.stop()
    assert writer.assert_kept(client) > 20
    print(f"\ncovered {len(outcomes)} kill points of an S3 apply: " +
          ", ".join(f"{p} → {o}" for p, o in outcomes.items()))
    assert set(outcomes.values()) == {"checkpoint", "rehearsed"}


LATE = """
import os, pathlib, boto3
# Once, during the first rehearsal only: someone adds an invoice to production.
marker = pathlib.Path("late.done").absolute()  # the action runs in the plan's folder
if os.environ.get("AWS_ENDPOINT_URL") != os.environ["PROD_S3"] and not marker.exists():
    marker.write_text("")
    prod = boto3.client("s3", endpoint_url=os.environ["PROD_S3"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")
    prod.put_object(Bucket=os.environ["SHADOW_ASSETS_BUCKET"], Key="invoices/late.json", Body=b'{"n": 9}')
"""


def test_drift_on_what_the_action_reads_rehearses_again_on_a_fresh_checkpoint(shop, shadow_cli,
                                                                             tmp_path: Path) -> None:
    """An invoice added once, after the checkpoint: the first rehearsal cannot predict the apply (the action
    lists invoices/), so shadow checkpoints and rehearses again — and applies what that rehearsal predicted."""
    client, name, plan = shop
    (tmp_path / "late.py").write_text(LATE)
    plan.write_text(plan.read_text().replace('command: "', f'command: "{sys.executable} late.py && '))
    applied = shadow_cli("apply", "-f", str(plan), "--json")
    assert applied.code == 0, applied.text
    report = json.loads(applied.out)
    assert report["outcome"] == "applied", report["reason"]
    assert any(w.startswith("rehearsed twice") and "invoices/late.json" in w for w in _target(report)["warnings"])
    assert len(_target(report)["changes"]) == 5, "the second rehearsal saw the late invoice"
    assert json.loads(client.get_object(Bucket=name, Key="invoices/late.json")["Body"].read()) == \
        {"n": 9, "currency": "EUR"}
    assert all(_invoice(client, name, i)["currency"] == "EUR" for i in range(4))


def test_an_unversioned_bucket_is_undone_from_the_checkpoints_copies(s3_server: str, shadow_cli,
                                                                     tmp_path: Path) -> None:
    """No versions to copy back: the undo puts the run's keys back from the copies the checkpoint stored, and
    leaves the other writer's keys alone."""
    import uuid

    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    name = "plain-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=name)
    for i in range(4):
        client.put_object(Bucket=name, Key=f"invoices/{i}.json", Body=json.dumps({"n": i}),
                          ContentType="application/json", Metadata={"owner": "billing"})
    plan = _plan(tmp_path, name, s3_server)
    plan.write_text(plan.read_text().replace(f'endpoint_url: "{s3_server}"}}',
                                             f'endpoint_url: "{s3_server}", allow: [unversioned]}}'))
    with S3Writer(s3_server, name, "logs/", tmp_path / "writes.jsonl") as writer:
        applied = shadow_cli("apply", "-f", str(plan), "--json")
        assert applied.code == 0, applied.text
        assert all(_invoice(client, name, i)["currency"] == "EUR" for i in range(4))
        rolled = shadow_cli("rollback", json.loads(applied.out)["run_id"], "--json")
        writer.stop()
    assert rolled.code == 0, rolled.text
    assert _target(json.loads(rolled.out))["restore"]["mode"] == "undo"
    assert all(_invoice(client, name, i) == {"n": i} for i in range(4))
    head = client.head_object(Bucket=name, Key="invoices/0.json")
    assert head["ContentType"] == "application/json" and head["Metadata"] == {"owner": "billing"}
    assert writer.assert_kept(client) > 10


def test_sigkill_at_every_transition_of_an_s3_rollback_then_recover(shop, s3_server: str, tmp_path: Path,
                                                                    evidence: Callable[[str], None]) -> None:
    """A killed rollback is finished by ``recover``: the invoices the run rewrote end as the apply left them or at
    the checkpoint, and the other writer's objects are kept throughout."""
    client, name, plan = shop
    traced = tmp_path / "traced"
    applied = run_cli("apply", "-f", str(plan), "--json", state=traced, cwd=tmp_path)
    assert applied.code == 0, applied.text
    trace = tmp_path / "trace.txt"
    done = run_cli("rollback", json.loads(applied.out)["run_id"], state=traced, cwd=tmp_path,
                   env={"SHADOW_FAULT_TRACE": str(trace)})
    assert done.code == 0, done.text
    points = [line.split("\t", 1)[1] for line in trace.read_text().splitlines()]
    outcomes = {}
    with S3Writer(s3_server, name, "logs/", tmp_path / "writes.jsonl") as writer:
        for point in range(1, len(points) + 1):
            _seed_invoices(client, name)
            state = tmp_path / f"state{point}"
            applied = run_cli("apply", "-f", str(plan), "--json", state=state, cwd=tmp_path)
            assert applied.code == 0, applied.text
            killed = run_cli("rollback", json.loads(applied.out)["run_id"], state=state, cwd=tmp_path,
                             env={"SHADOW_FAULT_KILL_AT": str(point)})
            assert killed.code == -signal.SIGKILL, (points[point - 1], killed.text)
            recovered = run_cli("recover", state=state, cwd=tmp_path)
            assert recovered.code == 0 and "Traceback" not in recovered.err, (points[point - 1], recovered.text)
            at = _invoices_at(client, name, "applied state", points[point - 1])
            outcomes[points[point - 1]] = at
        writer.stop()
    assert writer.assert_kept(client) > 10
    evidence(f"covered {len(points)} kill points of an S3 rollback: " +
             ", ".join(f"{p} → {o}" for p, o in outcomes.items()))
    assert "checkpoint" in outcomes.values()
