"""shadow's plan, apply and rollback on a ~1 GB pgbench production, step by step, each against the raw PostgreSQL
tool that does the same work, timed in the same run on the same machine.

    .venv/bin/python benchmarks/bench_plan_1gb.py [--scale 68] [--wide-rows 100000] [--backend local|docker|both]

Not run in CI: at the default scale it builds about 1 GB (pgbench scale 68 ≈ 1 GB of pgbench_accounts) plus a wide
table of text and jsonb columns. ``--scale 2`` makes a ~30 MB production that shows the script works.

Production is a throwaway local cluster (:class:`adapters.postgres.cluster.LocalCluster`) filled by ``pgbench -i``.
The plan adds a column to ``pgbench_branches`` and fills it in 10 of its rows (fewer when the scale is below 10);
it runs through the real CLI (``python -m shadow plan/apply/rollback … --json``) with the shadow on the chosen
backend (``docker``: the shadow is a container of SHADOW_POSTGRES_IMAGE, ``shadow-test/postgres:{major}`` unless
set — built by scripts/build-images.sh, never pulled; production stays local).

Then the same plan with ``policy.warm: 10m`` in a state dir of its own: a first plan that restores the checkpoint
and keeps it warm, three warm plans (the median is shown), a warm apply and its rollback; the warm servers are
discarded at the end.

What is printed, first, the checkpoint alone against ``pg_dump`` (best of 3 each, in turns); then per backend: one
line per step — shadow's time, the raw baseline, the ratio. The cold plan runs ``--turns`` times (3), each right
after its own ``pg_dump`` + ``pg_restore -j2``, and the turn with the median ratio fills the first four rows: this
machine's speed drifts by ±30% within minutes, and a baseline timed once at the start would measure the drift.
shadow's checkpoint and shadow-ready times are its own step timings from the plan's ``--json`` (``steps``); whole
commands are wall times measured here. Any other per-phase timings the JSON carries (a list of ``{name, seconds}``-like entries or a
``{phase: seconds}`` mapping, wherever it sits) are printed after the table, as found.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapters.postgres.binaries import find_binaries  # noqa: E402
from adapters.postgres.cluster import LocalCluster  # noqa: E402
from adapters.postgres.dsn import libpq_env  # noqa: E402

MIGRATION = """\
ALTER TABLE pgbench_branches ADD COLUMN region text;
UPDATE pgbench_branches SET region = 'region ' || (bid % 3) WHERE bid <= 10;
"""
REVERSE = "ALTER TABLE pgbench_branches DROP COLUMN region;\n"

PLAN = """\
version: 1
targets:
  bench:
    kind: postgres
    dsn: ${BENCH_DATABASE_URL}
action:
  sql: migration.sql
expect:
  bench:
    must:
      - add column public.pgbench_branches.region
    may:
      - update rows public.pgbench_branches
policy:
  backend: {backend}
"""

WIDE = """
CREATE TABLE wide (id bigint PRIMARY KEY, title text NOT NULL, body text, attrs jsonb, tags text[],
                   created timestamptz NOT NULL DEFAULT now());
INSERT INTO wide (id, title, body, attrs, tags)
SELECT g, 'title ' || g, repeat(md5(g::text), 8),
       jsonb_build_object('g', g, 'kind', g % 7, 'label', md5((g * 7)::text), 'nested', jsonb_build_object('a', g % 13)),
       ARRAY['t' || (g % 5), 't' || (g % 11)]
