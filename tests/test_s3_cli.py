"""A plan with a Postgres target and an S3 target together: one action touches both; rollback restores both."""

from __future__ import annotations

import json
import sys

from adapters.s3.target import S3Target
from shadow.settings import Settings
from tests.conftest import write_plan

REWRITE = """
import json, os, sys
import boto3, psycopg

s3 = boto3.client("s3")  # AWS_ENDPOINT_URL / credentials come from the environment shadow hands over
bucket = os.environ["SHADOW_ASSETS_BUCKET"]
with psycopg.connect(os.environ["SHADOW_APP_URL"], autocommit=True) as conn:
    conn.execute("INSERT INTO audit_log VALUES (now(), 'invoices rewritten')")
for item in s3.list_objects_v2(Bucket=bucket, Prefix="invoices/").get("Contents", []):
    doc = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
    doc["currency"] = "EUR"
    s3.put_object(Bucket=bucket, Key=item["Key"], Body=json.dumps(doc), ContentType="application/json")
    if os.environ.get("FAIL_AFTER_FIRST") and os.environ.get("AWS_ENDPOINT_URL") == os.environ["PROD_S3"]:
        sys.exit("network dropped after the first object")
"""


def _setup(tmp_path, prod_db, bucket, s3_server, fail: bool = False) -> tuple[S3Target, dict[str, str]]:
    client, name = bucket
    for i in range(4):
        client.put_object(Bucket=name, Key=f"invoices/{i}.json", Body=json.dumps({"n": i}),
                          ContentType="application/json")
    client.put_object(Bucket=name, Key="other/keep.txt", Body=b"outside the prefix")
    extra = f'FAIL_AFTER_FIRST: "1"\n    PROD_S3: "{s3_server}"' if fail else f'PROD_S3: "{s3_server}"'
    write_plan(tmp_path, f"""
version: 1
targets:
  app: {{kind: postgres, dsn: "${{APP_DATABASE_URL}}"}}
  assets: {{kind: s3, bucket: {name}, prefix: invoices/, endpoint_url: "{s3_server}"}}
action:
  command: "{sys.executable} rewrite.py"
  env:
    {extra}
expect:
  app:
    may: [insert rows public.audit_log]
  assets:
    may: ["modify object {name}/invoices/*"]
    objects:
      "invoices/*": {{deleted: 0, added: 0, modified: "<= 10"}}
""", {"rewrite.py": REWRITE})
    target = S3Target("assets", {"bucket": name, "prefix": "invoices/", "endpoint_url": s3_server},
                      Settings.from_env(state_dir=str(tmp_path / "x")))
    return target, {"APP_DATABASE_URL": prod_db.dsn}


def _doc(bucket, key: str) -> dict:
    client, name = bucket
    return json.loads(client.get_object(Bucket=name, Key=key)["Body"].read())


def test_apply_then_rollback_restores_postgres_and_s3_together(prod_db, shadow_cli, tmp_path, bucket, s3_server):
    target, env = _setup(tmp_path, prod_db, bucket, s3_server)
    pg_before, s3_before = prod_db.fingerprint(), target.fingerprint()
    applied = shadow_cli("apply", "--json", env=env)
    assert applied.code == 0, applied.text
    report = json.loads(applied.out)
    s3_changes = next(t for t in report["targets"] if t["name"] == "assets")["changes"]
    assert len(s3_changes) == 4 and all(c["op"] == "modify" for c in s3_changes)
    assert "currency" in " ".join(s3_changes[0]["detail"]["content_diff"])
    assert _doc(bucket, "invoices/2.json")["currency"] == "EUR"
    assert prod_db.scalar("SELECT count(*) FROM audit_log") == 3

    rolled = shadow_cli("rollback", report["run_id"], env=env)
    assert rolled.code == 0, rolled.text
    assert prod_db.fingerprint() == pg_before
    assert target.fingerprint() == s3_before
    assert _doc(bucket, "invoices/2.json") == {"n": 2}
    client, name = bucket
    assert client.get_object(Bucket=name, Key="other/keep.txt")["Body"].read() == b"outside the prefix"


def test_action_failing_in_production_rolls_back_both_targets(prod_db, shadow_cli, tmp_path, bucket, s3_server):
    target, env = _setup(tmp_path, prod_db, bucket, s3_server, fail=True)
    pg_before, s3_before = prod_db.fingerprint(), target.fingerprint()
    r = shadow_cli("apply", env=env)
    assert r.code == 1, r.text
    assert "ROLLED BACK" in r.out and "network dropped" in r.out
    assert prod_db.fingerprint() == pg_before
    assert target.fingerprint() == s3_before


def test_unversioned_bucket_blocks_the_plan_unless_allowed(prod_db, shadow_cli, tmp_path, s3_server):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket="plain-bucket-x")
    client.put_object(Bucket="plain-bucket-x", Key="a.txt", Body=b"a")
    plan = """
targets:
  assets: {kind: s3, bucket: plain-bucket-x, endpoint_url: "%s"%s}
action: {command: "true"}
""" % (s3_server, "%s")
    write_plan(tmp_path, plan % "")
    blocked = shadow_cli("plan")
    assert blocked.code == 1, blocked.text
    assert "s3-unversioned" in blocked.out
    write_plan(tmp_path, plan % ", allow: [unversioned]")
    allowed = shadow_cli("plan", "--json")
    assert allowed.code == 0, allowed.text
    assert json.loads(allowed.out)["targets"][0]["checkpoint"]["copied_bytes"] == 1
