"""What shared state on PostgreSQL (``SHADOW_STATE_URL``) adds to a run, against the local state dir, in one run.

    .venv/bin/python benchmarks/bench_shared_state.py [-n 12]

Production is a throwaway LocalCluster holding the demo shop; the state database is a second throwaway
LocalCluster on this machine (as a team's would be on its network). Each round applies a small SQL change and
rolls it back — the runs a team shares — once with a local state dir and once with shared state, alternating, in
this process through the Python API with warm checkpoints on (so the state's cost is not drowned by the shadow's
start). Printed: the medians per run of both, their ratio, and the milliseconds shared state adds per run (the
goal: at most 100 ms).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PLAN = """
targets: {shop: {kind: postgres, dsn: "${SHOP_DATABASE_URL}"}}
action: {sql: change.sql}
expect: {shop: {may: ["update rows public.orders"]}}
policy: {backend: local, warm: 10m}
"""


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("-n", type=int, default=12)
    opts = args.parse_args()

    from adapters.postgres.binaries import find_binaries
    from adapters.postgres.cluster import LocalCluster
    from shadow import run
    from shadow.settings import Settings

    with tempfile.TemporaryDirectory(prefix="bench-shared-state-") as tmp, \
            LocalCluster(label="bench-production", binaries=find_binaries()[-1]) as prod, \
            LocalCluster(label="bench-state", binaries=find_binaries()[-1]) as state_server:
        root = Path(tmp)
        dsn = prod.create_database("shop")
        with prod.connect("shop") as conn:
            conn.execute((ROOT / "examples" / "demo" / "schema.sql").read_text())
        (root / "shadow.yaml").write_text(PLAN)
        (root / "change.sql").write_text("UPDATE orders SET total_cents = total_cents + 1 WHERE id = 1;\n")
        state_url = state_server.create_database("state")
        env = {"SHOP_DATABASE_URL": dsn, "PATH": "/usr/bin:/bin"}
        local = Settings.from_env(env, state_dir=root / "local")
        shared = Settings.from_env(env | {"SHADOW_STATE_URL": state_url}, state_dir=root / "shared")

        def one(settings: Settings) -> float:
            start = time.perf_counter()
            applied = run.apply(root / "shadow.yaml", settings)
            assert applied.outcome.value == "applied", applied.reason
            back = run.rollback(applied.run_id, settings)
            assert back.outcome.value == "restored", back.reason
            return (time.perf_counter() - start) / 2  # two runs

        one(local), one(shared)  # warm checkpoints readied, schema created: not measured
        times: dict[str, list[float]] = {"local": [], "shared": []}
        for _ in range(opts.n):
            times["local"].append(one(local))
            times["shared"].append(one(shared))
        from adapters.postgres import warm

        for folder in root.rglob("warm/postgres"):
            warm.reap(folder, everything=True)
    lo, sh = statistics.median(times["local"]), statistics.median(times["shared"])
    print(f"apply + rollback, per run, median of {opts.n} rounds (warm checkpoints)")
    print(f"  local state dir:                 {lo * 1000:6.1f} ms")
    print(f"  shared state (SHADOW_STATE_URL): {sh * 1000:6.1f} ms")
    print(f"ratio {sh / lo:.3f}x, added {(sh - lo) * 1000:+.1f} ms per run (goal: at most 100 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