FROM generate_series(1, {rows}) g;
ANALYZE wide;
"""


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(args: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(args, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args[:2])} failed: {proc.stderr.strip()[-800:]}")


def build_production(server: LocalCluster, scale: int, wide_rows: int) -> str:
    dsn = server.create_database("bench_prod")
    conninfo, env = libpq_env(dsn)
    print(f"building production: pgbench -i -s {scale}, and {wide_rows:,} rows in a wide table …", flush=True)
    took = timed(lambda: run([server.binaries.path("pgbench"), "-i", "-q", "-s", str(scale), conninfo], env))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(WIDE.format(rows=wide_rows))
        conn.execute("VACUUM ANALYZE")
        row = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database())), "
                           "(SELECT count(*) FROM pgbench_branches)").fetchone()
    assert row is not None
    print(f"production: {row[0]} (pgbench -i took {took:.1f} s; {row[1]} branches)\n", flush=True)
    return dsn


def dump_and_restore(server: LocalCluster, dsn: str, folder: Path) -> tuple[float, float]:
    """The raw tools' cold plan: ``pg_dump -Fc -Z 1`` of production, then ``pg_restore -j2`` of it into an empty
    database (dropped after); each one's seconds."""
    conninfo, env = libpq_env(dsn)
    dump = folder / "raw.dump"
    tool = server.binaries.path
    dumped = timed(lambda: run([tool("pg_dump"), "--no-password", "-Fc", "-Z", "1", "-f", str(dump), "-d", conninfo],
                               env))
    with server.connect() as admin:
        admin.execute("CREATE DATABASE bench_raw_restore")
        restore_conninfo, restore_env = libpq_env(server.dsn("bench_raw_restore"))
        restored = timed(lambda: run([tool("pg_restore"), "--no-password", "-j", "2", "-d", restore_conninfo,
                                      str(dump)], restore_env))
        admin.execute("DROP DATABASE bench_raw_restore")
    return dumped, restored


def baselines(server: LocalCluster, dsn: str, folder: Path) -> dict[str, float]:
    """The raw tools, timed on the same production."""
    tool = server.binaries.path
    out: dict[str, float] = {}
    out["pg_dump"], out["pg_restore"] = dump_and_restore(server, dsn, folder)
    with server.connect() as admin:
        # A template may have no other session: psycopg's pool of one here is the admin connection to postgres.
        out["template"] = timed(lambda: admin.execute(
            "CREATE DATABASE bench_raw_copy TEMPLATE bench_prod STRATEGY FILE_COPY"))
        copy_conninfo, copy_env = libpq_env(server.dsn("bench_raw_copy"))
        psql = [tool("psql"), "-X", "-q", "--no-password", "-v", "ON_ERROR_STOP=1", "--single-transaction",
                "-d", copy_conninfo, "-f"]
        (folder / "raw-migration.sql").write_text(MIGRATION)
        (folder / "raw-reverse.sql").write_text(REVERSE)
        out["psql apply"] = timed(lambda: run([*psql, str(folder / "raw-migration.sql")], copy_env))
        out["psql reverse"] = timed(lambda: run([*psql, str(folder / "raw-reverse.sql")], copy_env))
        admin.execute("DROP DATABASE bench_raw_copy")
    return out


def checkpoint_alone(server: LocalCluster, dsn: str, folder: Path, repeat: int = 3) -> tuple[float, float]:
    """(pg_dump -Fc -Z 1, shadow's checkpoint) — best of ``repeat`` each, taken in turns, in this process. The
    checkpoint is a production's first (a state dir of its own each time: every table hashed beside the dump), with
    no shadow server starting beside it as in a plan (above: the plan's own checkpoint step)."""
    from adapters.postgres.target import PostgresTarget
    from shadow.settings import Settings
    from snapshots import Store

    conninfo, env = libpq_env(dsn)
    plain = ours = float("inf")
    for i in range(repeat):
        plain = min(plain, timed(lambda: run([server.binaries.path("pg_dump"), "--no-password", "-Fc", "-Z", "1",
                                              "-f", str(folder / "alone.dump"), "-d", conninfo], env)))
        state = folder / f"checkpoint-alone-{i}"
        target = PostgresTarget("bench", {"dsn": dsn}, Settings.from_env(state_dir=state))
        ours = min(ours, timed(lambda: target.checkpoint(Store(state / "snapshots"), f"alone-{i}")))
        shutil.rmtree(state)
    return plain, ours


def image_template() -> str:
    return os.environ.get("SHADOW_POSTGRES_IMAGE", "shadow-test/postgres:{major}")


def image_is_local(image: str) -> bool:
    """Whether ``image`` is on this machine: shadow would try to pull a missing one, and nothing may be pulled."""
    return subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0


