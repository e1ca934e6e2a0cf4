-- Production's data at revision 0002 (run after `python manage.py migrate billing 0002`): 40 customers, 200 invoices.
INSERT INTO customers (email, name)
SELECT 'customer' || g || '@example.com', 'Customer ' || g FROM generate_series(1, 40) g;
INSERT INTO invoices (customer_id, amount_cents, status)
SELECT 1 + (g % 40), (g * 7919) % 60000, (ARRAY['open', 'paid', 'paid', 'void'])[1 + g % 4]
FROM generate_series(1, 200) g;
