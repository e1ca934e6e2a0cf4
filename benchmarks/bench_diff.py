"""Row diff: shadow against reladiff (the maintained data-diff) on the same pair of databases, in the same run.

    .venv/bin/python benchmarks/bench_diff.py [--rows 1000000] [--changed 100] [--all-rows 2000000]

Two databases on one throwaway local server: a table of ``--rows`` rows and its file copy (as a shadow and its
pristine twin are made). Then:

1. ``--changed`` rows updated in the copy. shadow *captured* (what a rehearsal does: the shadow was marked before
   the change, :mod:`adapters.postgres.capture`), shadow's *full* comparison (production verification, fallbacks:
   :func:`adapters.postgres.compare.count_changed_rows` after observing both sides) and reladiff's ``diff_tables``
   over every column.
2. A table of ``--all-rows`` rows with every row updated: shadow's full comparison (one streaming pass over each
   side) against reladiff (``--no-reladiff-all`` to skip it: it reads every row of both sides through Python).

Prints seconds and ratios; nothing is asserted.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import psycopg

from adapters.postgres import capture
from adapters.postgres.cluster import LocalCluster
from adapters.postgres.compare import count_changed_rows
from adapters.postgres.observe import observe


def build(server: LocalCluster, name: str, rows: int) -> tuple[str, str]:
    """A database holding ``t`` (``rows`` rows) and its file copy; their DSNs (original, copy)."""
    dsn = server.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, n int, label text, payload jsonb, at timestamptz)")
        conn.execute("INSERT INTO t SELECT g, g %% 1000, 'row ' || g, jsonb_build_object('g', g, 'even', g %% 2 = 0), "
                     "timestamptz '2025-01-01' + g * interval '1 second' FROM generate_series(1, %s) g", [rows])
        conn.execute("VACUUM ANALYZE t")
    with server.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}_copy" TEMPLATE "{name}" STRATEGY FILE_COPY')
    return dsn, server.dsn(f"{name}_copy")


def url(server: LocalCluster, database: str) -> str:
    return f"postgresql://shadow:{server.password}@127.0.0.1:{server.port}/{database}"


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def reladiff_seconds(server: LocalCluster, a: str, b: str) -> tuple[float, int]:
    from reladiff import connect_to_table, diff_tables

    columns = ("n", "label", "payload", "at")

    def run() -> int:
        t1 = connect_to_table(url(server, a), "t", "id", thread_count=2)
        t2 = connect_to_table(url(server, b), "t", "id", thread_count=2)
        return sum(1 for _ in diff_tables(t1, t2, extra_columns=columns, max_threadpool_size=2))

    return timed(run)


def full_seconds(original: str, copy: str) -> tuple[float, int]:
    def run() -> int:
        with psycopg.connect(original, autocommit=True) as before_conn, psycopg.connect(copy, autocommit=True) as after_conn:
            before, after = observe(before_conn), observe(after_conn)
            delta = count_changed_rows(before_conn, after_conn, before, after)["public.t"]
            return delta.inserted + delta.updated + delta.deleted

    return timed(run)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changed", type=int, default=100)
    parser.add_argument("--all-rows", type=int, default=2_000_000)
    parser.add_argument("--no-reladiff-all", action="store_true")
    args = parser.parse_args()

    with LocalCluster(label="bench-diff") as server:
        print(f"building {args.rows:,} rows …", flush=True)
        original, copy = build(server, "small_change", args.rows)
        with psycopg.connect(original, autocommit=True) as conn:
            before = observe(conn)  # the pristine observation: a rehearsal has it before the action
        with psycopg.connect(copy, autocommit=True) as conn:
            mark = capture.mark(conn)
        with psycopg.connect(copy, autocommit=True) as conn:
            step = max(1, args.rows // args.changed)
            conn.execute("UPDATE t SET n = n + 1 WHERE id %% %s = 0 AND id <= %s", [step, step * args.changed])

        def captured() -> int:
            with psycopg.connect(copy, autocommit=True) as after, psycopg.connect(original, autocommit=True) as pristine:
                _, rows, how = capture.observe_changes(after, pristine, before, mark)
                assert how["public.t"] == "captured", how
                return rows["public.t"].updated

        t_captured, n_captured = timed(captured)
        t_full, n_full = full_seconds(original, copy)
        t_reladiff, n_reladiff = reladiff_seconds(server, "small_change", "small_change_copy")
        print(f"\n{args.rows:,} rows, {args.changed} updated (reladiff reports each as a - and a + line)")
        print(f"  shadow captured (rehearsal)   {t_captured:8.3f} s   {n_captured} rows")
        print(f"  shadow full comparison        {t_full:8.3f} s   {n_full} rows")
        print(f"  reladiff 0.6 diff_tables      {t_reladiff:8.3f} s   {n_reladiff} lines")
        print(f"  reladiff / captured           {t_reladiff / t_captured:8.1f}×")
        print(f"  reladiff / full               {t_reladiff / t_full:8.1f}×")

        print(f"\nbuilding {args.all_rows:,} rows …", flush=True)
        original, copy = build(server, "every_row", args.all_rows)
        with psycopg.connect(copy, autocommit=True) as conn:
            conn.execute("UPDATE t SET n = n + 1")
            conn.execute("VACUUM t")
        t_full, n_full = full_seconds(original, copy)
        print(f"\n{args.all_rows:,} rows, every one updated")
        print(f"  shadow full comparison        {t_full:8.3f} s   {n_full} rows")
        if not args.no_reladiff_all:
            t_reladiff, n_reladiff = reladiff_seconds(server, "every_row", "every_row_copy")
            print(f"  reladiff 0.6 diff_tables      {t_reladiff:8.3f} s   {n_reladiff} lines")
            print(f"  reladiff / full               {t_reladiff / t_full:8.1f}×")


if __name__ == "__main__":
    main()
