"""The postgres adapter's contract, against a real PostgreSQL server (no mocks).

For every schema a user might really have:

    checkpoint → the shadow built from it observes equal to the checkpoint (fidelity) →
    production is changed in many ways (each change must be visible to the observation) →
    restore → production observes equal to the checkpoint again, and concrete data came back.

And the diff side: changes made inside a shadow are reported with the right addresses and row counts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.postgres.cluster import LocalCluster
from adapters.postgres.observe import LATER_KINDS, observe
from adapters.postgres.restore import restore_into_empty, restore_over
from adapters import fingerprint_of
from adapters.postgres.shadowcopy import PgShadow
from adapters.postgres.target import PostgresTarget
from shadow.changes import Change, walk
from snapshots import Artifact, Store
from tests.conftest import BOTH_BACKENDS, ProdDb

READER, WRITER, OWNER = "contract_reader", "contract_writer", "contract_owner"
RUN_ID = "contract"


class _Same:
    def __repr__(self) -> str:
        return "SAME"


SAME: Any = _Same()  # a fact's expected value: whatever production returned just before the checkpoint


@pytest.fixture(scope="session", autouse=True)
def roles(pg_server: LocalCluster) -> tuple[str, ...]:
    """Roles the schemas grant to and hand ownership to (roles are cluster-wide: create them once, before any
    test of this module — under xdist a worker may run any of them first)."""
    with pg_server.connect() as conn:
        for role in (READER, WRITER, OWNER):
            conn.execute(f"""
                DO $$ BEGIN
                    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{role}') THEN
                        CREATE ROLE {role} NOLOGIN;
                    END IF;
                EXCEPTION WHEN duplicate_object THEN NULL;  -- created concurrently
                END $$""")
    return READER, WRITER, OWNER


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def available(db: ProdDb, extension: str) -> bool:
    return bool(db.scalar(f"SELECT count(*) FROM pg_available_extensions WHERE name = '{extension}'"))


@dataclass(frozen=True)
class Schema:
    """A production schema, the changes made to it after the checkpoint, and facts the restore must bring back."""

    setup: str
    mutations: list[str]
    facts: dict[str, Any]  # query → its single value at checkpoint time (SAME: ask production before the checkpoint)
    extensions: tuple[str, ...] = field(default=())  # contrib extensions the schema needs


def _on_database(clause: str, role: str | None = None) -> str:
    """SQL that runs ALTER DATABASE <this database> <clause> (or ALTER ROLE <role> IN DATABASE …)."""
    who = f"ALTER ROLE {role} IN DATABASE %I " if role else "ALTER DATABASE %I "
    return f"DO $do$ BEGIN EXECUTE format('{who}', current_database()) || $c${clause}$c$; END $do$"


SCHEMAS = {
    "enum": Schema(
        setup="""
            CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
            CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL, mood mood NOT NULL DEFAULT 'ok');
            INSERT INTO people VALUES (1, 'ann', 'happy'), (2, 'bob', 'sad'), (3, 'cy', DEFAULT);
        """,
        mutations=[
            "ALTER TYPE mood ADD VALUE 'ecstatic' AFTER 'happy'",
            "ALTER TYPE mood RENAME VALUE 'sad' TO 'blue'",
            "UPDATE people SET mood = 'ecstatic' WHERE id = 1",
            "ALTER TABLE people ALTER COLUMN mood SET DEFAULT 'ecstatic'",
            "CREATE TYPE colour AS ENUM ('red', 'green')",
        ],
        facts={
            "SELECT enum_range(NULL::mood)::text": "{sad,ok,happy}",
            "SELECT string_agg(id || ':' || mood, ',' ORDER BY id) FROM people": "1:happy,2:sad,3:ok",
            "SELECT to_regtype('public.colour') IS NULL": True,
        },
    ),
    "domains, composite and range types": Schema(
        setup="""
            CREATE DOMAIN positive_int AS integer CHECK (VALUE > 0);
            CREATE DOMAIN email AS text NOT NULL DEFAULT 'nobody@example.com'
                CONSTRAINT email_has_at CHECK (VALUE LIKE '%@%');
            CREATE TYPE address AS (street text, city text, zip text);
            CREATE TYPE float_range AS RANGE (subtype = float8, subtype_diff = float8mi);
            CREATE TABLE customers (
                id      positive_int PRIMARY KEY,
                contact email,
                home    address,
                budget  float_range,
                booked  tstzrange,
                EXCLUDE USING gist (booked WITH &&)
            );
            INSERT INTO customers VALUES
                (1, 'ann@example.com', ROW('Main St 1', 'Bergen', '5003'), '[10.5,20)', '[2026-01-01,2026-01-05)'),
                (2, DEFAULT, ROW(NULL, 'Oslo', NULL), 'empty', NULL),
                (3, 'cy@example.com', NULL, '(,0]', '[2026-02-01,2026-02-02)');
        """,
        mutations=[
            "ALTER DOMAIN positive_int ADD CONSTRAINT below_million CHECK (VALUE < 1000000)",
            "ALTER DOMAIN email DROP CONSTRAINT email_has_at",
            "ALTER DOMAIN email SET DEFAULT 'someone@example.com'",
            "ALTER TYPE address ADD ATTRIBUTE country text CASCADE",
            "UPDATE customers SET home.city = 'Trondheim', budget = '[0,1)' WHERE id = 1",
            "DELETE FROM customers WHERE id = 2",
            "CREATE DOMAIN short_text AS varchar(10)",
            "CREATE TYPE int_pair AS (a int, b int)",
        ],
        facts={
            "SELECT (home).city || ' ' || budget::text FROM customers WHERE id = 1": "Bergen [10.5,20)",
            "SELECT (home).city FROM customers WHERE id = 2": "Oslo",
            "SELECT count(*) FROM pg_constraint WHERE contypid = 'positive_int'::regtype": 1,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'address'::regclass AND attnum > 0": 3,
            "SELECT to_regtype('public.short_text') IS NULL AND to_regtype('public.int_pair') IS NULL": True,
        },
    ),
    "partitioned tables": Schema(
        setup="""
            CREATE TABLE measurements (
                id    bigint GENERATED BY DEFAULT AS IDENTITY,
                taken date NOT NULL,
                value numeric,
                PRIMARY KEY (id, taken)
            ) PARTITION BY RANGE (taken);
            CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
            CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
            CREATE TABLE measurements_other PARTITION OF measurements DEFAULT;
            CREATE INDEX measurements_value_idx ON measurements (value);
            INSERT INTO measurements (taken, value)
                SELECT date '2025-06-01' + g * 3, g FROM generate_series(1, 300) g;  -- 2025, 2026 and 2027 (default)

            CREATE TABLE events (id int NOT NULL, region text NOT NULL, payload text) PARTITION BY LIST (region);
            CREATE TABLE events_eu PARTITION OF events FOR VALUES IN ('eu', 'uk');
            CREATE TABLE events_us PARTITION OF events FOR VALUES IN ('us') PARTITION BY HASH (id);
            CREATE TABLE events_us_0 PARTITION OF events_us FOR VALUES WITH (MODULUS 2, REMAINDER 0);
            CREATE TABLE events_us_1 PARTITION OF events_us FOR VALUES WITH (MODULUS 2, REMAINDER 1);
            INSERT INTO events SELECT g, (ARRAY['eu', 'uk', 'us'])[1 + g % 3], 'p' || g FROM generate_series(1, 90) g;
        """,
        mutations=[
            "ALTER TABLE measurements DETACH PARTITION measurements_2025",
            "DROP TABLE measurements_2026",
            "INSERT INTO measurements (taken, value) VALUES ('2030-07-01', -1)",
            "DELETE FROM measurements_other WHERE value > 290",
            "CREATE TABLE measurements_2031 PARTITION OF measurements FOR VALUES FROM ('2031-01-01') TO ('2032-01-01')",
            "UPDATE events SET region = 'us' WHERE region = 'eu'",
            "DELETE FROM events_us_1",
            "ALTER TABLE events DETACH PARTITION events_us",
        ],
        facts={
            "SELECT count(*) FROM measurements": 300,
            "SELECT count(*) FROM measurements_2025": SAME,
            "SELECT count(*) FROM measurements_other": SAME,
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'measurements'::regclass": 3,
            "SELECT to_regclass('public.measurements_2031') IS NULL": True,
            "SELECT string_agg(region || count, ',' ORDER BY region) FROM (SELECT region, count(*) FROM events GROUP BY 1) s":
                "eu30,uk30,us30",
            "SELECT count(*) FROM events_us_0": SAME,
            "SELECT nextval(pg_get_serial_sequence('measurements', 'id'))": 301,
        },
    ),
    "generated columns": Schema(
        setup="""
            CREATE TABLE line_items (
                id    int PRIMARY KEY,
                price numeric(10, 2) NOT NULL,
                qty   int NOT NULL,
                total numeric GENERATED ALWAYS AS (price * qty) STORED,
                label text GENERATED ALWAYS AS (upper('item ' || id)) STORED,
                legacy text
            );
            ALTER TABLE line_items DROP COLUMN legacy;  -- a dropped column stays in the catalog, the copy has none
            INSERT INTO line_items (id, price, qty) VALUES (1, 9.99, 3), (2, 0.50, 10);
        """,
        mutations=[
            "UPDATE line_items SET qty = 100 WHERE id = 1",
            "ALTER TABLE line_items ALTER COLUMN label DROP EXPRESSION",
            "ALTER TABLE line_items ADD COLUMN tax numeric GENERATED ALWAYS AS (price * 0.25) STORED",
            "INSERT INTO line_items (id, price, qty) VALUES (3, 1, 1)",
        ],
        facts={
            "SELECT total::text || ' ' || label FROM line_items WHERE id = 1": "29.97 ITEM 1",
            "SELECT attgenerated FROM pg_attribute WHERE attrelid = 'line_items'::regclass AND attname = 'label'": "s",
            "SELECT count(*) FROM line_items": 2,
        },
    ),
    "identity columns and sequences": Schema(
        setup="""
            CREATE TABLE tickets (id int GENERATED ALWAYS AS IDENTITY (START WITH 100 INCREMENT BY 5) PRIMARY KEY, note text);
            CREATE TABLE invoices (id bigserial PRIMARY KEY, n serial, amount int);
            CREATE SEQUENCE invoice_numbers AS integer START 1000 INCREMENT 10 MAXVALUE 100000 CYCLE CACHE 5;
            CREATE SEQUENCE never_used;
            INSERT INTO tickets (note) VALUES ('a'), ('b'), ('c');
            INSERT INTO invoices (amount) VALUES (1), (2);
            SELECT setval('invoice_numbers', 1230);
        """,
        mutations=[
            "SELECT nextval('invoice_numbers') FROM generate_series(1, 50)",
            "INSERT INTO tickets (note) SELECT 'x' FROM generate_series(1, 20)",
            "ALTER TABLE tickets ALTER COLUMN id RESTART WITH 1",
            "INSERT INTO invoices (amount) VALUES (3)",
            "ALTER SEQUENCE invoices_n_seq INCREMENT BY 7",
            "SELECT nextval('never_used')",
            "ALTER TABLE invoices ALTER COLUMN id DROP DEFAULT",
            "DROP SEQUENCE invoices_id_seq",
            "CREATE SEQUENCE brand_new",
            "ALTER TABLE tickets ALTER COLUMN id DROP IDENTITY",
        ],
        facts={
            # What the next insert would have used had nothing happened after the checkpoint.
            "SELECT nextval(pg_get_serial_sequence('tickets', 'id'))": 115,
            "SELECT nextval('invoices_id_seq')": 3,
            "SELECT nextval('invoices_n_seq')": 3,
            "SELECT nextval('invoice_numbers')": 1240,
            "SELECT nextval('never_used')": 1,
            "SELECT to_regclass('public.brand_new') IS NULL": True,
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM tickets": "100,105,110",
        },
    ),
    "row level security": Schema(
        setup=f"""
            CREATE TABLE documents (id int PRIMARY KEY, owner_name text NOT NULL, body text);
            ALTER TABLE documents ENABLE ROW LEVEL SECURITY;
            ALTER TABLE documents FORCE ROW LEVEL SECURITY;
            CREATE POLICY own_documents ON documents FOR SELECT TO {READER} USING (owner_name = current_user);
            CREATE POLICY writers ON documents AS RESTRICTIVE FOR INSERT TO {WRITER}
                WITH CHECK (owner_name = current_user);
            GRANT SELECT ON documents TO {READER};
            GRANT INSERT ON documents TO {WRITER};
            INSERT INTO documents VALUES (1, '{READER}', 'mine'), (2, 'someone else', 'theirs');
        """,
        mutations=[
            "CREATE POLICY everyone ON documents FOR ALL USING (true)",
            "ALTER POLICY own_documents ON documents USING (true)",
            "COMMENT ON POLICY writers ON documents IS 'who may write'",
            "DROP POLICY writers ON documents",
            "ALTER TABLE documents NO FORCE ROW LEVEL SECURITY",
            "ALTER TABLE documents DISABLE ROW LEVEL SECURITY",
            "DELETE FROM documents WHERE id = 2",
        ],
        facts={
            "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = 'documents'::regclass": True,
            "SELECT string_agg(policyname || ' ' || permissive || ' ' || cmd || ' ' || coalesce(qual, with_check), '; '"
            " ORDER BY policyname) FROM pg_policies WHERE tablename = 'documents'":
                f"own_documents PERMISSIVE SELECT (owner_name = CURRENT_USER); "
                f"writers RESTRICTIVE INSERT (owner_name = CURRENT_USER)",
            "SELECT count(*) FROM documents": 2,
        },
    ),
    "table without a primary key, with duplicate rows": Schema(
        setup="""
            CREATE TABLE audit_trail (happened_at timestamptz NOT NULL, message text);
            INSERT INTO audit_trail VALUES
                ('2026-01-01 10:00+00', 'login'), ('2026-01-01 10:00+00', 'login'), ('2026-01-01 10:00+00', 'login'),
                ('2026-01-02 00:00+00', NULL), ('2026-01-02 00:00+00', NULL);
        """,
        mutations=[
            "DELETE FROM audit_trail WHERE ctid = (SELECT min(ctid) FROM audit_trail WHERE message = 'login')",
            "INSERT INTO audit_trail VALUES ('2026-01-02 00:00+00', NULL)",
            "UPDATE audit_trail SET message = 'logout' WHERE ctid = (SELECT max(ctid) FROM audit_trail WHERE message IS NULL)",
            "TRUNCATE audit_trail",
        ],
        facts={
            "SELECT count(*) FROM audit_trail WHERE message = 'login'": 3,
            "SELECT count(*) FROM audit_trail WHERE message IS NULL": 2,
        },
    ),
    "unicode and quoted identifiers": Schema(
        setup="""
            CREATE SCHEMA "Ünïcode";
            CREATE TYPE "Ünïcode"."Status" AS ENUM ('Neu', 'Geändert');
            CREATE TABLE "Ünïcode"."Order Items" (
                "ID"        serial PRIMARY KEY,
                "naïve Col" text NOT NULL,
                "Status"    "Ünïcode"."Status" DEFAULT 'Neu',
                "select"    int,
                "日本語"     text,
                "a.b"       text
            );
            CREATE INDEX "Idx Naïve" ON "Ünïcode"."Order Items" ("naïve Col");
            CREATE VIEW "Ünïcode"."Ready Items" AS SELECT "ID", "naïve Col" FROM "Ünïcode"."Order Items" WHERE "Status" = 'Neu';
            COMMENT ON COLUMN "Ünïcode"."Order Items"."naïve Col" IS 'Ça va? ✓';
            INSERT INTO "Ünïcode"."Order Items" ("naïve Col", "select", "日本語", "a.b")
                VALUES ('crème brûlée', 1, 'ラーメン', 'dot'), ('Straße', 2, NULL, NULL);
        """,
        mutations=[
            """UPDATE "Ünïcode"."Order Items" SET "naïve Col" = 'changed' WHERE "ID" = 1""",
            """UPDATE "Ünïcode"."Order Items" SET "a.b" = 'dot!' WHERE "ID" = 1""",
            """ALTER TABLE "Ünïcode"."Order Items" RENAME COLUMN "日本語" TO "中文" """,
            """ALTER TABLE "Ünïcode"."Order Items" ADD COLUMN "Ñew Col" int DEFAULT 7""",
            """ALTER TYPE "Ünïcode"."Status" ADD VALUE 'Gelöscht'""",
            """DROP VIEW "Ünïcode"."Ready Items" """,
            """CREATE TABLE "Ünïcode"."Ärger" (x int)""",
            """INSERT INTO "Ünïcode"."Order Items" ("naïve Col") VALUES ('new')""",
        ],
        facts={
            """SELECT "naïve Col" || ' ' || "日本語" || ' ' || "a.b" FROM "Ünïcode"."Order Items" WHERE "ID" = 1""":
                "crème brûlée ラーメン dot",
            """SELECT nextval('"Ünïcode"."Order Items_ID_seq"')""": 3,
            """SELECT count(*) FROM "Ünïcode"."Ready Items" """: 2,
            """SELECT col_description('"Ünïcode"."Order Items"'::regclass, 2)""": "Ça va? ✓",
        },
    ),
    "big and unusual values": Schema(
        setup="""
            CREATE TABLE blobs (
                id int PRIMARY KEY, big_text text, big_bytes bytea, doc jsonb, raw json, tags text[], grid int[],
                markup xml, spot point, amount numeric, ratio float8, at timestamptz, local_at timestamp, span interval,
                cash money, uid uuid, addr inet, flags bit varying(8), words tsvector
            );
            INSERT INTO blobs VALUES
                (1, repeat('ab', 3000000), decode(repeat('00ff10', 1500000), 'hex'),
                 '{"a": {"b": [1, 2, null], "n": null}, "c": null, "é": "ü"}', '{"b": 1,   "a": [2], "b": 3}',
                 '{x,NULL,"y z",""}', '{{1,2},{3,4}}', '<a x="1">t &amp; u</a>', '(1.5,-2)',
                 'NaN', '-Infinity', '2026-03-29 01:30:00.123456+01', '2026-03-29 01:30:00', '1 year 2 days 03:04:05.5',
                 '12.34', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '10.1.2.3/8', B'1010', 'the quick brown fox'),
                (2, '', '\\x', 'null', 'null', '{}', '{}', '', '(0,0)', '-0.000', '-0', '-infinity', 'infinity',
                 '-1 mons', '0', '00000000-0000-0000-0000-000000000000', '::1', B'', ''),
                (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
        """,
        mutations=[
            "UPDATE blobs SET big_text = big_text || 'x' WHERE id = 1",
            "UPDATE blobs SET big_bytes = NULL WHERE id = 1",
            "UPDATE blobs SET doc = doc - 'c' WHERE id = 1",  # only a null-valued key goes
            """UPDATE blobs SET doc = '{"a": {"b": [1, 2, null]}, "c": null, "é": "ü"}' WHERE id = 1""",  # nested null key
            """UPDATE blobs SET raw = '{"b":1,"a":[2],"b":3}' WHERE id = 1""",  # json keeps its exact text
            "UPDATE blobs SET amount = 0, ratio = 0 WHERE id = 2",
            "UPDATE blobs SET at = at + interval '1 microsecond' WHERE id = 1",
            "UPDATE blobs SET tags = '{x,NULL,\"y z\",NULL}' WHERE id = 1",
            "UPDATE blobs SET words = NULL WHERE id = 2",  # '' tsvector → NULL
            "DELETE FROM blobs WHERE id = 3",
        ],
        facts={
            "SELECT md5(big_text) || md5(big_bytes) FROM blobs WHERE id = 1": SAME,
            "SELECT length(big_text) + length(big_bytes) FROM blobs WHERE id = 1": 6_000_000 + 4_500_000,
            "SELECT raw::text FROM blobs WHERE id = 1": '{"b": 1,   "a": [2], "b": 3}',
            "SELECT doc::text FROM blobs WHERE id = 1": SAME,
            "SELECT concat_ws('|', amount, ratio, at AT TIME ZONE 'UTC', span, cash, markup, spot, tags, grid, addr, flags)"
            " FROM blobs WHERE id = 1": SAME,
            "SELECT concat_ws('|', amount, ratio, at, local_at, span, cash) FROM blobs WHERE id = 2": SAME,
            "SELECT count(*) FROM blobs": 3,
        },
    ),
    "a second schema with views, routines, triggers, cascades, comments and grants": Schema(
        setup=f"""
            CREATE SCHEMA billing;
            CREATE TABLE billing.accounts (id int PRIMARY KEY, name text NOT NULL);
            CREATE TABLE billing.charges (
                id int PRIMARY KEY,
                account_id int NOT NULL REFERENCES billing.accounts ON DELETE CASCADE,
                cents int NOT NULL CHECK (cents <> 0)
            );
            CREATE TABLE billing.charge_log (charge_id int, logged_by text);
            CREATE FUNCTION billing.log_charge() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO billing.charge_log VALUES (NEW.id, 'trigger');
                RETURN NEW;
            END $$;
            CREATE TRIGGER charges_logged AFTER INSERT ON billing.charges
                FOR EACH ROW EXECUTE FUNCTION billing.log_charge();
            CREATE FUNCTION billing.balance(account int) RETURNS bigint LANGUAGE sql STABLE
                AS $$ SELECT coalesce(sum(cents), 0) FROM billing.charges WHERE account_id = account $$;
            CREATE PROCEDURE billing.close_account(account int) LANGUAGE plpgsql
                AS $$ BEGIN DELETE FROM billing.accounts WHERE id = account; END $$;
            CREATE VIEW billing.balances AS SELECT id, billing.balance(id) AS cents FROM billing.accounts;
            CREATE MATERIALIZED VIEW billing.totals AS
                SELECT account_id, sum(cents) AS cents FROM billing.charges GROUP BY account_id;
            CREATE UNIQUE INDEX totals_account_idx ON billing.totals (account_id);
            CREATE MATERIALIZED VIEW billing.not_yet AS SELECT 1 AS one WITH NO DATA;
            CREATE TYPE billing.charge_kind AS ENUM ('fee', 'refund');
            CREATE SEQUENCE billing.invoice_no;
            COMMENT ON SCHEMA billing IS 'money';
            COMMENT ON TABLE billing.accounts IS 'customer accounts';
            COMMENT ON FUNCTION billing.balance(int) IS 'sum of charges';
            GRANT USAGE ON SCHEMA billing TO {READER};
            GRANT SELECT ON ALL TABLES IN SCHEMA billing TO {READER};
            REVOKE EXECUTE ON FUNCTION billing.balance(int) FROM PUBLIC;
            GRANT EXECUTE ON FUNCTION billing.balance(int) TO {READER};
            ALTER TABLE billing.charge_log OWNER TO {OWNER};
            ALTER DEFAULT PRIVILEGES IN SCHEMA billing GRANT SELECT ON TABLES TO {READER};
            ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
            INSERT INTO billing.accounts VALUES (1, 'ann'), (2, 'bob'), (3, 'cy');
            INSERT INTO billing.charges SELECT g, 1 + g % 3, g * 100 FROM generate_series(1, 30) g;
            REFRESH MATERIALIZED VIEW billing.totals;
        """,
        mutations=[
            "CALL billing.close_account(1)",
            "REFRESH MATERIALIZED VIEW billing.totals",
            "REFRESH MATERIALIZED VIEW billing.not_yet",
            "COMMENT ON TRIGGER charges_logged ON billing.charges IS 'audit'",
            "ALTER TABLE billing.charges DISABLE TRIGGER charges_logged",
            "DROP TRIGGER charges_logged ON billing.charges",
            "INSERT INTO billing.charges VALUES (31, 2, 1)",
            "CREATE OR REPLACE FUNCTION billing.balance(account int) RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT 0::bigint $$",
            f"REVOKE SELECT ON billing.accounts FROM {READER}",
            f"GRANT ALL ON billing.charges TO {WRITER}",
            "GRANT EXECUTE ON FUNCTION billing.balance(int) TO PUBLIC",
            f"ALTER TABLE billing.charges OWNER TO {OWNER}",
            "ALTER TABLE billing.charge_log OWNER TO CURRENT_USER",
            f"ALTER SCHEMA billing OWNER TO {OWNER}",
            "COMMENT ON TABLE billing.accounts IS NULL",
            "COMMENT ON COLUMN billing.charges.cents IS 'in cents'",
            "COMMENT ON TYPE billing.charge_kind IS 'what a charge is'",
            "COMMENT ON INDEX billing.totals_account_idx IS 'one row per account'",
            "COMMENT ON CONSTRAINT charges_cents_check ON billing.charges IS 'no zero charges'",
            "COMMENT ON SEQUENCE billing.invoice_no IS 'invoice numbers'",
            f"GRANT SELECT (name) ON billing.accounts TO {WRITER}",
            "REVOKE USAGE ON TYPE billing.charge_kind FROM PUBLIC",
            f"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {READER}",
            "ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO PUBLIC",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA billing REVOKE SELECT ON TABLES FROM {READER}",
            f"ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER} IN SCHEMA public GRANT USAGE ON TYPES TO {WRITER}",
            "ALTER TABLE billing.charges DROP CONSTRAINT charges_account_id_fkey",
            "ALTER TABLE billing.charges DROP COLUMN cents CASCADE",
            "CREATE VIEW billing.extra AS SELECT 1 AS one",
            "CREATE FUNCTION public.helper() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE PROCEDURE billing.noop() LANGUAGE sql AS 'SELECT 1'",
        ],
        facts={
            "SELECT billing.balance(1)": 16500,
            "SELECT count(*) FROM billing.charge_log": 30,  # the trigger logged every charge
            "SELECT string_agg(account_id || ':' || cents, ',' ORDER BY account_id) FROM billing.totals":
                "1:16500,2:14500,3:15500",
            "SELECT relispopulated FROM pg_class WHERE oid = 'billing.not_yet'::regclass": False,
            "SELECT obj_description('billing.accounts'::regclass, 'pg_class')": "customer accounts",
            f"SELECT has_table_privilege('{READER}', 'billing.accounts', 'SELECT')": True,
            f"SELECT has_table_privilege('{WRITER}', 'billing.charges', 'DELETE')": False,
            "SELECT has_function_privilege('public', 'billing.balance(int)', 'EXECUTE')": False,
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'billing.charge_log'::regclass": OWNER,
            "SELECT to_regprocedure('public.helper()') IS NULL AND to_regclass('billing.extra') IS NULL": True,
            "SELECT string_agg(concat_ws(' ', defaclrole::regrole, nullif(defaclnamespace, 0)::regnamespace, defaclobjtype, defaclacl), '; '"
            " ORDER BY defaclobjtype) FROM pg_default_acl": SAME,
            "SELECT has_type_privilege('public', 'billing.charge_kind', 'USAGE')": True,
            f"SELECT has_column_privilege('{WRITER}', 'billing.accounts', 'name', 'SELECT')": False,
        },
    ),
    "foreign keys with ON DELETE CASCADE across tables": Schema(
        setup="""
            CREATE TABLE authors (id int PRIMARY KEY, name text);
            CREATE TABLE books (id int PRIMARY KEY, author_id int REFERENCES authors ON DELETE CASCADE, title text);
            CREATE TABLE chapters (book_id int REFERENCES books ON DELETE CASCADE, n int, PRIMARY KEY (book_id, n));
            INSERT INTO authors VALUES (1, 'le guin'), (2, 'pratchett');
            INSERT INTO books SELECT g, 1 + g % 2, 'book ' || g FROM generate_series(1, 10) g;
            INSERT INTO chapters SELECT b, n FROM generate_series(1, 10) b, generate_series(1, 12) n;
        """,
        mutations=[
            "DELETE FROM authors WHERE id = 1",
            "TRUNCATE authors CASCADE",
            "DROP TABLE books CASCADE",
        ],
        facts={
            "SELECT count(*) FROM chapters": 120,
            "SELECT count(*) FROM books WHERE author_id = 2": 5,
            "SELECT confdeltype FROM pg_constraint WHERE conname = 'chapters_book_id_fkey'": "c",
        },
    ),
    "a dropped schema and a renamed table": Schema(
        setup=f"""
            CREATE SCHEMA app;
            CREATE SCHEMA "Ünïcode";
            CREATE TABLE app.settings (key text PRIMARY KEY, value jsonb);
            CREATE TABLE "Ünïcode"."Order Items" ("ID" int PRIMARY KEY);
            CREATE TABLE public.users (id serial PRIMARY KEY, email text UNIQUE);
            GRANT USAGE ON SCHEMA app TO {READER};
            INSERT INTO app.settings VALUES ('theme', '"dark"'), ('limits', '{{"max": 3}}');
            INSERT INTO "Ünïcode"."Order Items" VALUES (1), (2);
            INSERT INTO users (email) VALUES ('a@example.com');
        """,
        mutations=[
            "DROP SCHEMA app CASCADE",
            """DROP SCHEMA "Ünïcode" CASCADE""",
            "ALTER TABLE users RENAME TO customers",
            "ALTER TABLE customers DROP COLUMN email",
            "CREATE SCHEMA brand_new",
            "CREATE TABLE brand_new.things (id int)",
            "CREATE SCHEMA app",
        ],
        facts={
            "SELECT value::text FROM app.settings WHERE key = 'limits'": '{"max": 3}',
            """SELECT count(*) FROM "Ünïcode"."Order Items" """: 2,
            "SELECT email FROM users": "a@example.com",
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'brand_new'": 0,
            f"SELECT has_schema_privilege('{READER}', 'app', 'USAGE')": True,
        },
    ),
    "wide, column-less, unlogged and inheriting tables": Schema(
        setup=f"""
            CREATE TABLE wide (id int PRIMARY KEY, {", ".join(f"c{i} text" for i in range(1, 150))});
            INSERT INTO wide (id, c1, c77, c149) SELECT g, 'a' || g, 'b' || g, 'c' || g FROM generate_series(1, 20) g;
            CREATE TABLE nothing ();
            INSERT INTO nothing DEFAULT VALUES;
            INSERT INTO nothing DEFAULT VALUES;
            CREATE UNLOGGED TABLE scratch (k text PRIMARY KEY, v int);
            INSERT INTO scratch VALUES ('a', 1);
            CREATE TABLE vehicles (id int PRIMARY KEY, name text);
            CREATE TABLE trucks (payload_kg int) INHERITS (vehicles);
            INSERT INTO vehicles VALUES (1, 'bike');
            INSERT INTO trucks VALUES (2, 'lorry', 7000);
        """,
        mutations=[
            "UPDATE wide SET c77 = 'changed' WHERE id = 3",
            "UPDATE wide SET c148 = 'set' WHERE id = 4",
            "INSERT INTO nothing DEFAULT VALUES",
            "ALTER TABLE scratch SET LOGGED",
            "UPDATE trucks SET payload_kg = 1 WHERE id = 2",
            "ALTER TABLE trucks NO INHERIT vehicles",
            "UPDATE vehicles SET name = 'bicycle'",
        ],
        facts={
            "SELECT c77 || c1 || c149 FROM wide WHERE id = 3": "b3a3c3",
            "SELECT count(*) FROM nothing": 2,
            "SELECT relpersistence FROM pg_class WHERE oid = 'scratch'::regclass": "u",
            "SELECT string_agg(name, ',' ORDER BY id) FROM vehicles": "bike,lorry",
            "SELECT payload_kg FROM trucks": 7000,
        },
    ),
    "the public schema's owner, grants and comment": Schema(
        setup="CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'keep');",
        mutations=[
            "GRANT CREATE ON SCHEMA public TO PUBLIC",
            "REVOKE USAGE ON SCHEMA public FROM PUBLIC",
            f"GRANT CREATE ON SCHEMA public TO {WRITER}",
            "COMMENT ON SCHEMA public IS 'locked down'",
            f"ALTER SCHEMA public OWNER TO {OWNER}",
            f"ALTER TABLE notes OWNER TO {OWNER}",
        ],
        facts={
            "SELECT nspacl::text FROM pg_namespace WHERE nspname = 'public'": SAME,
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'": SAME,
            "SELECT obj_description('public'::regnamespace, 'pg_namespace')": SAME,
            "SELECT body FROM notes": "keep",
        },
    ),
    "a dropped public schema": Schema(
        setup="CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'keep');",
        mutations=["DROP SCHEMA public CASCADE"],
        facts={"SELECT body FROM public.notes": "keep"},
    ),
    "objects created after the checkpoint": Schema(
        setup="CREATE TABLE base (id int PRIMARY KEY); INSERT INTO base VALUES (1);",
        mutations=[
            "CREATE SCHEMA later",
            "CREATE TABLE later.t (id int PRIMARY KEY, v text)",
            "INSERT INTO later.t VALUES (1, 'x')",
            "CREATE TABLE public.later_table (id bigserial PRIMARY KEY)",
            "CREATE TYPE public.later_enum AS ENUM ('x')",
            "CREATE DOMAIN public.later_domain AS int",
            "CREATE FUNCTION public.later_fn(int) RETURNS int LANGUAGE sql AS 'SELECT $1'",
            "CREATE VIEW public.later_view AS SELECT 1 AS one",
            "CREATE SEQUENCE public.later_seq",
            "CREATE INDEX later_idx ON base (id DESC)",
            "ALTER TABLE base ADD COLUMN later_col int",
            "CREATE EXTENSION hstore",
            "CREATE EXTENSION pg_trgm SCHEMA later",
        ],
        facts={
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'later'": 0,
            "SELECT count(*) FROM pg_extension WHERE extname IN ('hstore', 'pg_trgm')": 0,
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'later%'": 0,
            "SELECT count(*) FROM pg_type WHERE typname LIKE 'later%'": 0,
            "SELECT count(*) FROM pg_proc WHERE proname LIKE 'later%'": 0,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'base'::regclass AND attname = 'later_col'": 0,
        },
        extensions=("hstore", "pg_trgm"),
    ),
    "an extension in use": Schema(
        setup="""
            CREATE EXTENSION pg_trgm;
            CREATE SCHEMA extensions;
            CREATE EXTENSION hstore SCHEMA extensions;
            CREATE TABLE words (id int PRIMARY KEY, w text NOT NULL, attrs extensions.hstore);
            CREATE INDEX words_trgm_idx ON words USING gin (w gin_trgm_ops);
            INSERT INTO words VALUES (1, 'shadow', 'lang => en'), (2, 'shallow', NULL), (3, 'meadow', '');
        """,
        mutations=[
            "DROP EXTENSION pg_trgm CASCADE",
            "UPDATE words SET w = 'sunlight' WHERE id = 1",
            "ALTER EXTENSION hstore SET SCHEMA public",
            "UPDATE words SET attrs = attrs || 'x => 1'::hstore WHERE id = 1",
        ],
        facts={
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_trgm'": SAME,
            "SELECT string_agg(w, ',' ORDER BY similarity(w, 'shadoe') DESC, id) FROM words": "shadow,shallow,meadow",
            "SELECT to_regclass('public.words_trgm_idx') IS NOT NULL": True,
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'hstore'": "extensions",
            "SELECT attrs::text FROM words WHERE id = 1": '"lang"=>"en"',
        },
        extensions=("pg_trgm", "hstore"),
    ),
    "database and role settings": Schema(
        setup=f"""
            CREATE SCHEMA app;
            CREATE SCHEMA "My Schema";
            CREATE TABLE app.t (id int PRIMARY KEY);
            INSERT INTO app.t VALUES (1), (2);
            {_on_database('SET search_path = app, "My Schema", public')};
            {_on_database("SET statement_timeout = '5min'")};
            {_on_database("SET app.tenant = 'acme'")};
            {_on_database("SET app.api_token = 'hunter2'")};
            {_on_database("SET work_mem = '8MB'", role=READER)};
        """,
        mutations=[
            _on_database("SET statement_timeout = '1min'"),
            _on_database("RESET app.tenant"),
            _on_database("SET search_path = public"),
            _on_database("SET app.api_token = 'hunter3'"),
            _on_database("SET work_mem = '16MB'", role=READER),
            _on_database("SET lock_timeout = '3s'", role=WRITER),
            _on_database("RESET ALL"),
        ],
        facts={
            "SELECT current_setting('search_path')": 'app, "My Schema", public',
            "SELECT current_setting('statement_timeout')": "5min",
            "SELECT current_setting('app.tenant')": "acme",
            "SELECT count(*) FROM t": 2,  # an unqualified name finds app.t through the database's search_path
            "SELECT string_agg(c, ',' ORDER BY c) FROM pg_db_role_setting, unnest(setconfig) c WHERE setrole = 0"
            " AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())": SAME,
            "SELECT string_agg(pg_get_userbyid(setrole) || ':' || setconfig::text, ',' ORDER BY 1)"
            " FROM pg_db_role_setting WHERE setrole <> 0"
            " AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())":
                f"{READER}:{{work_mem=8MB}}",
        },
    ),
    "rules, statistics, publications, collations and event triggers": Schema(
        setup="""
            CREATE SCHEMA catalogue;
            CREATE COLLATION byte_order (provider = libc, locale = 'C');
            CREATE COLLATION catalogue.sku_order (provider = libc, locale = 'POSIX');
            CREATE TABLE orders (id int PRIMARY KEY, region text NOT NULL, cents int NOT NULL);
            CREATE TABLE orders_archive (id int PRIMARY KEY, region text, cents int);
            CREATE TABLE catalogue.items (id int PRIMARY KEY, sku text COLLATE catalogue.sku_order NOT NULL, price int);
            CREATE RULE archive_deleted AS ON DELETE TO orders
                DO ALSO INSERT INTO orders_archive VALUES (OLD.id, OLD.region, OLD.cents);
            CREATE RULE no_negative_price AS ON UPDATE TO catalogue.items WHERE NEW.price < 0 DO INSTEAD NOTHING;
            CREATE STATISTICS orders_region_cents (ndistinct, dependencies) ON region, cents FROM orders;
            CREATE STATISTICS catalogue.items_stats ON sku, price FROM catalogue.items;
            CREATE PUBLICATION orders_pub FOR TABLE orders, catalogue.items WITH (publish = 'insert, update');
            CREATE PUBLICATION everything FOR ALL TABLES;
            CREATE FUNCTION note_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;
            CREATE EVENT TRIGGER ddl_noted ON ddl_command_end WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION note_ddl();
            CREATE EVENT TRIGGER drops_noted ON sql_drop EXECUTE FUNCTION note_ddl();
            COMMENT ON RULE archive_deleted ON orders IS 'keep what is deleted';
            COMMENT ON STATISTICS catalogue.items_stats IS 'sku against price';
            COMMENT ON PUBLICATION orders_pub IS 'to the warehouse';
            COMMENT ON EVENT TRIGGER drops_noted IS 'audit drops';
            COMMENT ON COLLATION catalogue.sku_order IS 'bytewise skus';
            INSERT INTO orders SELECT g, (ARRAY['eu', 'us'])[1 + g % 2], g * 100 FROM generate_series(1, 5) g;
            INSERT INTO catalogue.items VALUES (1, 'B-2', 10), (2, 'a-1', 20);
            DELETE FROM orders WHERE id = 4;  -- archived by the rule
        """,
        mutations=[
            "DELETE FROM orders WHERE id = 2",
            "ALTER TABLE orders DISABLE RULE archive_deleted",
            "CREATE OR REPLACE RULE archive_deleted AS ON DELETE TO orders DO ALSO NOTHING",
            "COMMENT ON RULE no_negative_price ON catalogue.items IS 'guard'",
            "DROP RULE no_negative_price ON catalogue.items",
            "CREATE RULE archive_is_final AS ON DELETE TO orders_archive DO INSTEAD NOTHING",
            "ALTER STATISTICS orders_region_cents SET STATISTICS 500",
            f"ALTER STATISTICS catalogue.items_stats OWNER TO {OWNER}",
            "DROP STATISTICS orders_region_cents",
            "CREATE STATISTICS catalogue.later_stats ON id, price FROM catalogue.items",
            "CREATE STATISTICS public.later_public_stats ON id, cents FROM orders_archive",
            "ALTER PUBLICATION orders_pub SET (publish = 'insert, update, delete')",
            "ALTER PUBLICATION orders_pub DROP TABLE catalogue.items",
            "ALTER PUBLICATION orders_pub ADD TABLE orders_archive",
            "COMMENT ON PUBLICATION orders_pub IS NULL",
            "DROP PUBLICATION everything",
            "CREATE PUBLICATION later_pub FOR TABLE orders",
            "ALTER EVENT TRIGGER ddl_noted DISABLE",
            "COMMENT ON EVENT TRIGGER ddl_noted IS 'off for now'",
            "DROP EVENT TRIGGER drops_noted",
            "CREATE EVENT TRIGGER later_evt ON ddl_command_start EXECUTE FUNCTION note_ddl()",
            "COMMENT ON COLLATION byte_order IS 'bytes'",
            "ALTER COLLATION catalogue.sku_order RENAME TO sku_sort",
            "DROP COLLATION byte_order",
            "CREATE COLLATION public.later_public_coll (provider = libc, locale = 'C')",
            "CREATE COLLATION catalogue.later_coll (provider = libc, locale = 'POSIX')",
        ],
        facts={
            "SELECT string_agg(rulename || ':' || ev_enabled::text, ',' ORDER BY rulename) FROM pg_rewrite"
            " WHERE rulename <> '_RETURN' AND ev_class >= 16384": "archive_deleted:O,no_negative_price:O",
            "SELECT pg_get_ruledef(oid) FROM pg_rewrite WHERE rulename = 'archive_deleted'": SAME,
            "SELECT obj_description(oid, 'pg_rewrite') FROM pg_rewrite WHERE rulename = 'archive_deleted'":
                "keep what is deleted",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM orders_archive": "4",
            "SELECT string_agg(stxnamespace::regnamespace || '.' || stxname || ':' || pg_get_userbyid(stxowner), ','"
            " ORDER BY stxname) FROM pg_statistic_ext": SAME,
            "SELECT stxstattarget FROM pg_statistic_ext WHERE stxname = 'orders_region_cents'": SAME,
            "SELECT string_agg(pubname || ':' || pubinsert || pubupdate || pubdelete, ',' ORDER BY pubname)"
            " FROM pg_publication": "everything:truetruetrue,orders_pub:truetruefalse",
            "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY schemaname, tablename)"
            " FROM pg_publication_tables WHERE pubname = 'orders_pub'": "catalogue.items,public.orders",
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = 'orders_pub'":
                "to the warehouse",
            "SELECT string_agg(evtname || ':' || evtenabled::text || ':' || coalesce(obj_description(oid, 'pg_event_trigger'),"
            " '-'), ',' ORDER BY evtname) FROM pg_event_trigger": "ddl_noted:O:-,drops_noted:O:audit drops",
            "SELECT string_agg(collnamespace::regnamespace || '.' || collname, ',' ORDER BY collname) FROM pg_collation"
            " WHERE collnamespace <> 'pg_catalog'::regnamespace": "public.byte_order,catalogue.sku_order",
            "SELECT attcollation::regcollation::text FROM pg_attribute"
            " WHERE attrelid = 'catalogue.items'::regclass AND attname = 'sku'": "catalogue.sku_order",
            "SELECT string_agg(sku, ',' ORDER BY sku) FROM catalogue.items": "B-2,a-1",
        },
    ),
}


def _fact_values(db: ProdDb, facts: dict[str, Any]) -> dict[str, Any]:
    return {query: db.scalar(query) if expected is SAME else expected for query, expected in facts.items()}


@BOTH_BACKENDS
@pytest.mark.parametrize("schema", list(SCHEMAS.values()), ids=list(SCHEMAS))
def test_restore_brings_production_back_to_the_checkpoint(schema, empty_db, roles, store, backend):
    for extension in schema.extensions:
        if not available(empty_db, extension):
            pytest.skip(f"contrib extension {extension} is not installed on this server")
    empty_db.execute(schema.setup)
    facts = _fact_values(empty_db, schema.facts)
    target = empty_db.target()
    checkpoint = target.checkpoint(store, RUN_ID)

    with target.shadow(checkpoint, store, RUN_ID, backend) as sh:
        assert sh.backend == backend
        assert sh.fidelity == []
        assert sh.warnings == []
        assert {query: sh.check(query) for query in facts} == facts

    fingerprint = checkpoint.fingerprint
    for mutation in schema.mutations:
        empty_db.execute(mutation)
        now = target.fingerprint()
        assert now != fingerprint, f"the observation does not see: {mutation}"
        fingerprint = now

    target.restore(checkpoint, store)
    assert target.verify_restored(checkpoint) == []
    assert {query: empty_db.scalar(query) for query in facts} == facts


def test_restore_is_repeatable_and_leaves_an_unchanged_database_unchanged(prod_db, store):
    target = prod_db.target()
    checkpoint = target.checkpoint(store, RUN_ID)
    target.restore(checkpoint, store)
    assert target.verify_restored(checkpoint) == []
    prod_db.execute("DELETE FROM orders WHERE id > 10")
    target.restore(checkpoint, store)
    target.restore(checkpoint, store)
    assert target.verify_restored(checkpoint) == []
    assert prod_db.scalar("SELECT count(*) FROM orders") == 2000


# -- the diff side: changes made inside the shadow -------------------------------------------------------------

@pytest.fixture
def shadow_of(store: Store, backend: str) -> Iterator[Callable[[ProdDb], tuple[PostgresTarget, PgShadow]]]:
    """Checkpoint a production database and build a faithful shadow of it; torn down after the test."""
    with ExitStack() as stack:

        def build(db: ProdDb) -> tuple[PostgresTarget, PgShadow]:
            target = db.target()
            checkpoint = target.checkpoint(store, RUN_ID)
            sh = stack.enter_context(target.shadow(checkpoint, store, RUN_ID, backend))
            assert sh.fidelity == []
            return target, sh

        yield build


def run_in(sh: PgShadow, *statements: str) -> None:
    with psycopg.connect(sh.dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def addresses(changes: list[Change]) -> list[str]:
    """Top-level addresses only."""
    return [c.address for c in changes]


def everything(changes: list[Change]) -> dict[str, Change]:
    """Every change, nested ones included, by address."""
    return {c.address: c for c in walk(changes)}


def test_shadow_with_no_changes_reports_nothing(prod_db, shadow_of):
    _, sh = shadow_of(prod_db)
    assert sh.changes() == []


def test_adding_a_nullable_column_without_default_is_not_an_update_of_every_row(prod_db, shadow_of):
    _, sh = shadow_of(prod_db)
    run_in(sh, "ALTER TABLE users ADD COLUMN nickname text")
    assert addresses(sh.changes()) == ["add column public.users.nickname"]


def test_adding_a_column_with_a_default_updates_every_row(prod_db, shadow_of):
    _, sh = shadow_of(prod_db)
    run_in(sh, "ALTER TABLE users ADD COLUMN vip boolean NOT NULL DEFAULT false")
    changes = sh.changes()
    assert addresses(changes) == ["add column public.users.vip", "update rows public.users"]
    assert changes[1].detail["count"] == 500


def test_dropping_a_column_updates_only_the_rows_that_lose_a_value_implied_by_the_drop(prod_db, shadow_of):
    _, sh = shadow_of(prod_db)
    run_in(sh, "ALTER TABLE orders DROP COLUMN placed_at", "ALTER TABLE users DROP COLUMN email")
    changes = sh.changes()
    assert addresses(changes) == ["drop column public.orders.placed_at", "drop column public.users.email"]
    found = everything(changes)
    # every user had an email: each row lost a value (a destroyed value is not an unchanged row)
    assert found["drop column public.users.email"].detail["destroyed_values"] == 500
    assert found["update rows public.users"].detail["count"] == found["update rows public.users"].detail[
        "lost_values"] == 500
    assert "update rows public.users" in {c.address for c in found["drop column public.users.email"].children}


def test_dropping_a_table_reports_its_rows_under_it(prod_db, shadow_of):
    _, sh = shadow_of(prod_db)
    run_in(sh, "DROP TABLE audit_log")
    changes = sh.changes()
    assert addresses(changes) == ["drop table public.audit_log"]
    nested = everything(changes)
    assert nested["delete rows public.audit_log"].detail["count"] == 2
    assert "drop column public.audit_log.message" in nested


def test_inserted_updated_and_deleted_rows_are_counted_by_primary_key(prod_db, shadow_of):
    _, sh = shadow_of(prod_db)
    run_in(
        sh,
        "INSERT INTO users (email, full_name) SELECT 'new' || g || '@example.com', 'N' FROM generate_series(1, 3) g",
        "UPDATE orders SET total_cents = total_cents + 1 WHERE id <= 40",
        "DELETE FROM orders WHERE id > 1990",
    )
    found = everything(sh.changes())
    assert found["insert rows public.users"].detail["count"] == 3
    assert found["insert rows public.users"].detail["sample_keys"] == ["[501]", "[502]", "[503]"]
    assert found["update rows public.orders"].detail["count"] == 40
    assert found["delete rows public.orders"].detail["count"] == 10
    assert "alter sequence public.users_id_seq" in found  # the identity advanced, nested under the insert
    assert "alter sequence public.users_id_seq" not in addresses(sh.changes())


def test_truncate_reports_every_row_deleted(prod_db, shadow_of):
    _, sh = shadow_of(prod_db)
    run_in(sh, "TRUNCATE orders")
    changes = sh.changes()
    assert addresses(changes) == ["delete rows public.orders"]
    assert changes[0].detail["count"] == 2000


def test_table_without_primary_key_is_compared_as_a_multiset(prod_db, shadow_of):
    _, sh = shadow_of(prod_db)
    run_in(
        sh,
        "DELETE FROM audit_log WHERE ctid = (SELECT min(ctid) FROM audit_log)",  # one of two identical rows
        "INSERT INTO audit_log VALUES ('2026-01-03', 'x'), ('2026-01-03', 'x')",
    )
    found = everything(sh.changes())
    assert found["insert rows public.audit_log"].detail == {"count": 2, "compared_as": "multiset (no primary key)"}
    deleted = found["delete rows public.audit_log"].detail
    assert deleted["count"] == 1 and deleted["compared_as"] == "multiset (no primary key)"
    assert deleted["keys_digest"]  # which rows went, so production deleting other rows diverges
    assert "update rows public.audit_log" not in found


def test_partitioned_table_rows_are_reported_on_the_root(empty_db, shadow_of):
    empty_db.execute(SCHEMAS["partitioned tables"].setup)
    _, sh = shadow_of(empty_db)
    run_in(
        sh,
        "UPDATE measurements SET value = value + 0.5 WHERE value <= 10",  # rows in 2025
        "INSERT INTO measurements_2026 (id, taken, value) VALUES (5000, '2026-05-05', 1000)",  # into a partition
        "INSERT INTO measurements (taken, value) VALUES ('2025-02-02', 2000)",
        "DELETE FROM measurements WHERE value BETWEEN 200 AND 204",  # rows in the default partition
        "UPDATE events SET region = 'us', payload = 'moved' WHERE id <= 9",  # moves rows between partitions
    )
    found = everything(sh.changes())
    rows = sorted(a for a in found if a.split()[1] == "rows")
    assert rows == ["delete rows public.events", "delete rows public.measurements", "insert rows public.events",
                    "insert rows public.measurements", "update rows public.measurements"]
    assert found["update rows public.measurements"].detail["count"] == 10
    assert found["insert rows public.measurements"].detail["count"] == 2
    assert found["delete rows public.measurements"].detail["count"] == 5
    # no primary key: a moved row is compared as a multiset, so it is one row out and one row in
    assert found["delete rows public.events"].detail["count"] == 9
    assert found["insert rows public.events"].detail["count"] == 9
    assert "alter sequence public.measurements_id_seq" in {c.address for c in found["insert rows public.measurements"].children}


def test_detaching_a_partition_moves_its_rows_out_of_the_root(empty_db, shadow_of):
    empty_db.execute(SCHEMAS["partitioned tables"].setup)
    _, sh = shadow_of(empty_db)
    n = empty_db.scalar("SELECT count(*) FROM measurements_2025")
    run_in(sh, "ALTER TABLE measurements DETACH PARTITION measurements_2025")
    found = everything(sh.changes())
    assert found["alter table public.measurements_2025"].detail["partition_of"] == {
        "from": "public.measurements", "to": None}
    assert found["delete rows public.measurements"].detail["count"] == n
    assert found["insert rows public.measurements_2025"].detail["count"] == n


def test_quoted_identifiers_appear_quoted_in_addresses(empty_db, shadow_of):
    empty_db.execute(SCHEMAS["unicode and quoted identifiers"].setup)
    _, sh = shadow_of(empty_db)
    run_in(
        sh,
        """ALTER TABLE "Ünïcode"."Order Items" ADD COLUMN "new Col" int""",
        """UPDATE "Ünïcode"."Order Items" SET "naïve Col" = 'x' WHERE "ID" = 2""",
        """UPDATE "Ünïcode"."Order Items" SET "a.b" = 'y' WHERE "ID" = 1""",
        """ALTER TABLE "Ünïcode"."Order Items" DROP COLUMN "日本語" """,
        """CREATE TABLE "Ünïcode"."New.Table" ("a.b" int PRIMARY KEY)""",
    )
    changes = sh.changes()
    found = everything(changes)
    assert '''add column "Ünïcode"."Order Items"."new Col"''' in addresses(changes)
    assert '''drop column "Ünïcode"."Order Items"."日本語"''' in addresses(changes)
    # a dot inside a quoted name is not a separator: the new table's column and key are nested under it
    assert '''add table "Ünïcode"."New.Table"''' in addresses(changes)
    assert {c.address for c in found['''add table "Ünïcode"."New.Table"'''].children} == {
        '''add column "Ünïcode"."New.Table"."a.b"''',
        '''add constraint "Ünïcode"."New.Table"."New.Table_pkey"''',
    }
    update = found['''update rows "Ünïcode"."Order Items"''']
    assert update.detail["count"] == 2 and update.detail["sample_keys"] == ["[1]", "[2]"]


def test_changes_inside_json_values_are_seen(empty_db, shadow_of):
    empty_db.execute("""
        CREATE TABLE docs (id int PRIMARY KEY, doc jsonb, raw json, tags text[]);
        INSERT INTO docs VALUES
            (1, '{"a": {"x": null}}', '{"k": 1}', '{a,NULL}'),
            (2, '{"a": 1, "b": null}', '{"k":  1}', '{}'),
            (3, '[1, null]', 'null', NULL);
    """)
    _, sh = shadow_of(empty_db)
    run_in(
        sh,
        """UPDATE docs SET doc = '{"a": {}}' WHERE id = 1""",  # a nested key whose value is null went away
        """UPDATE docs SET doc = '{"a": 1}' WHERE id = 2""",  # a top-level key whose value is null went away
        """UPDATE docs SET raw = '{"k":1}' WHERE id = 2""",  # json keeps its text: whitespace is a change
    )
    found = everything(sh.changes())
    assert found["update rows public.docs"].detail["count"] == 2
    assert found["update rows public.docs"].detail["sample_keys"] == ["[1]", "[2]"]


def test_dropping_a_schema_nests_what_was_in_it(empty_db, shadow_of):
    empty_db.execute(SCHEMAS["a dropped schema and a renamed table"].setup)
    _, sh = shadow_of(empty_db)
    run_in(sh, "DROP SCHEMA app CASCADE")
    changes = sh.changes()
    assert addresses(changes) == ["drop schema app"]
    found = everything(changes)
    assert "drop table app.settings" in found
    assert found["delete rows app.settings"].detail["count"] == 2


def test_a_database_whose_timezone_differs_from_the_shadow_server_is_copied_faithfully(empty_db, shadow_of):
    """Production's database may default to another TimeZone than the throwaway server; values must still match."""
    empty_db.execute(f"""
        ALTER DATABASE {empty_db.name} SET timezone = 'Pacific/Chatham';
        ALTER DATABASE {empty_db.name} SET intervalstyle = 'iso_8601';
        ALTER DATABASE {empty_db.name} SET extra_float_digits = 0;
        ALTER DATABASE {empty_db.name} SET bytea_output = 'escape';
        ALTER DATABASE {empty_db.name} SET datestyle = 'SQL, DMY';
    """)
    empty_db.execute("""
        CREATE TABLE readings (id int PRIMARY KEY, at timestamptz, local_at timestamp, span interval,
                               ratio float8, raw bytea, day date);
        INSERT INTO readings VALUES (1, '2026-03-29 01:30:00.5+00', '2026-03-29 01:30:00', '1 day 2 hours',
                                     0.1::float8 + 0.2::float8, '\\x00ff', '2026-12-31');
        -- constants in defaults, view definitions and partition bounds are printed in the session's TimeZone too
        ALTER TABLE readings ALTER COLUMN at SET DEFAULT '2026-01-01 00:00:00+00';
        CREATE VIEW recent AS SELECT * FROM readings WHERE at > '2026-01-01 12:00:00+00'::timestamptz;
        CREATE TABLE logs (at timestamptz NOT NULL, line text) PARTITION BY RANGE (at);
        CREATE TABLE logs_2026 PARTITION OF logs FOR VALUES FROM ('2026-01-01 00:00+00') TO ('2027-01-01 00:00+00');
        INSERT INTO logs VALUES ('2026-06-01 12:00+00', 'hello');
    """)
    target, sh = shadow_of(empty_db)  # asserts fidelity
    assert target.changes_since(sh.checkpoint, sh) == []
    run_in(sh, "UPDATE readings SET ratio = 0.2 WHERE id = 1")
    found = everything(sh.changes())
    assert found["update rows public.readings"].detail["count"] == 1


def test_default_privileges_are_observed_as_their_own_kind(prod_db, roles, shadow_of):
    _, sh = shadow_of(prod_db)
    run_in(sh, f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {READER}",
           f"ALTER DEFAULT PRIVILEGES GRANT USAGE ON SEQUENCES TO {READER}")
    changes = sh.changes()
    assert addresses(changes) == ["add default_privileges public.shadow", "add default_privileges shadow"]
    assert changes[0].detail == {"tables": f"{{{READER}=r/shadow}}"}


def test_database_settings_reach_the_shadow_show_in_the_diff_and_are_restored(prod_db, roles, shadow_of, store):
    mine = "SELECT string_agg(c, ',' ORDER BY c) FROM pg_db_role_setting, unnest(setconfig) c WHERE setrole = 0" \
           " AND setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())"
    for clause in ("SET search_path = public, \"$user\"", "SET app.tenant = 'acme'", "SET app.api_token = 'hunter2'",
                   "SET session_preload_libraries = 'auto_explain'"):
        prod_db.execute(_on_database(clause))
    prod_db.execute(f"ALTER ROLE {WRITER} SET lock_timeout = '7s'")  # every database's, the shadow's too
    try:
        target, sh = shadow_of(prod_db)  # (asserts a faithful shadow)
        at_checkpoint = prod_db.scalar(mine)
        assert "session_preload_libraries=auto_explain" in str(at_checkpoint)
        with psycopg.connect(sh.endpoint.dsn) as action:  # what the action's sessions get
            assert action.execute("SELECT current_setting('app.tenant')").fetchone() == ("acme",)
            assert action.execute("SHOW search_path").fetchone() == ('public, "$user"',)
        assert sh.check(f"SELECT setconfig::text FROM pg_db_role_setting WHERE setrole = '{WRITER}'::regrole"
                        " AND setdatabase = 0") == "{lock_timeout=7s}"
        # Libraries a shadow server may not have are left out of it (and out of the observation).
        assert "preload" not in str(sh.check(mine))

        changed = [_on_database("SET app.tenant = 'globex'"), _on_database("SET app.api_token = 'letmein'"),
                   _on_database("SET work_mem = '64MB'", role=READER)]
        run_in(sh, *changed)
        changes = {c.address: c for c in sh.changes()}
        assert sorted(changes) == [f"add setting role.{READER}", "alter setting database"]
        detail = changes["alter setting database"].detail
        assert detail["app.tenant"] == {"from": "acme", "to": "globex"}, detail
        assert "hunter2" not in repr(changes) and "letmein" not in repr(changes), "a secret-looking value is shown"
        assert sh.rehearse_rollback() == []

        for statement in changed:
            prod_db.execute(statement)
        checkpoint = sh.checkpoint
        target.restore(checkpoint, store)
        assert target.verify_restored(checkpoint) == []
        assert prod_db.scalar(mine) == at_checkpoint  # session_preload_libraries included
        assert prod_db.scalar("SELECT count(*) FROM pg_db_role_setting WHERE setrole <> 0 AND setdatabase = "
                              "(SELECT oid FROM pg_database WHERE datname = current_database())") == 0
    finally:
        prod_db.execute(f"ALTER ROLE {WRITER} RESET ALL")


def test_rules_statistics_publications_collations_and_event_triggers_are_observed(prod_db, shadow_of):
    prod_db.execute("""
        CREATE STATISTICS orders_user_status ON user_id, status FROM orders;
        CREATE PUBLICATION shop_pub FOR TABLE orders;
        CREATE PUBLICATION old_pub FOR TABLE users;
        CREATE COLLATION byte_order (provider = libc, locale = 'C');
    """)
    _, sh = shadow_of(prod_db)
    run_in(
        sh,
        "CREATE RULE keep_audit AS ON DELETE TO audit_log DO INSTEAD NOTHING",
        "ALTER STATISTICS orders_user_status SET STATISTICS 200",
        "DROP PUBLICATION old_pub",
        "ALTER PUBLICATION shop_pub ADD TABLE users",
        "COMMENT ON COLLATION byte_order IS 'bytes'",
        "CREATE COLLATION posix_order (provider = libc, locale = 'POSIX')",
        "CREATE TABLE later (id int PRIMARY KEY, v int)",
        "CREATE RULE later_rule AS ON UPDATE TO later DO ALSO NOTHING",
        "CREATE STATISTICS later_stats ON id, v FROM later",
        "CREATE FUNCTION noop_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$",
        "CREATE EVENT TRIGGER ddl_seen ON ddl_command_start WHEN TAG IN ('DROP TABLE') EXECUTE FUNCTION noop_ddl()",
    )
    changes = sh.changes()
    assert addresses(changes) == [
        "add collation public.posix_order",
        "alter collation public.byte_order",
        "add event_trigger ddl_seen",
        "add function public.noop_ddl()",
        "drop publication old_pub",
        "alter publication shop_pub",
        "add rule public.audit_log.keep_audit",
        "alter statistics public.orders_user_status",
        "add table public.later",
    ]
    found = everything(changes)
    # a rule and extended statistics of an added table are part of it
    assert {"add rule public.later.later_rule", "add statistics public.later_stats"} <= {
        c.address for c in found["add table public.later"].children}
    assert found["alter publication shop_pub"].detail == {
        "tables": {"from": ["public.orders"], "to": ["public.orders", "public.users"]}}
    assert found["alter statistics public.orders_user_status"].detail == {
        "statistics_target": {"from": None, "to": 200}}
    assert found["alter collation public.byte_order"].detail == {"comment": {"from": None, "to": "bytes"}}
    assert found["add event_trigger ddl_seen"].detail["function"] == "public.noop_ddl()"
    assert found["add event_trigger ddl_seen"].detail["tags"] == '{"DROP TABLE"}'
    assert "INSTEAD NOTHING" in found["add rule public.audit_log.keep_audit"].detail["definition"]
    assert found["add rule public.audit_log.keep_audit"].detail["table"] == "public.audit_log"


def test_kinds_observed_later_are_absent_from_a_database_without_them(prod_db):
    """So the fingerprints of such a database (checkpoints, after-apply records) are what they were before."""
    with prod_db.connect() as conn:
        kinds = set(observe(conn, with_data=False)["objects"])
    assert kinds >= {"table", "procedure", "default_privileges"}  # the older kinds are there even when empty
    assert not kinds & set(LATER_KINDS)
    prod_db.execute("CREATE PUBLICATION shop_pub FOR TABLE orders")
    with prod_db.connect() as conn:
        assert set(observe(conn, with_data=False)["objects"]) - kinds == {"publication"}


# pg_dump archives record neither an extension's version nor the absence of public; restore.py puts both
# right from the checkpoint's observation.
def test_an_extension_at_an_older_version_is_copied_at_that_version(empty_db, store):
    if not available(empty_db, "pg_trgm"):
        pytest.skip("contrib extension pg_trgm is not installed on this server")
    empty_db.execute("CREATE EXTENSION pg_trgm VERSION '1.5'")  # not updated since a server upgrade
    target = empty_db.target()
    checkpoint = target.checkpoint(store, RUN_ID)
    with target.shadow(checkpoint, store, RUN_ID, "local") as sh:
        assert sh.fidelity == []
    target.restore(checkpoint, store)
    assert target.verify_restored(checkpoint) == []


def test_a_database_without_a_public_schema_is_copied_without_one(empty_db, store):
    empty_db.execute("DROP SCHEMA public; CREATE SCHEMA app; CREATE TABLE app.t (id int PRIMARY KEY)")
    target = empty_db.target()
    checkpoint = target.checkpoint(store, RUN_ID)
    with target.shadow(checkpoint, store, RUN_ID, "local") as sh:
        assert sh.fidelity == []
    empty_db.execute("CREATE SCHEMA public")
    target.restore(checkpoint, store)
    assert target.verify_restored(checkpoint) == []


def test_restore_given_the_observation_keeps_extension_versions_and_the_absence_of_public(empty_db, store):
    if not available(empty_db, "pg_trgm"):
        pytest.skip("contrib extension pg_trgm is not installed on this server")
    empty_db.execute("""
        CREATE SCHEMA app;
        CREATE EXTENSION pg_trgm SCHEMA app VERSION '1.5';
        CREATE TABLE app.words (id int PRIMARY KEY, w text);
        CREATE INDEX words_trgm ON app.words USING gin (w app.gin_trgm_ops);
        INSERT INTO app.words VALUES (1, 'shadow');
        DROP SCHEMA public;
    """)
    target = empty_db.target()
    checkpoint = target.checkpoint(store, RUN_ID)
    dump = checkpoint.artifacts["dump"]
    archive = store.open_verified(Artifact(dump["sha256"], int(dump["size"])))
    binaries = target.binaries(int(checkpoint.meta["major"]))

    # into an empty database, as a shadow is built
    copy = empty_db.server.create_database(empty_db.name + "_copy")
    try:
        assert restore_into_empty(binaries, copy, archive, observation=checkpoint.observation) == []
        with psycopg.connect(copy, autocommit=True) as conn:
            assert fingerprint_of(observe(conn)) == checkpoint.fingerprint
    finally:
        with empty_db.server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{empty_db.name}_copy" WITH (FORCE)')

    # over production
    empty_db.execute("ALTER EXTENSION pg_trgm UPDATE")
    empty_db.execute("CREATE SCHEMA public")
    restore_over(binaries, empty_db.dsn, archive, observation=checkpoint.observation)
    assert target.verify_restored(checkpoint) == []
    assert empty_db.scalar("SELECT extversion FROM pg_extension WHERE extname = 'pg_trgm'") == "1.5"


# -- a legacy database in SQL_ASCII: the server keeps whatever bytes it was given -------------------------------

@pytest.fixture
def sql_ascii_db(pg_server: LocalCluster) -> Iterator[ProdDb]:
    """A production database in SQL_ASCII (psycopg returns its text as bytes, not str)."""
    name = "prod_ascii_" + uuid.uuid4().hex[:8]
    with pg_server.connect() as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C'")
    yield ProdDb(pg_server, name, pg_server.dsn(name))
    with pg_server.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Latin-1 bytes (not UTF-8), real UTF-8, bytes that are no text at all; a key, a comment and a view definition
# with such bytes too.
LEGACY_SETUP = r"""
    CREATE TABLE notes (id int PRIMARY KEY, body text, tag varchar(20));
    INSERT INTO notes VALUES (1, E'caf\xe9', 'latin-1'), (2, E'caf\xc3\xa9', 'utf-8'), (3, E'\xff\xfe raw', 'bytes'),
                             (4, 'plain', 'ascii');
    CREATE TABLE towns (name text PRIMARY KEY, people int);
    INSERT INTO towns VALUES (E'K\xf8ge', 37000), (E'\xc5rhus', 285000), ('Oslo', 700000);
    COMMENT ON TABLE notes IS E'd\xe9j\xe0 vu';
    CREATE VIEW latin_notes AS SELECT id FROM notes WHERE body = E'caf\xe9';
"""
LEGACY_BYTES = {  # the raw bytes, as hex, so the comparison is of bytes and not of any decoding
    "SELECT string_agg(id || '=' || encode(convert_to(body, 'SQL_ASCII'), 'hex'), ',' ORDER BY id) FROM notes":
        "1=636166e9,2=636166c3a9,3=fffe20726177,4=706c61696e",
    "SELECT string_agg(encode(convert_to(name, 'SQL_ASCII'), 'hex'), ',' ORDER BY name) FROM towns":
        "4bf86765,4f736c6f,c572687573",
    "SELECT encode(convert_to(obj_description('notes'::regclass, 'pg_class'), 'SQL_ASCII'), 'hex')": "64e96ae0207675",
    "SELECT count(*) FROM latin_notes": 1,
}


def _legacy_facts(db: ProdDb) -> dict[str, Any]:
    """LEGACY_BYTES's queries on ``db`` (a plain psycopg connection: SQL_ASCII text arrives as bytes)."""
    values = {query: db.scalar(query) for query in LEGACY_BYTES}
    return {q: v.decode() if isinstance(v, bytes) else v for q, v in values.items()}


@BOTH_BACKENDS
def test_a_sql_ascii_database_with_bytes_that_are_not_utf8_is_checkpointed_shadowed_diffed_and_restored(
        sql_ascii_db, store, backend):
    sql_ascii_db.execute(LEGACY_SETUP)
    assert _legacy_facts(sql_ascii_db) == LEGACY_BYTES
    target = sql_ascii_db.target()
    checkpoint = target.checkpoint(store, RUN_ID)  # failed: invalid snapshot identifier: "b'00000003-…'"
    assert checkpoint.meta["encoding"] == "SQL_ASCII"
    assert checkpoint.observation["objects"]["table"]["public.notes"]["comment"] == "déjà vu"

    with target.shadow(checkpoint, store, RUN_ID, backend) as sh:
        assert sh.fidelity == [] and sh.warnings == []
        assert {query: sh.check(query) for query in LEGACY_BYTES} == LEGACY_BYTES
        assert sh.check("SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()") \
            == "SQL_ASCII"
        assert sh.check("SELECT body FROM notes WHERE id = 2") == "café"  # UTF-8 in SQL_ASCII reads as itself
        run_in(sh, r"UPDATE notes SET body = E'na\xefve' WHERE id = 1",
               r"UPDATE notes SET body = E'\xe6\xf8\xe5' WHERE id = 4",
               r"INSERT INTO towns VALUES (E'T\xf8nsberg', 58000)",
               r"DELETE FROM towns WHERE name = E'K\xf8ge'",
               r"COMMENT ON TABLE notes IS E'd\xe9j\xe0 vu, again'")
        changes = everything(sh.changes())
        assert sorted(changes) == ["alter table public.notes", "delete rows public.towns", "insert rows public.towns",
                                   "update rows public.notes"]
        assert changes["update rows public.notes"].detail["count"] == 2
        assert changes["update rows public.notes"].detail["sample_keys"] == ["[1]", "[4]"]
        assert changes["insert rows public.towns"].detail["count"] == 1
        assert changes["delete rows public.towns"].detail["count"] == 1
        assert changes["delete rows public.towns"].detail["sample_keys"] == ['["Køge"]']
        assert changes["alter table public.notes"].detail["comment"] == {"from": "déjà vu",
                                                                         "to": "déjà vu, again"}
        assert sh.rehearse_rollback() == []

    sql_ascii_db.execute(r"UPDATE notes SET body = E'\xe9t\xe9'; DELETE FROM towns; DROP VIEW latin_notes;"
                         r"COMMENT ON TABLE notes IS E'\xa4'")
    assert target.fingerprint() != checkpoint.fingerprint
    target.restore(checkpoint, store)
    assert target.verify_restored(checkpoint) == []
    assert _legacy_facts(sql_ascii_db) == LEGACY_BYTES
