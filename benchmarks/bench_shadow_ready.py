"""Time to a READY shadow of a ~100 MB production database, per backend, against raw PostgreSQL in the same run.

    .venv/bin/python benchmarks/bench_shadow_ready.py [--mb 100] [-n 3] [--major 15] [--backends local,docker]
                                                      [--settle 1.0] [--no-experiments]

"Ready" means: the checkpoint is restored and a connection to the working database is accepted (``SELECT 1``).

- ``local``:  ``target.shadow(checkpoint, store, run_id, "local")`` entered until it yields, plus the first connection,
  vs plain ``initdb`` + ``pg_ctl start`` (as the ``postgres`` OS user, exactly as ``cluster.py`` runs them, with
  the same throwaway-cluster settings) + ``createdb`` + ``pg_restore`` of the same archive + the first connection.
- ``docker``: the same with ``"docker"`` vs a plain ``docker run`` of the same image (docker SDK, ports published on
  127.0.0.1, the same durability-off flags) polled with psycopg until it accepts, + ``createdb`` + ``pg_restore``.

Production is a LocalCluster holding a small shop (customers, products, orders, order_items, events: text,
numeric, enum, jsonb, B-tree and GIN indexes, foreign keys, a view) grown until ``pg_database_size`` reaches
``--mb`` MiB. It is checkpointed once; every run restores that one archive. Each number is the best of ``-n``
runs; shadow and baseline runs alternate, each after ``sync`` and a ``--settle`` pause, so drift hits both
alike. Shadow's time is split into pieces by wrapping (never editing) the functions it calls; the wrappers cost
microseconds. Teardown is not counted.

Two overhead figures are printed: best shadow minus best baseline (what the issue asks for; on a busy machine the
phases both sides share — server start, restore — swing by several tenths of a second), and "shadow-only work":
the pieces the baseline never does (archive sha256, pristine template copy, observation + fidelity check, action
DSN), which does not depend on that noise.

With ``--experiments`` (the default) the last run of each backend also measures, inside the ready shadow and
outside the timed part, what the overhead could be cut to: ``CREATE DATABASE … STRATEGY FILE_COPY`` vs the
default ``WAL_LOG``, the observation without its content hashes, ``pg_restore -j``; and for docker,
``ContainerServer.start`` with testcontainers' ``docker exec psql`` polling vs polling from the host.
"""

from __future__ import annotations

import os

# testcontainers reads these at import: set them before anything imports it (callers may override them).
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("SHADOW_POSTGRES_IMAGE", "shadow-test/postgres:{major}")

import argparse  # noqa: E402
import functools  # noqa: E402
import math  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402
from psycopg.conninfo import make_conninfo  # noqa: E402

from adapters.docker import engine_answers  # noqa: E402
from adapters.postgres import target as target_mod  # noqa: E402
from adapters.postgres.binaries import PgBinaries, binaries_for, configured_bindir  # noqa: E402
from adapters.postgres.cluster import LocalCluster, _unprivileged_user, free_port  # noqa: E402
from adapters.postgres.container import DURABILITY_OFF, ContainerServer  # noqa: E402
from adapters.postgres.observe import observe  # noqa: E402
from adapters.postgres.shadowcopy import PgShadow
from adapters.postgres.target import PostgresTarget  # noqa: E402
from shadow.settings import Settings  # noqa: E402
from snapshots import Store  # noqa: E402

DBNAME = "shop"
SUPERUSER = "shadow"

# --------------------------------------------------------------------------------------------------------------
# Production: a small shop, grown to the requested size
# --------------------------------------------------------------------------------------------------------------
SCHEMA = """
CREATE TYPE order_status AS ENUM ('pending', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded');
CREATE TABLE customers (
    id bigint PRIMARY KEY,
    email text NOT NULL UNIQUE,
    full_name text NOT NULL,
    country char(2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    marketing_opt_in boolean NOT NULL DEFAULT false,
    profile jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE products (
    id integer PRIMARY KEY,
    sku text NOT NULL UNIQUE,
    title text NOT NULL,
    description text,
    price numeric(10, 2) NOT NULL CHECK (price >= 0),
    attributes jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX products_attributes_gin ON products USING gin (attributes);
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer_id bigint NOT NULL REFERENCES customers (id),
    status order_status NOT NULL,
    placed_at timestamptz NOT NULL,
    total numeric(12, 2) NOT NULL,
    currency char(3) NOT NULL DEFAULT 'EUR',
    shipping_address jsonb,
    note text
);
CREATE INDEX orders_customer_idx ON orders (customer_id);
CREATE INDEX orders_status_placed_idx ON orders (status, placed_at DESC);
CREATE TABLE order_items (
    order_id bigint NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line smallint NOT NULL,
    product_id integer NOT NULL REFERENCES products (id),
    quantity integer NOT NULL CHECK (quantity > 0),
    unit_price numeric(10, 2) NOT NULL,
    PRIMARY KEY (order_id, line)
);
CREATE INDEX order_items_product_idx ON order_items (product_id);
CREATE TABLE events (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    customer_id bigint,
    kind text NOT NULL,
    payload jsonb NOT NULL
);
CREATE INDEX events_occurred_idx ON events (occurred_at);
CREATE INDEX events_customer_kind_idx ON events (customer_id, kind);
CREATE VIEW customer_revenue AS
    SELECT c.id, c.email, sum(o.total) AS revenue
    FROM customers c JOIN orders o ON o.customer_id = c.id
    WHERE o.status IN ('paid', 'shipped', 'delivered')
    GROUP BY c.id, c.email;
COMMENT ON TABLE events IS 'append-only audit trail';
"""

