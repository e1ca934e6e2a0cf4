"""S3 shadows on the docker backend: moto's server in a labelled container, reachable from an isolated action
through the sandbox's internal network and from nowhere else."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import docker_or_skip, write_plan

SEEN = """
import json, os, subprocess, boto3
s3 = boto3.client("s3")
bucket = os.environ["SHADOW_ASSETS_BUCKET"]
s3.put_object(Bucket=bucket, Key="invoices/0.json", Body=b'{"n": 0, "currency": "EUR"}')
ps = subprocess.run(["docker", "ps", "--filter", "label=shadow.role=s3-shadow", "--format", "{{.Ports}}"],
                    capture_output=True, text=True).stdout
with open(os.environ["OUT"], "w") as fh:
    json.dump({"endpoint": os.environ["AWS_ENDPOINT_URL"], "containers": ps.splitlines()}, fh)
"""

# The action image has no boto3. moto does not check signatures, but its server tells services apart by the
# credential scope of the Authorization header, so a request with a scope and no real signature is enough.
ISOLATED = """
import os, urllib.request
url = os.environ["AWS_ENDPOINT_URL"] + "/" + os.environ["SHADOW_ASSETS_BUCKET"] + "/invoices/0.json"
scope = "AWS4-HMAC-SHA256 Credential=" + os.environ["AWS_ACCESS_KEY_ID"] + "/20260101/us-east-1/s3/aws4_request, "
request = urllib.request.Request(url, data=b'{"n": 0, "isolated": true}', method="PUT",
                                 headers={"Authorization": scope + "SignedHeaders=host, Signature=00"})
urllib.request.urlopen(request, timeout=10)
try:
    urllib.request.urlopen(os.environ["PROD_S3"] + "/", timeout=3)
    print("PRODUCTION REACHABLE")
except OSError as exc:
    print("production unreachable:", type(exc).__name__)
"""


@pytest.fixture
def docker() -> None:
    docker_or_skip()


def _seed(bucket: tuple[Any, str]) -> None:
    client, name = bucket
    for i in range(3):
        client.put_object(Bucket=name, Key=f"invoices/{i}.json", Body=json.dumps({"n": i}).encode())


def test_s3_shadow_is_a_container_on_the_docker_backend(docker: None, shadow_cli, tmp_path: Path,
                                                        bucket: tuple[Any, str], s3_server: str) -> None:
    _seed(bucket)
    client, name = bucket
    out = tmp_path / "seen.json"
    write_plan(tmp_path, f"""
targets: {{assets: {{kind: s3, bucket: {name}, prefix: invoices/, endpoint_url: "{s3_server}"}}}}
action: {{command: "{sys.executable} seen.py", env: {{OUT: "{out}"}}}}
expect: {{assets: {{must: ["modify object {name}/invoices/0.json"]}}}}
policy: {{backend: docker}}
""", {"seen.py": SEEN})
    planned = shadow_cli("plan", "--json", env={"SHADOW_BACKEND": "docker"})
    assert planned.code == 0, planned.text
    seen = json.loads(out.read_text())
    port = seen["endpoint"].rsplit(":", 1)[1]
    assert any(f":{port}->5000" in ports for ports in seen["containers"]), seen
    assert seen["endpoint"] != s3_server
    assert json.loads(client.get_object(Bucket=name, Key="invoices/0.json")["Body"].read()) == {"n": 0}
    undo = [v for v in json.loads(planned.out)["expectations"] if v["rule"] == "rollback"]
    assert undo and undo[0]["ok"]


def test_an_isolated_action_reaches_its_s3_shadow_and_not_production(docker: None, shadow_cli, tmp_path: Path,
                                                                     bucket: tuple[Any, str], s3_server: str) -> None:
    _seed(bucket)
    client, name = bucket
    write_plan(tmp_path, f"""
targets: {{assets: {{kind: s3, bucket: {name}, prefix: invoices/, endpoint_url: "{s3_server}"}}}}
action:
  command: "python3 isolated.py"
  isolation: container
  image: shadow-test/action:latest
  env: {{PROD_S3: "{s3_server}"}}
expect: {{assets: {{must: ["modify object {name}/invoices/0.json"]}}}}
policy: {{backend: docker}}
""", {"isolated.py": ISOLATED})
    planned = shadow_cli("plan", "--json", env={"SHADOW_BACKEND": "docker"})
    assert planned.code == 0, planned.text
    log = (Path(json.loads(planned.out)["report_dir"]) / "action-rehearsal.log").read_text()
    assert "production unreachable" in log and "PRODUCTION REACHABLE" not in log, log
    assert json.loads(client.get_object(Bucket=name, Key="invoices/0.json")["Body"].read()) == {"n": 0}
