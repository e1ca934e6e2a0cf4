"""Rolling back an applied run that changed a few rows: change by change vs the full checkpoint restore, same run.

    .venv/bin/python benchmarks/bench_rollback.py [--scale 5] [--rows 10[,1000,...]] [--table tellers] [-n 1]

Production is a LocalCluster holding a pgbench database (``pgbench -i -s SCALE`` when ``pgbench`` sits beside the
server binaries, else the same four tables made with ``generate_series``): 100,000 accounts, 1 branch and 10
tellers per scale unit, history empty, primary keys on aid/bid/tid. ``--scale 5`` is ~75 MB and runs in about a
minute; ``--scale 68`` is ~1 GB, the size the issue names.

A plan whose SQL updates ``--rows`` rows of one table (``UPDATE pgbench_<table> SET ... WHERE <id> <= N``, in one
transaction) is applied with the real CLI (``python -m shadow.cli apply``, ``SHADOW_BACKEND=local``) and rolled
back, each a subprocess timed from start to exit:

- **surgical**: ``shadow rollback RUN`` — the rows the apply kept pre-images of are put back in one transaction;
  one apply + rollback per ``--rows`` value, so the time can be read against the rows changed.
- **full**: on a second apply of the same plan (``--rows``' first value), ``shadow rollback RUN --full`` — the whole
  checkpoint archive replayed over production in one transaction, then verified.
- **baseline**: plain ``pg_dump -Fc`` of the same database and ``pg_restore`` of it into a scratch database.

Each rollback's in-process step (``undo`` / ``restore``, from the JSON report's ``steps``) is printed beside its
wall time, which also counts the CLI's start, the plan load, locks and the journal; ``shadow --help`` is timed as
the floor under any CLI call. With ``-n`` each rollback (and the apply it needs) runs N times, surgical and full
alternating, best kept. Target: surgical at least 10x faster than full, its time growing with the rows changed, not
with the database.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from adapters.postgres.binaries import PgBinaries, find_binaries
from adapters.postgres.cluster import LocalCluster
from adapters.postgres.dsn import libpq_env

DBNAME = "bank"
REPO = Path(__file__).resolve().parent.parent
TABLES = {"branches": ("bid", 1), "tellers": ("tid", 10), "accounts": ("aid", 100_000)}  # key, rows per scale unit

PLAN = """\
version: 1
targets:
  app: {{kind: postgres, dsn: "{dsn}"}}
action:
  sql: migrate.sql
expect:
  app:
    may: [update rows public.pgbench_{table}]
policy:
  rehearse_rollback: false
"""

# pgbench -i's tables, for when pgbench itself is not installed (same columns, fill, keys; no history rows).
SCHEMA_SQL = """
CREATE TABLE pgbench_branches (bid int NOT NULL, bbalance int, filler char(88)) WITH (fillfactor = 100);
CREATE TABLE pgbench_tellers (tid int NOT NULL, bid int, tbalance int, filler char(84)) WITH (fillfactor = 100);
CREATE TABLE pgbench_accounts (aid int NOT NULL, bid int, abalance int, filler char(84)) WITH (fillfactor = 100);
CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
INSERT INTO pgbench_branches SELECT g, 0 FROM generate_series(1, {scale}) g;
INSERT INTO pgbench_tellers SELECT g, (g - 1) / 10 + 1, 0 FROM generate_series(1, {scale} * 10) g;
INSERT INTO pgbench_accounts SELECT g, (g - 1) / 100000 + 1, 0, '' FROM generate_series(1, {scale} * 100000) g;
ALTER TABLE pgbench_branches ADD PRIMARY KEY (bid);
ALTER TABLE pgbench_tellers ADD PRIMARY KEY (tid);
ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid);
"""


@dataclass
class Timed:
    """One CLI call: wall seconds, its in-process step seconds, and its JSON report."""

    wall: float
    step: float
    report: dict[str, Any]

    @property
    def outside(self) -> float:
        """Wall seconds spent outside every step: interpreter, imports, plan load, locks, journal, report."""
        return self.wall - sum(float(s["seconds"]) for s in self.report.get("steps", []))


def build(server: LocalCluster, dsn: str, scale: int) -> str:
    """Fill production with pgbench's tables; say how."""
    pgbench = server.binaries.bindir / "pgbench"
    if pgbench.exists():
        conninfo, env = libpq_env(dsn)
        subprocess.run([str(pgbench), "-i", "-q", "-s", str(scale), conninfo], env={**os.environ, **env},
                       check=True, capture_output=True, text=True)
        return f"pgbench -i -s {scale}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL.format(scale=scale))
        conn.execute("VACUUM ANALYZE")
    return f"generate_series (no pgbench in {server.binaries.bindir}), scale {scale}"