def wait_for_spares(state: Path) -> float:
    """Seconds until the detached spare maker a warm CLI run left (``shadow prepare-warm``, shadow.spares) is done:
    the next warm run renames its copy instead of copying 1 GB — the pause a person re-running a plan takes anyway
    (with no pause, the next run stops it and copies, as before the spare maker)."""
    start = time.perf_counter()
    while subprocess.run(["pgrep", "-f", f"{state} prepare-warm"], capture_output=True).returncode == 0:
        time.sleep(0.05)
    return time.perf_counter() - start


def wait_for_removal(model: dict[str, Any]) -> float:
    """Seconds until the containers of the run ``model`` reports are gone: a CLI run leaves its shadow container's
    removal to a process of its own (adapters.docker_remove), and the next step is timed once that is done."""
    start = time.perf_counter()
    while subprocess.run(["docker", "ps", "-aq", "--filter", f"label=shadow.run-id={model.get('run_id')}"],
                         capture_output=True, text=True).stdout.strip():
        time.sleep(0.05)
    return time.perf_counter() - start


def shadow_cli(state: Path, cwd: Path, dsn: str, *args: str) -> tuple[float, dict[str, Any], str]:
    """Run ``python -m shadow … --json``; (wall seconds, the JSON, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_")}
    env.update({"BENCH_DATABASE_URL": dsn, "PYTHONPATH": str(ROOT), "TESTCONTAINERS_RYUK_DISABLED": "true",
                "SHADOW_POSTGRES_IMAGE": image_template()})
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "shadow", "--state-dir", str(state), *args, "--json"],
                          cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    try:
        model = json.loads(proc.stdout)
    except json.JSONDecodeError:
        sys.exit(f"shadow {args[0]} exited {proc.returncode} without JSON: {proc.stderr.strip()[-800:]}")
    if proc.returncode != 0:
        sys.exit(f"shadow {args[0]} exited {proc.returncode}: {model.get('reason') or proc.stderr.strip()[-800:]}")
    return wall, model, proc.stderr


# -- per-phase timings, whatever shape the JSON gives them ------------------------------------------------------
NAME_KEYS = ("step", "phase", "name", "label", "what")
TIME_KEYS = ("seconds", "duration_s", "duration", "elapsed_s", "elapsed", "wall_s", "wall", "time_s", "time", "secs",
             "s", "ms", "duration_ms", "elapsed_ms")
TIMING_WORDS = ("time", "phase", "second", "duration", "elapsed", "step")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _entry(item: dict[str, Any]) -> tuple[str, float] | None:
    """(name, seconds) of a ``{"step": "checkpoint", "target": "bench", "seconds": 1.2}``-like entry."""
    name = next((str(item[k]) for k in NAME_KEYS if isinstance(item.get(k), str)), None)
    for key in TIME_KEYS:
        seconds = _number(item.get(key))
        if name is not None and seconds is not None:
            if item.get("target"):
                name = f"{name} {item['target']}"
            return name, seconds / 1000 if key.endswith("ms") else seconds
    return None


def phase_timings(node: Any, path: str = "") -> Iterator[tuple[str, str, float]]:
    """Every (where, name, seconds) that looks like a phase timing, anywhere in ``node``."""
    if isinstance(node, list):
        entries = [_entry(x) if isinstance(x, dict) else None for x in node]
        if node and all(entries):
            for name, seconds in (e for e in entries if e):
                yield path or "(top)", name, seconds
        else:
            for i, item in enumerate(node):
                yield from phase_timings(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        numbers = {k: _number(v) for k, v in node.items()}
        if node and all(v is not None for v in numbers.values()) and any(w in path.lower() for w in TIMING_WORDS):
            for name, value in numbers.items():
                assert value is not None
                yield path, name, value / 1000 if path.lower().endswith("ms") else value
            return
        for key, value in node.items():
            yield from phase_timings(value, f"{path}.{key}" if path else str(key))


def step_seconds(model: dict[str, Any], step: str) -> float | None:
    """shadow's own time for ``step`` (summed over targets) from the report's ``steps``."""
    found = [s.get("seconds") for s in model.get("steps") or [] if isinstance(s, dict) and s.get("step") == step]
    numbers = [n for n in (_number(f) for f in found) if n is not None]
    return sum(numbers) if numbers else None


# -- one backend ----------------------------------------------------------------------------------------------
def bench_backend(backend: str, dsn: str, raw: dict[str, float], folder: Path, major: int,
                  raw_turn: Callable[[], tuple[float, float]], turns: int) -> None:
    image = image_template().replace("{major}", str(major))
    if backend == "docker" and not image_is_local(image):
        print(f"backend docker: skipped, image {image} is not on this machine (scripts/build-images.sh builds it; "
              "set SHADOW_POSTGRES_IMAGE to use another)\n")
        return
    work = folder / backend
    work.mkdir()
    (work / "migration.sql").write_text(MIGRATION)
    (work / "shadow.yaml").write_text(PLAN.replace("{backend}", backend))
    state = work / "state"
    # Cold plans in turns with the raw tools' (pg_dump, then pg_restore -j2), each shadow plan right after its own
    # baseline: this machine's speed drifts by ±30% over minutes. The turn whose ratio is the median is shown.
    removals: list[float] = []
    cold: list[tuple[float, float, float, dict[str, Any]]] = []  # (shadow's wall, raw pg_dump, raw pg_restore, JSON)
    for turn in range(turns):
        dumped, restored = raw_turn()
        wall, model, _ = shadow_cli(work / f"cold-{turn}", work, dsn, "plan", "-f", "shadow.yaml")
        removals += [wait_for_removal(model)] if backend == "docker" else []
        cold.append((wall, dumped, restored, model))
    ranked = sorted(cold, key=lambda c: c[0] / (c[1] + c[2]))
    plan_wall, turn_dump, turn_restore, plan = ranked[len(ranked) // 2]
    apply_wall, applied, _ = shadow_cli(state, work, dsn, "apply", "-f", "shadow.yaml")
    removals += [wait_for_removal(applied)] if backend == "docker" else []
    rollback_wall, rolled_back, _ = shadow_cli(state, work, dsn, "rollback", str(applied["run_id"]), "-f",
                                               "shadow.yaml")

    # The same plan with policy.warm: the first run restores and keeps its copy, the next ones clone it.
    (work / "warm.yaml").write_text(PLAN.replace("{backend}", backend) + "  warm: 10m\n")
    warm_state = work / "warm-state"
    try:
        keep_wall, _, _ = shadow_cli(warm_state, work, dsn, "plan", "-f", "warm.yaml")
        spare_waits = [wait_for_spares(warm_state)]
        warm_runs = []
        for _ in range(3):
            warm_runs.append(shadow_cli(warm_state, work, dsn, "plan", "-f", "warm.yaml"))
            spare_waits.append(wait_for_spares(warm_state))
        warm_apply_wall, warm_applied, _ = shadow_cli(warm_state, work, dsn, "apply", "-f", "warm.yaml")
        shadow_cli(warm_state, work, dsn, "rollback", str(warm_applied["run_id"]), "-f", "warm.yaml")
    finally:
        from adapters.postgres import warm

        warm.reap(warm_state / "warm" / "postgres", everything=True)
    warm_wall, warm_plan, _ = sorted(warm_runs, key=lambda r: r[0])[1]  # the median of three
    assert all(t["checkpoint"]["warm"]["reused"] for t in warm_plan["targets"]), warm_plan["targets"]
    warm_ready = step_seconds(warm_plan, "shadow")

    ready = step_seconds(plan, "shadow")
    # (step, shadow's seconds, what the raw baseline is, its seconds); a step with a second baseline repeats
    # shadow's time on a row of its own, unnamed.
    rows: list[tuple[str, float | None, str, float]] = [
        ("checkpoint", step_seconds(plan, "checkpoint"), "pg_dump -Fc -Z 1", turn_dump),
        ("shadow ready", ready, "pg_restore -j2 into an empty database", turn_restore),
        ("", ready, "CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY", raw["template"]),
        ("shadow plan (whole command)", plan_wall, "pg_dump + pg_restore -j2", turn_dump + turn_restore),
        ("shadow apply (whole command)", apply_wall, "psql -1 -f migration.sql (on a copy)", raw["psql apply"]),
        ("shadow rollback (whole command)", rollback_wall, "psql -1 -f reverse.sql (on a copy)", raw["psql reverse"]),
        ("first plan, policy.warm (keeps it)", keep_wall, "pg_dump + pg_restore -j2", raw["pg_dump"] + raw["pg_restore"]),
        ("warm plan (whole command)", warm_wall, "pg_dump + pg_restore -j2", raw["pg_dump"] + raw["pg_restore"]),
        ("", warm_wall, "shadow plan, cold (above, same run)", plan_wall),
        ("shadow ready, warm", warm_ready, "pg_restore -j2 into an empty database", raw["pg_restore"]),
        ("", warm_ready, "CREATE DATABASE … TEMPLATE … STRATEGY FILE_COPY", raw["template"]),
        ("warm apply (whole command)", warm_apply_wall, "shadow apply, cold (above, same run)", apply_wall),
    ]
    print(f"backend {backend} (shadow's backend as reported: {plan.get('backend', {}).get('name', '?')})")
    header = f"{'step':<36} | {'shadow':>9} | {'raw baseline in the same run':<48} | {'raw':>8} | {'ratio':>8}"
    print(header)
    print("-" * len(header))
    for step, ours, what, base in rows:
        ours_text = "" if not step else (f"{ours:8.2f}s" if ours is not None else "      n/a")
        ratio = f"{ours / base:7.2f}x" if ours is not None and base > 0 else ""
        print(f"{step:<36} | {ours_text:>9} | {what:<48} | {base:7.2f}s | {ratio:>8}")
    print(f"(each warm run above came once the spare maker its predecessor left had finished: "
          f"{', '.join(f'{w:.1f}' for w in spare_waits)} s after each run)")
    print(f"(the first four rows: the median of {turns} cold plans, each right after its own pg_dump + pg_restore; "
          f"their ratios: {', '.join(f'{c[0] / (c[1] + c[2]):.2f}x' for c in cold)})")
    if removals:
        print(f"(the cold plans' and apply's shadow containers were removed {', '.join(f'{w:.1f}' for w in removals)} "
              "s after each run, by the process each left for it; the next step was timed after that)")
    for title, model in (("plan", plan), ("warm plan", warm_plan), ("apply", applied), ("rollback", rolled_back)):
        found = list(phase_timings(model))
        if found:
            print(f"\nshadow {title}: per-phase timings in its --json")
            for where, name, seconds in found:
                print(f"  {where:<24} {name:<40} {seconds:8.2f}s")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=68, help="pgbench scale factor (68 ≈ 1 GB; default 68)")
    parser.add_argument("--wide-rows", type=int, default=100_000, help="rows in the wide text/jsonb table")
    parser.add_argument("--backend", choices=("local", "docker", "both"), default="local")
    parser.add_argument("--turns", type=int, default=3,
                        help="cold plans per backend, each after its own raw pg_dump + pg_restore (default 3)")
    args = parser.parse_args()
    backends = ["local", "docker"] if args.backend == "both" else [args.backend]
    # The oldest local PostgreSQL, as the tests' production: the shadow then runs the same major (the closest
    # client tools at least as new), locally or in the shadow-test/postgres:<major> image.
    binaries = find_binaries()[-1]
    with LocalCluster(label="bench-plan-1gb", binaries=binaries) as server, \
            tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        print(f"production: a local PostgreSQL {binaries.major} cluster ({binaries.bindir})")
        dsn = build_production(server, args.scale, args.wide_rows)
        raw = baselines(server, dsn, Path(tmp))
        plain, ours = checkpoint_alone(server, dsn, Path(tmp))
        print(f"checkpoint alone (a production's first: every table hashed beside pg_dump; no shadow server starting "
              f"beside it): {ours:.2f} s against pg_dump -Fc -Z 1 {plain:.2f} s — {ours / plain:.2f}x (best of 3 "
              f"each, in turns)\n")
        for backend in backends:
            bench_backend(backend, dsn, raw, Path(tmp), binaries.major,
                          lambda: dump_and_restore(server, dsn, Path(tmp)), args.turns)


if __name__ == "__main__":
    main()