WORDS = ("ARRAY['oak','steel','linen','walnut','matte','compact','premium','wireless','ergonomic','vintage',"
         "'organic','modular','portable','classic','durable','lightweight','handmade','recycled','smart','deluxe',"
         "'chair','lamp','desk','shelf','mug','kettle','backpack','jacket','sneaker','blanket','speaker','cable',"
         "'with','and','for','the','of','in','by','from']")


def _text(seed: str, words: int) -> str:
    """SQL for a sentence of ``words`` pseudo-random words, deterministic in ``seed`` (an SQL int expression)."""
    return (f"(SELECT string_agg(({WORDS})[1 + abs(hashint8(({seed})::bigint * 131 + w)) % 40], ' ') "
            f"FROM generate_series(1, {words}) w)")


PRODUCTS = f"""
INSERT INTO products (id, sku, title, description, price, attributes, created_at)
SELECT g, 'SKU-' || lpad(g::text, 7, '0'), initcap({_text('g', 4)}), {_text('g + 7', 60)},
       round((5 + abs(hashint4(g)) % 50000 / 100.0)::numeric, 2),
       jsonb_build_object('color', (ARRAY['red','green','blue','black','white'])[1 + g % 5],
                          'weight_g', 100 + g % 4000, 'tags', jsonb_build_array('t' || g % 17, 't' || g % 31),
                          'dimensions', jsonb_build_object('w', g % 90, 'h', g % 70, 'd', g % 50)),
       timestamptz '2020-01-01' + (g % 1500) * interval '1 day'
FROM generate_series(1, %(n)s) g
"""

CUSTOMERS = f"""
INSERT INTO customers (id, email, full_name, country, created_at, marketing_opt_in, profile)
SELECT g, 'user' || g || '@' || (ARRAY['example.com','mail.test','shop.invalid'])[1 + g % 3],
       initcap({_text('g * 3', 2)}),
       (ARRAY['DE','FR','US','GB','NL','ES','IT','SE','PL','JP'])[1 + g % 10],
       timestamptz '2019-01-01' + (g % 2000) * interval '1 day' + (g % 86400) * interval '1 second',
       g % 3 = 0,
       jsonb_build_object('phone', '+49 ' || (100000000 + abs(hashint4(g)) % 899999999),
                          'language', (ARRAY['de','en','fr'])[1 + g % 3],
                          'newsletter', jsonb_build_object('weekly', g % 2 = 0, 'since', 2015 + g % 9),
                          'bio', {_text('g * 5', 12)})
FROM generate_series(%(lo)s, %(hi)s) g
"""

ORDERS = f"""
INSERT INTO orders (id, customer_id, status, placed_at, total, shipping_address, note)
SELECT g, %(clo)s + abs(hashint8(g)) % (%(chi)s - %(clo)s + 1),
       (enum_range(NULL::order_status))[1 + g % 6],
       timestamptz '2021-01-01' + (g % 1200) * interval '1 day' + (g % 86400) * interval '1 second',
       round((10 + abs(hashint4(g::int)) % 100000 / 100.0)::numeric, 2),
       jsonb_build_object('street', g % 300 || ' ' || initcap({_text('g', 2)}) || ' Street',
                          'city', (ARRAY['Berlin','Paris','Austin','Leeds','Utrecht','Malmo'])[1 + g % 6],
                          'zip', lpad((g % 99999)::text, 5, '0')),
       CASE WHEN g % 4 = 0 THEN {_text('g * 11', 8)} END
FROM generate_series(%(lo)s, %(hi)s) g
"""

ORDER_ITEMS = """
INSERT INTO order_items (order_id, line, product_id, quantity, unit_price)
SELECT o, l, 1 + abs(hashint8(o * 10 + l)) % %(products)s, 1 + (o + l) % 5,
       round((1 + abs(hashint8(o * 7 + l)) % 30000 / 100.0)::numeric, 2)
FROM generate_series(%(lo)s, %(hi)s) o, generate_series(1, 1 + (o % 4)::int) l
"""

EVENTS = """
INSERT INTO events (occurred_at, customer_id, kind, payload)
SELECT timestamptz '2022-01-01' + g * interval '7 seconds', %(clo)s + g % (%(chi)s - %(clo)s + 1),
       (ARRAY['page_view','add_to_cart','checkout','login','search','review'])[1 + g % 6],
       jsonb_build_object('session', md5(g::text), 'path', '/p/' || (g % 5000),
                          'agent', (ARRAY['Mozilla/5.0 (X11; Linux x86_64)','Mozilla/5.0 (Macintosh)',
                                          'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)'])[1 + g % 3],
                          'referrer', CASE WHEN g % 3 = 0 THEN 'https://search.example/?q=' || g % 977 END,
                          'ms', g % 2500)
FROM generate_series(%(lo)s, %(hi)s) g
"""

