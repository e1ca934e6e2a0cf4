"""How fast the front end starts, as ratios against a bare interpreter started the same way, in the same run.

    .venv/bin/python benchmarks/bench_startup.py [--repeat 10]

- ``shadow --help``            vs ``python -c pass``
- ``shadow lint FILE`` (one small file) vs ``python -c pass``
- ``import shadow.cli``        vs ``python -c pass``

A front end should pay only for what the command uses: a kind's libraries (psycopg, boto3, GitPython, docker,
testcontainers) are imported when a plan names that kind, never to print help or lint SQL.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def best_of(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sql = Path(tmp) / "m.sql"
        sql.write_text("SET lock_timeout = '2s';\nALTER TABLE users ADD COLUMN nickname text;\n")
        baseline = best_of([sys.executable, "-c", "pass"], args.repeat)
        rows = [
            ("shadow --help", best_of([sys.executable, "-m", "shadow.cli", "--help"], args.repeat)),
            ("shadow lint m.sql", best_of([sys.executable, "-m", "shadow.cli", "lint", str(sql)], args.repeat)),
            ("import shadow.cli", best_of([sys.executable, "-c", "import shadow.cli"], args.repeat)),
        ]
    print(f"python -c pass: {baseline * 1000:.0f} ms (median of {args.repeat})")
    for name, seconds in rows:
        print(f"{name:<20} {seconds * 1000:6.0f} ms   {seconds / baseline:5.1f}x python -c pass   "
              f"+{(seconds - baseline) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
