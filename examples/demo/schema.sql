-- The demo's "production": a small shop. Loaded by `shadow demo` into a throwaway local cluster.
CREATE TYPE order_status AS ENUM ('pending', 'paid', 'shipped', 'cancelled');

CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT '2026-01-01 00:00:00+00'
);

CREATE TABLE orders (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id),
    status      order_status NOT NULL DEFAULT 'pending',
    total_cents integer NOT NULL CHECK (total_cents >= 0),
    placed_at   timestamptz NOT NULL
);
CREATE INDEX orders_user_id_idx ON orders (user_id);

CREATE TABLE audit_log (            -- no primary key: compared as a multiset of rows
    happened_at timestamptz NOT NULL,
    message     text NOT NULL
);

CREATE VIEW paid_revenue AS
    SELECT u.id AS user_id, sum(o.total_cents) AS cents
    FROM users u JOIN orders o ON o.user_id = u.id
    WHERE o.status IN ('paid', 'shipped')
    GROUP BY u.id;

CREATE FUNCTION log_cancellation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_log VALUES (now(), 'order ' || NEW.id || ' cancelled');
    RETURN NEW;
END $$;

CREATE TRIGGER orders_cancelled AFTER UPDATE OF status ON orders
    FOR EACH ROW WHEN (NEW.status = 'cancelled') EXECUTE FUNCTION log_cancellation();

INSERT INTO users (email, full_name)
SELECT 'user' || g || '@example.com', 'User ' || g FROM generate_series(1, 500) g;

INSERT INTO orders (user_id, status, total_cents, placed_at)
SELECT 1 + (g % 500), (ARRAY['pending', 'paid', 'shipped', 'cancelled']::order_status[])[1 + g % 4],
       (g * 37) % 10000, '2026-01-01'::timestamptz + g * interval '1 hour'
FROM generate_series(1, 2000) g;

INSERT INTO audit_log VALUES ('2026-01-02', 'shop opened'), ('2026-01-02', 'shop opened');
