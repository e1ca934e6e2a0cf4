"""An agent loop through the gateway against the same plans from the CLI, in the same run.

    .venv/bin/python benchmarks/bench_agent.py [-n 20] [--warm 10m|off] [--think 0.5]

Production is a throwaway LocalCluster holding the demo shop (examples/demo/schema.sql). The agent is the ``mcp``
SDK's stdio client talking to ``shadow mcp`` (a real subprocess, as an MCP client runs it): ``-n`` ``propose``
calls of a small transactional change (one order's total), each timed from the request to the answer, with
``--think`` seconds between an answer and the next request (an agent reads the answer before it calls again; the
gateway readies its warm copy meanwhile — 0 measures calls back to back). The
baseline replays exactly the plan file each proposal wrote, with ``shadow plan -f`` from the CLI (a subprocess
per plan, as a CI job runs it), with the same state dir and the same warm setting. Printed: median and p95 of both,
their ratio (the gateway should add at most 10 %), and how far the median ``propose`` is from the goal for a
contained agent, 200 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GATEWAY = """\
version: 1
targets:
  shop: {kind: postgres, dsn: "${SHOP_DATABASE_URL}"}
policy: {backend: local, warm: "%s"}
agents:
  default:
    scope: {shop: {may: ["* rows public.orders"]}}
    rate: {proposals: 1000/1m}
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("-n", type=int, default=20)
    args.add_argument("--warm", default="10m")
    args.add_argument("--think", type=float, default=0.5)
    opts = args.parse_args()

    import anyio
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    from adapters.postgres.binaries import find_binaries
    from adapters.postgres.cluster import LocalCluster
    from adapters.postgres import warm

    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp, \
            LocalCluster(label="bench-agent-production", binaries=find_binaries()[-1]) as prod:
        folder = Path(tmp)
        dsn = prod.create_database("shop")
        with prod.connect("shop") as conn:
            conn.execute((ROOT / "examples" / "demo" / "schema.sql").read_text())
        (folder / "gateway.yaml").write_text(GATEWAY % opts.warm)
        state = folder / "state"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}, "SHOP_DATABASE_URL": dsn}
        params = StdioServerParameters(command=sys.executable, args=[
            "-m", "shadow.cli", "--state-dir", str(state), "mcp", "-f", str(folder / "gateway.yaml"), "--actor", "bench"],
            env=env, cwd=str(folder))
        gateway_seconds: list[float] = []
        run_ids: list[str] = []

        async def loop() -> None:
            with open(folder / "server.log", "w") as errlog:
                async with stdio_client(params, errlog=errlog) as (read, write):
                    async with ClientSession(read, write) as session:
                        await session.initialize()
                        for i in range(opts.n):
                            await anyio.sleep(opts.think)
                            start = time.perf_counter()
                            result = await session.call_tool("propose", {"action": {
                                "sql": f"UPDATE orders SET total_cents = total_cents + 1 WHERE id = {i + 1}"}})
                            gateway_seconds.append(time.perf_counter() - start)
                            data: dict[str, Any] = result.structured_content or {}
                            assert not result.is_error and data.get("verdict") == "awaiting_approval", result.content
                            run_ids.append(str(data["run_id"]))
                            print(f"  propose {i + 1}/{opts.n}: {gateway_seconds[-1] * 1000:.0f} ms", flush=True)

        print(f"gateway: {opts.n} propose calls over MCP stdio (warm: {opts.warm}, think: {opts.think:g} s)")
        anyio.run(loop)
        plans = [json.loads((state / "gateway" / "runs" / f"{r}.json").read_text())["plan"] for r in run_ids]
        cli_seconds: list[float] = []
        print(f"CLI: the same {opts.n} plan files with `shadow plan -f`")
        cli_env = {**env, **({"SHADOW_WARM": opts.warm} if opts.warm else {})}
        for i, plan in enumerate(plans):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "shadow.cli", "--state-dir", str(state), "plan", "-q", "-f",
                                   plan], env=cli_env, cwd=folder, capture_output=True, text=True)
            cli_seconds.append(time.perf_counter() - start)
            assert done.returncode == 0, done.stdout + done.stderr
            print(f"  plan {i + 1}/{opts.n}: {cli_seconds[-1] * 1000:.0f} ms", flush=True)
        warm.reap(state / "warm" / "postgres", everything=True)

    g50, g95 = statistics.median(gateway_seconds), percentile(gateway_seconds, 0.95)
    c50, c95 = statistics.median(cli_seconds), percentile(cli_seconds, 0.95)
    print()
    print(f"propose via gateway: p50 {g50 * 1000:.0f} ms, p95 {g95 * 1000:.0f} ms")
    print(f"shadow plan via CLI: p50 {c50 * 1000:.0f} ms, p95 {c95 * 1000:.0f} ms")
    print(f"gateway / CLI (p50): {g50 / c50:.2f}x  (goal: at most 1.10x)")
    print(f"p50 propose vs the 200 ms goal: {g50 / 0.2:.1f}x the goal ({(g50 - 0.2) * 1000:+.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
