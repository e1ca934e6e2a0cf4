"""The examples a newcomer copies must keep working."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_s3_rewrite_example_plans_cleanly(shadow_cli, bucket, s3_server, tmp_path):
    client, name = bucket
    for i in range(3):
        client.put_object(Bucket=name, Key=f"invoices/2026/{i}.json", Body=json.dumps({"total": i}))
    client.put_object(Bucket=name, Key="invoices/2025/old.json", Body=b"{}")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    r = shadow_cli("plan", "--json", "-f", str(ROOT / "examples" / "s3-rewrite" / "shadow.yaml"),
                   env={"INVOICE_BUCKET": name, "S3_ENDPOINT": s3_server, "PATH": path})
    assert r.code == 0, r.text
    changes = json.loads(r.out)["targets"][0]["changes"]
    assert [c["address"] for c in changes] == [f"modify object {name}/invoices/2026/{i}.json" for i in range(3)]
    assert json.loads(client.get_object(Bucket=name, Key="invoices/2026/0.json")["Body"].read()) == {"total": 0}


def test_agent_walkthrough_runs_as_written(tmp_path):
    """examples/agent/README.md's story: a backfill approved and applied, a drop refused, the breaker reset."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "agent" / "walkthrough.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "apply: applied" in done.stdout and "limits.drops is false" in done.stdout
    assert "breaker of actor 'assistant' is open" in done.stdout and "breaker closed" in done.stdout
