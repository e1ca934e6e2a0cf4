"""What shadow's pytest plugin adds to a pytest start for a project that installs shadow and does not use it.

    .venv/bin/python benchmarks/bench_plugin_import.py [-n 15]

Baseline: a fresh interpreter importing pytest; measured: the same importing pytest and then the plugin module (what
the ``pytest11`` entry point loads), in alternation, in the same run. Printed: the medians, the ratio and the
milliseconds added (the goal: under 50 ms).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def timed(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("-n", type=int, default=15)
    opts = args.parse_args()
    base, plugin = [], []
    for _ in range(opts.n):
        base.append(timed("import pytest"))
        plugin.append(timed("import pytest; import shadow.pytest_plugin"))
    b, p = statistics.median(base), statistics.median(plugin)
    print(f"import pytest:                        median {b * 1000:.1f} ms")
    print(f"import pytest + shadow.pytest_plugin: median {p * 1000:.1f} ms")
    print(f"ratio {p / b:.3f}x, added {(p - b) * 1000:+.1f} ms (goal: under 50 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
