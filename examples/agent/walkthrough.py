"""The agent walk-through of examples/agent/README.md, runnable: a throwaway local "production" holding the demo shop,
this folder's gateway.yaml, and an agent (here: this script, through the same Python API the MCP tools call).

    .venv/bin/python examples/agent/walkthrough.py

1. the agent proposes a backfill → it passes → a person approves (`shadow approve`) → the agent applies it;
2. the agent proposes a drop → refused with the evidence;
3. five refusals → the breaker opens → a person resets it (`shadow agents reset`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from adapters.postgres.binaries import find_binaries
from adapters.postgres.cluster import LocalCluster
from adapters import REGISTRY
from shadow import gateway
from shadow.approval import approve
from shadow.gateway import Refused
from shadow.gateway.ledger import Ledger
from shadow.settings import Settings

HERE = Path(__file__).resolve().parent
SCHEMA = HERE.parent / "demo" / "schema.sql"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="shadow-agent-") as tmp, \
            LocalCluster(label="agent-example-production", binaries=find_binaries()[-1]) as prod:
        dsn = prod.create_database("shop")
        with prod.connect("shop") as conn:
            conn.execute(SCHEMA.read_text())
        # Containers are what the gateway file asks of command actions; this walk-through proposes SQL only.
        env = {**os.environ, "SHOP_DATABASE_URL": dsn, "SHADOW_BACKEND": os.environ.get("SHADOW_BACKEND", "local")}
        settings = Settings.from_env(environ=env, state_dir=Path(tmp) / "state")
        agent = gateway.open(HERE / "gateway.yaml", "assistant", settings)

        print("1. the agent proposes a backfill")
        backfill = agent.propose(
            {"sql": "UPDATE orders SET status = 'paid' WHERE status = 'pending' AND placed_at < '2026-01-05'"},
            {"shop": {"must": ["update rows public.orders"], "rows": {"public.orders": {"updated": "<= 100"}}}},
            "orders placed before Jan 5 were paid by bank transfer")
        print(f"   {backfill['run_id']}: {backfill['verdict']} — "
              f"{[c['address'] for c in backfill['changes']['shop']]}")
        try:
            agent.apply(backfill["run_id"])
        except Refused as exc:
            print(f"   apply before approval: refused — {exc}")
        approve(backfill["run_id"], "alice", "checked the diff", settings)  # `shadow approve RUN --by alice`
        applied = agent.apply(backfill["run_id"])
        print(f"   approved by alice; apply: {applied['verdict']}")

        print("2. the agent proposes a drop")
        drop = agent.propose({"sql": "DO $$ BEGIN EXECUTE 'DROP TABLE audit_log'; END $$"})
        print(f"   {drop['run_id']}: {drop['verdict']}")
        for v in drop["rules"]:
            if not v["ok"]:
                print(f"   ✗ {v['rule']}: {v['subject']} — {v['message']}")

        print("3. refusals open the breaker")
        for _ in range(4):
            agent.propose({"sql": "UPDATE users SET full_name = upper(full_name)"})
        try:
            agent.propose({"sql": "UPDATE orders SET total_cents = total_cents WHERE id = 1"})
        except Refused as exc:
            print(f"   refused: {exc}")
        Ledger(settings).reset("assistant", "bob")  # `shadow agents reset assistant --by bob`
        print(f"   after `shadow agents reset`: breaker {agent.targets()['breaker']['state']}")
        ok = applied["verdict"] == "applied" and drop["verdict"] == "failed" and \
            agent.targets()["breaker"]["state"] == "closed"
        agent.close()
        for kind in REGISTRY.values():  # `shadow gc --warm`: this walk-through's state dir goes with it
            kind.reap_warm(settings, everything=True, dry_run=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