N_PRODUCTS = 5000
ORDERS_PER_CUSTOMER = 3
EVENTS_PER_CUSTOMER = 4


def db_size(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


def fill(template: str, **values: int) -> str:
    """The SQL with its ``%(name)s`` placeholders replaced by integers (no driver-side parameters, so ``%`` is
    PostgreSQL's modulo everywhere)."""
    for name, value in values.items():
        template = template.replace(f"%({name})s", str(int(value)))
    return template


def add_customers(conn: psycopg.Connection, first: int, count: int) -> None:
    """``count`` customers with their orders, order lines and events."""
    last = first + count - 1
    olo, ohi = (first - 1) * ORDERS_PER_CUSTOMER + 1, last * ORDERS_PER_CUSTOMER
    with conn.transaction():
        conn.execute(fill(CUSTOMERS, lo=first, hi=last))
        conn.execute(fill(ORDERS, lo=olo, hi=ohi, clo=first, chi=last))
        conn.execute(fill(ORDER_ITEMS, lo=olo, hi=ohi, products=N_PRODUCTS))
        conn.execute(fill(EVENTS, lo=(first - 1) * EVENTS_PER_CUSTOMER + 1, hi=last * EVENTS_PER_CUSTOMER,
                          clo=first, chi=last))


def build_production(dsn: str, target_bytes: int) -> dict[str, Any]:
    """Create the shop schema and add customers (with their orders, lines, events) until the size is reached."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute(fill(PRODUCTS, n=N_PRODUCTS))
        size, customers = db_size(conn), 0
        per_customer = 0.0
        step = 2000
        while size < target_bytes:
            add_customers(conn, customers + 1, step)
            grown = db_size(conn)
            customers += step
            per_customer = (grown - size) / step if grown > size else per_customer or 2000.0
            size = grown
            remaining = target_bytes - size
            step = max(500, min(40_000, math.ceil(remaining / per_customer))) if remaining > 0 else 0
        conn.execute("VACUUM ANALYZE")
        tables = {name: (int(rows), pretty) for name, rows, pretty in conn.execute(
            "SELECT c.relname, c.reltuples::bigint, pg_size_pretty(pg_total_relation_size(c.oid)) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r' "
            "ORDER BY pg_total_relation_size(c.oid) DESC")}
        return {"size": db_size(conn), "tables": tables}


# --------------------------------------------------------------------------------------------------------------
# Timing shadow's pieces by wrapping what it calls
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Probe:
    """Records (name, start, end) for every call of each wrapped function while ``active``."""

    events: list[tuple[str, float, float]] = field(default_factory=list)
    active: bool = False
    _undo: list[tuple[Any, str, Any]] = field(default_factory=list)

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if self.active:
                    self.events.append((name, start, time.perf_counter()))

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()

    @contextmanager
    def recording(self) -> Iterator[None]:
        self.events.clear()
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def first(self, name: str) -> tuple[float, float] | None:
        for n, s, e in self.events:
            if n == name:
                return s, e
        return None

    def total(self, name: str) -> float:
        return sum(e - s for n, s, e in self.events if n == name)


def install_probe() -> Probe:
    probe = Probe()
    probe.wrap(Store, "open_verified", "verify")
    probe.wrap(PostgresTarget, "binaries", "tools")
    probe.wrap(LocalCluster, "start", "server")
    probe.wrap(ContainerServer, "start", "server")
    probe.wrap(PgShadow, "_build", "build")
    probe.wrap(target_mod, "restore_into_empty", "restore")  # target.py calls it through its module namespace
    probe.wrap(PgShadow, "_action_dsn", "action_dsn")
    probe.wrap(target_mod, "observe", "observe")
    probe.wrap(PgShadow, "_fidelity", "fidelity")
    try:
        from testcontainers.core import wait_strategies

        probe.wrap(wait_strategies.ExecWaitStrategy, "wait_until_ready", "tc_wait")
    except ImportError:
        pass
    return probe


# The pieces of a ready shadow, in the order they happen. Derived ones come from the wrapped calls' timestamps.
SHADOW_PIECES = (
    ("verify", "verify archive sha256 (open_verified)"),
    ("tools", "find client tools"),
    ("server", "server start"),
    ("tc_wait", "  of which testcontainers readiness wait"),
    ("create_db", "roles + CREATE DATABASE + owner"),
    ("restore", "pg_restore (restore_into_empty)"),
    ("pristine", "pristine copy (CREATE DATABASE ... TEMPLATE)"),
    ("action_dsn", "action DSN (role login)"),
    ("observe", "observe pristine (catalog + row hashes)"),
    ("fidelity", "fidelity check (fingerprint compare)"),
    ("connect", "first connection (SELECT 1)"),
    ("other", "other (Python, connections, glue)"),
)


def shadow_pieces(probe: Probe, total: float, connect: float) -> dict[str, float]:
    pieces = {name: probe.total(name) for name in ("verify", "tools", "server", "tc_wait", "restore", "action_dsn",
                                                    "observe", "fidelity")}
    build, restore = probe.first("build"), probe.first("restore")
    if build and restore:
        pieces["create_db"] = restore[0] - build[0]
        pieces["pristine"] = build[1] - restore[1]
    pieces["connect"] = connect
    counted = sum(v for k, v in pieces.items() if k != "tc_wait")
    pieces["other"] = max(0.0, total - counted)
    return pieces


# --------------------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    total: float
    pieces: dict[str, float]
    teardown: float = 0.0
    experiments: dict[str, float] = field(default_factory=dict)


def first_connection(dsn: str) -> float:
    start = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT 1").fetchone()
    return time.perf_counter() - start


def run_shadow(target: PostgresTarget, checkpoint: Any, store: Store, backend: str, run_id: str, probe: Probe,
               tools: PgBinaries, archive: Path, experiments: bool) -> Run:
    manager = target.shadow(checkpoint, store, run_id, backend)
    with probe.recording():
        start = time.perf_counter()
        shadow = manager.__enter__()
    try:
        yielded = time.perf_counter()
        connect = first_connection(shadow.dsn)
        total = yielded - start + connect
        if shadow.fidelity or shadow.warnings:
            print(f"  ! shadow reports fidelity={shadow.fidelity[:3]} warnings={shadow.warnings[:3]}")
        run = Run(total, shadow_pieces(probe, total, connect))
        if experiments:
            run.experiments = measure_experiments(shadow, tools, archive)
    except BaseException:
        manager.__exit__(*sys.exc_info())
        raise
    down = time.perf_counter()
    manager.__exit__(None, None, None)
    run.teardown = time.perf_counter() - down
    return run


def client_run(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} failed: {proc.stderr.strip()[:500]}")


def client_env(password: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PGPASSWORD": password}


def createdb_and_restore(tools: PgBinaries, port: int, password: str, archive: Path,
                         pieces: dict[str, float]) -> None:
    env = client_env(password)
    conn = ["-h", "127.0.0.1", "-p", str(port), "-U", SUPERUSER, "--no-password"]
    t = time.perf_counter()
    client_run([tools.path("createdb"), *conn, DBNAME], env)
    pieces["createdb"] = time.perf_counter() - t
    t = time.perf_counter()
    client_run([tools.path("pg_restore"), *conn, "-d", DBNAME, str(archive)], env)
    pieces["pg_restore"] = time.perf_counter() - t


def baseline_dsn(port: int, password: str) -> str:
    return make_conninfo(host="127.0.0.1", port=port, dbname=DBNAME, user=SUPERUSER, password=password,
                         connect_timeout=10)


def run_local_baseline(tools: PgBinaries, archive: Path) -> Run:
    """initdb + pg_ctl start + createdb + pg_restore + a connection, run the way cluster.py runs them."""
    user = _unprivileged_user()
    extra: dict[str, Any] = {}
    if user is not None:
        extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}

    def as_server_user(args: list[str]) -> None:
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120, **extra)
        if proc.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {proc.stderr.strip()[:500]}")

    password = secrets.token_urlsafe(18)
    pieces: dict[str, float] = {}
    root = Path(tempfile.mkdtemp(prefix="shadow-bench-baseline-"))
    datadir, sockdir, pwfile = root / "data", root / "sock", root / "pw"
    started = False
    try:
        start = time.perf_counter()
        sockdir.mkdir()
        pwfile.write_text(password + "\n")
        if user is not None:
            for p in (root, sockdir, pwfile):
                os.chown(p, user.pw_uid, user.pw_gid)
        as_server_user([tools.path("initdb"), "-D", str(datadir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                        "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
        with open(datadir / "postgresql.conf", "a") as conf:  # the same settings as a shadow cluster
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{sockdir}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 50\nshared_buffers = 64MB\n")
        pieces["initdb"] = time.perf_counter() - start
        t = time.perf_counter()
        port = free_port()
        as_server_user([tools.path("pg_ctl"), "start", "-w", "-t", "60", "-D", str(datadir),
                        "-l", str(root / "server.log"), "-o", f"-p {port}"])
        started = True
        pieces["start"] = time.perf_counter() - t
        createdb_and_restore(tools, port, password, archive, pieces)
        pieces["connect"] = first_connection(baseline_dsn(port, password))
        total = time.perf_counter() - start
        pieces["other"] = max(0.0, total - sum(pieces.values()))
        down = time.perf_counter()
    finally:
        if started:
            subprocess.run([tools.path("pg_ctl"), "stop", "-m", "immediate", "-w", "-D", str(datadir)],
                           capture_output=True, env=env, timeout=60, **extra)
        shutil.rmtree(root, ignore_errors=True)
    return Run(total, pieces, teardown=time.perf_counter() - down)


def run_docker_baseline(client: Any, image: str, tools: PgBinaries, archive: Path) -> Run:
    """docker run of the image + poll until it accepts a connection + createdb + pg_restore + a connection."""
    password = secrets.token_urlsafe(18)
    pieces: dict[str, float] = {}
    container = None
    try:
        start = time.perf_counter()
        container = client.containers.run(
            image, command=DURABILITY_OFF, detach=True,
            environment={"POSTGRES_USER": SUPERUSER, "POSTGRES_PASSWORD": password, "POSTGRES_DB": "postgres"},
            ports={"5432/tcp": ("127.0.0.1", None)}, labels={"shadow.role": "bench-baseline"},
        )
        container.reload()
        port = int(container.ports["5432/tcp"][0]["HostPort"])
        pieces["container"] = time.perf_counter() - start
        t = time.perf_counter()
        dsn = make_conninfo(host="127.0.0.1", port=port, dbname="postgres", user=SUPERUSER, password=password,
                            connect_timeout=2)
        deadline = time.monotonic() + 120
        while True:  # the entrypoint's init server listens on a socket only: a TCP answer is the real server
            try:
                with psycopg.connect(dsn) as conn:
                    conn.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        pieces["wait"] = time.perf_counter() - t
        createdb_and_restore(tools, port, password, archive, pieces)
        pieces["connect"] = first_connection(baseline_dsn(port, password))
        total = time.perf_counter() - start
        pieces["other"] = max(0.0, total - sum(pieces.values()))
    finally:
        down = time.perf_counter()
        if container is not None:
            container.remove(force=True)
    return Run(total, pieces, teardown=time.perf_counter() - down)


BASELINE_PIECES = {
    "local": (("initdb", "initdb (+ conf)"), ("start", "pg_ctl start -w"), ("createdb", "createdb"),
              ("pg_restore", "pg_restore"), ("connect", "first connection (SELECT 1)"),
              ("other", "other (Python, glue)")),
    "docker": (("container", "docker run (create + start)"), ("wait", "wait until a connection is accepted"),
               ("createdb", "createdb"), ("pg_restore", "pg_restore"), ("connect", "first connection (SELECT 1)"),
               ("other", "other (Python, glue)")),
}


# --------------------------------------------------------------------------------------------------------------
# What-if measurements, inside a ready shadow (not counted)
# --------------------------------------------------------------------------------------------------------------
def timed_sql(conn: psycopg.Connection, query: sql.Composed) -> float:
    start = time.perf_counter()
    conn.execute(query)
    return time.perf_counter() - start


def measure_experiments(shadow: PgShadow, tools: PgBinaries, archive: Path) -> dict[str, float]:
    """Alternatives to shadow's expensive steps, each timed several times on the ready shadow's own server."""
    out: dict[str, float] = {}
    server = shadow.server
    with server.connect() as conn:
        major = int(conn.info.server_version) // 10000
        strategies = ("WAL_LOG", "FILE_COPY") if major >= 15 else ("",)
        for _ in range(3):
            for strategy in strategies:
                name = f"bench_copy_{strategy.lower() or 'default'}"
                clause = sql.SQL(" STRATEGY {}").format(sql.SQL(strategy)) if strategy else sql.SQL("")
                took = timed_sql(conn, sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
                    sql.Identifier(name), sql.Identifier(shadow.pristine), clause))
                key = f"template_{strategy or 'default'}"
                out[key] = min(out.get(key, math.inf), took)
                conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
    with shadow.connect_pristine() as conn:
        for _ in range(2):
            start = time.perf_counter()
            observe(conn, with_data=False)
            out["observe_catalog_only"] = min(out.get("observe_catalog_only", math.inf), time.perf_counter() - start)
            start = time.perf_counter()
            observe(conn)
            out["observe_full"] = min(out.get("observe_full", math.inf), time.perf_counter() - start)
    # pg_restore serial vs parallel into fresh databases, each followed at once by a template copy of it (as
    # shadow does: the restored pages are still dirty), alternating the copy strategy.
    env = client_env(server.password)
    jobs = max(2, min(4, os.cpu_count() or 2))
    for round_ in range(2):
        for index, j in enumerate((1, jobs)):
            name, copy = f"bench_restore_j{j}", f"bench_restore_j{j}_copy"
            with server.connect() as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            start = time.perf_counter()
            client_run([tools.path("pg_restore"), "-h", str(getattr(server, "host", "127.0.0.1")), "-p",
                        str(server.port), "-U", SUPERUSER, "--no-password", "-j", str(j), "-d", name, str(archive)],
                       env)
            out[f"restore_j{j}"] = min(out.get(f"restore_j{j}", math.inf), time.perf_counter() - start)
            strategy = strategies[(round_ + index) % len(strategies)]
            clause = sql.SQL(" STRATEGY {}").format(sql.SQL(strategy)) if strategy else sql.SQL("")
            with server.connect() as conn:
                took = timed_sql(conn, sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
                    sql.Identifier(copy), sql.Identifier(name), clause))
                key = f"fresh_template_{strategy or 'default'}"
                out[key] = min(out.get(key, math.inf), took)
                for db in (copy, name):
                    conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(db)))
    out["jobs"] = jobs
    return out


def _poll_from_host(container: Any) -> None:
    """A replacement for PostgresContainer._connect: psycopg from the host every 0.05 s, as the baseline does."""
    dsn = make_conninfo(host=container.get_container_host_ip(), port=int(container.get_exposed_port(container.port)),
                        dbname=container.dbname, user=container.username, password=container.password,
                        connect_timeout=2)
    deadline = time.monotonic() + 120
    while True:
        try:
            with psycopg.connect(dsn) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def measure_container_polling(image: str, major: int, repeat: int, settle: float) -> dict[str, float]:
    """ContainerServer.start as shipped (testcontainers runs `psql` by `docker exec` every TC_POOLING_INTERVAL,
    default 1 s), the same polling every 0.1 s (timeout kept: max_tries scaled up), and the same start with
    the readiness check done from the host with psycopg every 0.05 s."""
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.core.config import testcontainers_config as tc

    saved = (tc.sleep_time, tc.max_tries)
    original_connect = PostgresContainer.__dict__["_connect"]
    out: dict[str, float] = {}
    try:
        for i in range(repeat):
            for label in ("poll_default", "poll_0.1s", "poll_host"):
                interval = 0.1 if label == "poll_0.1s" else saved[0]
                tc.sleep_time, tc.max_tries = interval, int(saved[0] * saved[1] / interval)
                setattr(PostgresContainer, "_connect", _poll_from_host if label == "poll_host" else original_connect)
                pause(settle)
                start = time.perf_counter()
                with ContainerServer(f"bench-poll-{i}", image, major):
                    took = time.perf_counter() - start
                out[label] = min(out.get(label, math.inf), took)
    finally:
        tc.sleep_time, tc.max_tries = saved
        setattr(PostgresContainer, "_connect", original_connect)
    out["interval"] = saved[0]
    return out


# --------------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------------
def best(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.total)


def pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:+6.1f}%" if whole else "   n/a"


SHADOW_ONLY = ("verify", "tools", "pristine", "action_dsn", "observe", "fidelity")


def report_backend(backend: str, shadows: list[Run], baselines: list[Run]) -> dict[str, float]:
    s, b = best(shadows), best(baselines)
    k = len(shadows)
    print(f"\n--- {backend}: where the time goes (pieces of the best run; min and mean over {k} runs) ---")
    print(f"  {'shadow piece':<48}{'best run':>9}{'min':>8}{'mean':>8}")
    for key, label in SHADOW_PIECES:
        if key not in s.pieces or (key == "tc_wait" and s.pieces[key] == 0):
            continue
        values = [r.pieces.get(key, 0.0) for r in shadows]
        print(f"  {label:<48}{s.pieces[key]:9.2f}{min(values):8.2f}{sum(values) / k:8.2f}")
    print(f"  {'= shadow ready':<48}{s.total:9.2f}{s.total:8.2f}{sum(r.total for r in shadows) / k:8.2f}"
          f"   (teardown {s.teardown:.2f} s, not counted)")
    print(f"  {'baseline piece':<48}{'best run':>9}{'min':>8}{'mean':>8}")
    for key, label in BASELINE_PIECES[backend]:
        values = [r.pieces.get(key, 0.0) for r in baselines]
        print(f"  {label:<48}{b.pieces.get(key, 0.0):9.2f}{min(values):8.2f}{sum(values) / len(values):8.2f}")
    print(f"  {'= baseline ready':<48}{b.total:9.2f}{b.total:8.2f}"
          f"{sum(r.total for r in baselines) / len(baselines):8.2f}   (teardown {b.teardown:.2f} s, not counted)")

    # Shadow's overhead, piece by piece, as a share of the baseline (best run vs best run).
    sp, bp = s.pieces, b.pieces
    start_base = bp.get("initdb", 0.0) + bp.get("start", 0.0) + bp.get("container", 0.0) + bp.get("wait", 0.0)
    rows = [
        ("server start vs the baseline's", sp.get("server", 0.0) - start_base),
        ("database creation vs createdb", sp.get("create_db", 0.0) - bp.get("createdb", 0.0)),
        ("restore vs plain pg_restore", sp.get("restore", 0.0) - bp.get("pg_restore", 0.0)),
        ("first connection", sp.get("connect", 0.0) - bp.get("connect", 0.0)),
        ("archive sha256 verification (shadow only)", sp.get("verify", 0.0)),
        ("pristine template copy (shadow only)", sp.get("pristine", 0.0)),
        ("observe pristine + fidelity (shadow only)", sp.get("observe", 0.0) + sp.get("fidelity", 0.0)),
        ("tools, action DSN, glue vs the baseline's glue", sp.get("tools", 0.0) + sp.get("action_dsn", 0.0)
         + sp.get("other", 0.0) - bp.get("other", 0.0)),
    ]
    print(f"  {'overhead on top of the baseline (best vs best)':<48}{'seconds':>9}{'of base':>9}")
    for label, delta in rows:
        print(f"  {label:<48}{delta:+9.2f}{pct(delta, b.total):>9}")
    print(f"  {'= measured overhead':<48}{s.total - b.total:+9.2f}{pct(s.total - b.total, b.total):>9}")
    # The work only shadow does, per run: robust against the noise in the phases both sides share.
    only = [sum(r.pieces.get(key, 0.0) for key in SHADOW_ONLY) for r in shadows]
    print(f"  {'shadow-only work (sha256, pristine, observe, DSN)':<48}{min(only):+9.2f}{pct(min(only), b.total):>9}"
          f"   (min over runs; mean {sum(only) / k:.2f} s)")
    return {"shadow": s.total, "baseline": b.total, "only": min(only),
            "pristine": min(r.pieces.get("pristine", 0.0) for r in shadows),
            "observe": min(r.pieces.get("observe", 0.0) + r.pieces.get("fidelity", 0.0) for r in shadows),
            "verify": min(r.pieces.get("verify", 0.0) for r in shadows),
            "server_mean": sum(r.pieces.get("server", 0.0) for r in shadows) / k,
            "start_base_mean": sum(r.pieces.get("initdb", 0.0) + r.pieces.get("start", 0.0)
                                   + r.pieces.get("container", 0.0) + r.pieces.get("wait", 0.0)
                                   for r in baselines) / len(baselines)}


def report_experiments(backend: str, ex: dict[str, float], summary: dict[str, float]) -> None:
    if not ex:
        return
    base = summary["baseline"]
    print(f"\n--- {backend}: what-if measurements inside a ready shadow, min of 2-3 (not counted above) ---")
    if "template_WAL_LOG" in ex:
        wal, fc = ex["template_WAL_LOG"], ex["template_FILE_COPY"]
        print(f"  CREATE DATABASE ... TEMPLATE, STRATEGY WAL_LOG (the default) {wal:7.2f} s")
        print(f"  CREATE DATABASE ... TEMPLATE, STRATEGY FILE_COPY             {fc:7.2f} s   "
              f"difference {wal - fc:+.2f} s = {pct(wal - fc, base).strip()} of base")
    elif "template_default" in ex:
        print(f"  CREATE DATABASE ... TEMPLATE                                 {ex['template_default']:7.2f} s")
    full, cat = ex["observe_full"], ex["observe_catalog_only"]
    print(f"  observe(pristine), catalog + row hashes                      {full:7.2f} s")
    print(f"  observe(pristine, with_data=False), catalog only             {cat:7.2f} s   "
          f"row hashes cost {full - cat:.2f} s = {pct(full - cat, base).strip()} of base")
    if "fresh_template_WAL_LOG" in ex:
        wal, fc = ex["fresh_template_WAL_LOG"], ex["fresh_template_FILE_COPY"]
        print(f"  same, right after a pg_restore (dirty pages), WAL_LOG        {wal:7.2f} s")
        print(f"  same, right after a pg_restore (dirty pages), FILE_COPY      {fc:7.2f} s   "
              f"difference {wal - fc:+.2f} s = {pct(wal - fc, base).strip()} of base")
    j = int(ex["jobs"])
    r1, rj = ex["restore_j1"], ex[f"restore_j{j}"]
    print(f"  pg_restore -j 1 into a fresh database                        {r1:7.2f} s")
    print(f"  pg_restore -j {j} into a fresh database                        {rj:7.2f} s   "
          f"difference {r1 - rj:+.2f} s = {pct(r1 - rj, base).strip()} of base ({os.cpu_count()} CPUs)")
    if "poll_default" in ex:
        d = ex["poll_default"]
        print(f"  ContainerServer.start, docker exec psql every {ex['interval']:g} s (shipped) {d:7.2f} s")
        for key, label in (("poll_0.1s", "docker exec psql every 0.1 s"), ("poll_host", "psycopg from the host every 0.05 s")):
            print(f"  ContainerServer.start, {label:<38}{ex[key]:7.2f} s   "
                  f"difference {d - ex[key]:+.2f} s = {pct(d - ex[key], base).strip()} of base")
        print(f"  (server start, mean over the timed runs: shadow {summary['server_mean']:.2f} s vs the baseline's "
              f"docker run + psycopg poll {summary['start_base_mean']:.2f} s)")


def pause(settle: float) -> None:
    """Let the previous run's teardown (rmtree of ~3 database copies, container removal) finish its I/O."""
    os.sync()
    time.sleep(settle)


# --------------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100.0, help="production size (pg_database_size, MiB)")
    parser.add_argument("--major", type=int, default=15,
                        help="production's PostgreSQL major (local binaries at least this new; default 15)")
    parser.add_argument("-n", "--repeat", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--backends", default="local,docker", help="comma-separated: local, docker")
    parser.add_argument("--settle", type=float, default=1.0, help="sync + pause before each timed run (seconds)")
    parser.add_argument("--experiments", action=argparse.BooleanOptionalAction, default=True,
                        help="what-if measurements in the last run of each backend")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for backend in backends:
        if backend not in ("local", "docker"):
            parser.error(f"unknown backend {backend!r}")
    n = max(1, args.repeat)

    probe = install_probe()
    results: dict[str, dict[str, float]] = {}
    skipped: dict[str, str] = {}
    try:
        with LocalCluster(label="bench-prod", binaries=binaries_for(args.major)) as production, \
                tempfile.TemporaryDirectory() as tmp:
            dsn = production.create_database(DBNAME)
            t = time.perf_counter()
            built = build_production(dsn, int(args.mb * 1024 * 1024))
            print(f"production: PostgreSQL {production.binaries.major} ({production.binaries.bindir}), database "
                  f"{DBNAME!r} = {built['size'] / 2**20:.1f} MiB (pg_database_size), generated in "
                  f"{time.perf_counter() - t:.1f} s")
            print("  " + ", ".join(f"{name} {rows:,} rows/{size}" for name, (rows, size) in built["tables"].items()))

            settings = Settings.from_env(state_dir=tmp)
            target = PostgresTarget("production", {"dsn": dsn}, settings)
            store = Store(Path(tmp) / "store")
            t = time.perf_counter()
            checkpoint = target.checkpoint(store, "bench-ready")
            archive = store.object_path(checkpoint.artifacts["dump"]["sha256"])
            major = int(checkpoint.meta["major"])
            tools = binaries_for(major, configured_bindir(settings))
            print(f"checkpoint: {time.perf_counter() - t:.1f} s, archive {archive.stat().st_size / 2**20:.1f} MiB "
                  f"(pg_dump -Fc -Z 1), reused by every run; best of {n}; {os.cpu_count()} CPUs; "
                  f"load average {os.getloadavg()[0]:.2f}")

            for backend in backends:
                client: Any = None
                image = target.image_for(major)
                if backend == "docker":
                    ok, why = engine_answers()
                    if not ok:
                        skipped[backend] = f"skipped: {why}"
                        print(f"\ndocker: {skipped[backend]}")
                        continue
                    import docker

                    client = docker.from_env(timeout=60)
                    try:
                        client.images.get(image)
                    except Exception:  # noqa: BLE001 - never pull: the image must be built locally
                        skipped[backend] = f"skipped: image {image} is not available locally (never pulled)"
                        print(f"\ndocker: {skipped[backend]}")
                        client.close()
                        continue
                print(f"\n{backend}: " + (f"image {image}" if backend == "docker" else f"binaries {tools.bindir}"))
                shadows: list[Run] = []
                baselines: list[Run] = []
                for i in range(n):
                    last = i == n - 1

                    def one_shadow(i: int = i, last: bool = last) -> None:
                        pause(args.settle)
                        run = run_shadow(target, checkpoint, store, backend, f"bench-{backend}-{i}", probe, tools,
                                         archive, experiments=args.experiments and last)
                        shadows.append(run)
                        print(f"  run {i + 1}/{n} shadow   {run.total:7.2f} s")

                    def one_baseline(i: int = i) -> None:
                        pause(args.settle)
                        run = (run_local_baseline(tools, archive) if backend == "local"
                               else run_docker_baseline(client, image, tools, archive))
                        baselines.append(run)
                        print(f"  run {i + 1}/{n} baseline {run.total:7.2f} s")

                    order: list[Callable[[], None]] = ([one_baseline, one_shadow] if i % 2 == 0
                                                       else [one_shadow, one_baseline])
                    for step in order:
                        step()
                summary = report_backend(backend, shadows, baselines)
                experiments = dict(shadows[-1].experiments)
                if backend == "docker" and args.experiments:
                    experiments.update(measure_container_polling(image, major, n, args.settle))
                report_experiments(backend, experiments, summary)
                results[backend] = summary
                if client is not None:
                    client.close()
    finally:
        probe.restore()

    print(f"\n=== time to a READY shadow, {args.mb:g} MiB production, best of {n} ===")
    print(f"{'backend':<9}{'shadow s':>10}{'baseline s':>12}{'ratio':>8}{'overhead':>10}"
          f"{'shadow-only work':>18}   target: overhead < 10%")
    for backend in backends:
        if backend in skipped:
            print(f"{backend:<9}{skipped[backend]}")
            continue
        r = results[backend]
        over = (r["shadow"] - r["baseline"]) / r["baseline"]
        only = r["only"] / r["baseline"]
        verdict = ("met" if max(over, only) < 0.10 else
                   "NOT met" if min(over, only) >= 0.10 else
                   "NOT met by shadow-only work (totals within noise)" if only >= 0.10 else "NOT met on totals")
        print(f"{backend:<9}{r['shadow']:10.2f}{r['baseline']:12.2f}{r['shadow'] / r['baseline']:7.2f}x"
              f"{100 * over:+9.1f}%{r['only']:9.2f} s{100 * only:+7.1f}%   {verdict}")
    print("(overhead: best shadow vs best baseline; shadow-only work: sha256 + pristine copy + observation + DSN, "
          "which the baseline never does, as % of the baseline)")
    for backend, r in results.items():
        print(f"{backend:<9}pristine copy {r['pristine']:.2f} s ({100 * r['pristine'] / r['baseline']:.1f}%), "
              f"observation + fidelity {r['observe']:.2f} s ({100 * r['observe'] / r['baseline']:.1f}%), "
              f"archive sha256 {r['verify']:.2f} s ({100 * r['verify'] / r['baseline']:.1f}%)")


if __name__ == "__main__":
    main()