def db_size(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


def shadow(state: Path, cwd: Path, *args: str) -> tuple[float, dict[str, Any]]:
    """Run the real CLI to its end; (wall seconds, its JSON report). Exits the benchmark when it does not exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env["SHADOW_BACKEND"] = "local"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "shadow.cli", "--state-dir", str(state), *args, "--json"]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"`shadow {' '.join(args)}` exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return took, json.loads(proc.stdout)


def step_seconds(report: dict[str, Any], name: str) -> float:
    return sum(float(s["seconds"]) for s in report.get("steps", []) if s["step"] == name)


def steps(report: dict[str, Any]) -> str:
    """Every step of a run with its seconds, in order (where the wall time went)."""
    return ", ".join(f"{s['step']} {float(s['seconds']):.2f}" for s in report.get("steps", []))


def warnings(report: dict[str, Any]) -> str:
    return " | ".join(w for t in report["targets"] for w in t.get("warnings", []))


def apply(tmp: Path, state: Path, dsn: str, table: str, rows: int) -> tuple[float, str]:
    key = TABLES[table][0]
    column = {"branches": "bbalance", "tellers": "tbalance", "accounts": "abalance"}[table]
    (tmp / "migrate.sql").write_text(f"UPDATE pgbench_{table} SET {column} = {column} + 1 WHERE {key} <= {rows};\n")
    (tmp / "shadow.yaml").write_text(PLAN.format(dsn=dsn, table=table))
    took, report = shadow(state, tmp, "apply", "-f", str(tmp / "shadow.yaml"))
    return took, str(report["run_id"])


def rollback(state: Path, cwd: Path, run_id: str, full: bool) -> Timed:
    took, report = shadow(state, cwd, "rollback", run_id, *(["--full"] if full else []))
    if full:
        if "--full" not in warnings(report):
            sys.exit(f"the full rollback does not say --full in its warnings: {warnings(report)!r}")
        return Timed(took, step_seconds(report, "restore"), report)
    if "other sessions' writes since were kept" not in report["reason"]:
        # Not undone change by change: say why (the fallback names its reason in the warnings).
        sys.exit(f"the rollback was not surgical: {report['reason']!r}; warnings: {warnings(report)!r}")
    return Timed(took, step_seconds(report, "undo"), report)


def cli_start(cwd: Path, repeat: int = 3) -> float:
    """Best wall seconds of ``shadow --help``: the floor under any CLI call's time."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "shadow.cli", "--help"], cwd=cwd, check=True, capture_output=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        best = min(best, time.perf_counter() - start)
    return best


def changed(dsn: str, table: str, rows: int) -> int:
    """Rows of the table that still differ from the fresh pgbench state (every balance 0)."""
    key = TABLES[table][0]
    column = {"branches": "bbalance", "tellers": "tbalance", "accounts": "abalance"}[table]
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM pgbench_{table} WHERE {key} <= {rows} AND {column} <> 0").fetchone()
    assert row is not None
    return int(row[0])


def plain_dump_restore(tools: PgBinaries, server: LocalCluster, dsn: str, tmp: Path) -> tuple[float, float]:
    """Seconds of ``pg_dump -Fc`` of production and of ``pg_restore`` of it into a new scratch database."""
    conninfo, env = libpq_env(dsn)
    env = {**os.environ, **env}
    archive = tmp / "plain.dump"
    start = time.perf_counter()
    subprocess.run([tools.path("pg_dump"), "-Fc", "-f", str(archive), "-d", conninfo], env=env, check=True)
    dumped = time.perf_counter() - start
    scratch = server.create_database("bank_scratch")
    scratch_info, _ = libpq_env(scratch)
    start = time.perf_counter()
    subprocess.run([tools.path("pg_restore"), "--no-owner", "--exit-on-error", "-d", scratch_info, str(archive)],
                   env=env, check=True)
    restored = time.perf_counter() - start
    archive.unlink()
    return dumped, restored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=5, help="pgbench scale: 100,000 accounts each, ~15 MB "
                        "(default 5, ~75 MB; 68 is ~1 GB)")
    parser.add_argument("--rows", default="10", help="rows the migration updates; comma-separated for one surgical "
                        "rollback each (the full rollback uses the first; default 10)")
    parser.add_argument("-n", "--repeat", type=int, default=1,
                        help="best of N (each rollback needs an apply of its own; default 1)")
    parser.add_argument("--table", choices=sorted(TABLES), default="tellers",
                        help="the table the migration updates (default tellers: 10 per scale unit)")
    args = parser.parse_args()
    if args.scale < 1 or args.repeat < 1:
        parser.error("--scale and --repeat must be at least 1")
    try:
        counts = [int(n) for n in args.rows.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--rows must be integers, comma-separated: {args.rows!r}")
    have = TABLES[args.table][1] * args.scale
    if not counts or min(counts) < 1 or max(counts) > have:
        parser.error(f"--rows must be between 1 and {have:,} (pgbench_{args.table} at scale {args.scale}; "
                     "--table accounts has 100,000 per scale unit)")

    binaries = find_binaries()[-1]
    with LocalCluster(label="bench-rollback", binaries=binaries) as server, \
            tempfile.TemporaryDirectory(prefix="shadow-bench-rollback-") as tmp_name:
        tmp = Path(tmp_name)
        state = tmp / "state"
        dsn = server.create_database(DBNAME)
        start = time.perf_counter()
        how = build(server, dsn, args.scale)
        size = db_size(dsn)
        print(f"production: PostgreSQL {binaries.major} ({binaries.bindir}), database {DBNAME!r} = "
              f"{size / 2**20:.1f} MiB (pg_database_size), {how}, built in {time.perf_counter() - start:.1f} s; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")

        surgical: dict[int, Timed] = {}
        applies: list[float] = []

        def one(rows: int, full: bool) -> Timed:
            took, run_id = apply(tmp, state, dsn, args.table, rows)
            applies.append(took)
            assert changed(dsn, args.table, rows) == rows
            t = rollback(state, tmp, run_id, full=full)
            assert changed(dsn, args.table, rows) == 0
            said = warnings(t.report) if full else t.report["reason"]
            print(f"  {rows:>7,} rows: apply {took:6.2f} s, {'full' if full else 'surgical'} rollback "
                  f"{t.wall:6.2f} s: {said}\n{'':17}steps: {steps(t.report)}")
            return t

        # Alternate surgical and full so that drift in the machine's load hits both alike; keep each one's best.
        fulls: list[Timed] = []
        for _ in range(args.repeat):
            for rows in counts:
                t = one(rows, full=False)
                if rows not in surgical or t.wall < surgical[rows].wall:
                    surgical[rows] = t
            fulls.append(one(counts[0], full=True))
        full = min(fulls, key=lambda t: t.wall)

        dumped, restored = plain_dump_restore(binaries, server, dsn, tmp)
        floor = cli_start(tmp)
        shutil.rmtree(state, ignore_errors=True)

    first = surgical[counts[0]]
    print(f"\n=== rollback of a run that updated {counts[0]:,} rows of pgbench_{args.table}, "
          f"{size / 2**20:.1f} MiB database (scale {args.scale}), best of {args.repeat} ===")
    print(f"{'':<38}{'wall s':>8}{'step s':>8}{'outside steps s':>17}")
    for rows, t in surgical.items():
        print(f"{f'surgical rollback, {rows:,} rows':<38}{t.wall:8.2f}{t.step:8.2f}{t.outside:17.2f}")
    print(f"{f'full rollback (--full), {counts[0]:,} rows':<38}{full.wall:8.2f}{full.step:8.2f}{full.outside:17.2f}")
    print(f"{'shadow --help (the CLI start alone)':<38}{floor:8.2f}")
    print(f"{'plain pg_dump -Fc':<38}{dumped:8.2f}")
    print(f"{'plain pg_restore into a new database':<38}{restored:8.2f}")
    print(f"{'plain dump + restore':<38}{dumped + restored:8.2f}")
    print(f"(apply, for scale: {min(applies):.2f}-{max(applies):.2f} s each)")
    ratio = full.wall / first.wall
    verdict = "met" if ratio >= 10 else "NOT met"
    print(f"\nsurgical is {ratio:.1f}x faster than full (wall), {full.step / max(first.step, 1e-9):.1f}x on the "
          f"in-process step; vs plain dump + restore {(dumped + restored) / first.wall:.1f}x, vs pg_restore alone "
          f"{restored / first.wall:.1f}x   target >= 10x: {verdict}")


if __name__ == "__main__":
    main()
