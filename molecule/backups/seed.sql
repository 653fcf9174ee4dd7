-- Deterministic test data: the same row counts on every run, inserted once.
\set ON_ERROR_STOP on
SET ROLE app_owner;
CREATE TABLE IF NOT EXISTS customers (id bigserial PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers,
  placed_at timestamptz NOT NULL, note text);
CREATE TABLE IF NOT EXISTS order_items (order_id bigint NOT NULL REFERENCES orders, line int NOT NULL,
  sku text NOT NULL, quantity int NOT NULL, PRIMARY KEY (order_id, line));
CREATE SCHEMA IF NOT EXISTS audit;
CREATE TABLE IF NOT EXISTS audit.events (id bigserial PRIMARY KEY, payload jsonb NOT NULL);
INSERT INTO customers (name, email)
  SELECT 'customer ' || g, 'c' || g || '@example.test' FROM generate_series(1, 2000) g
  WHERE NOT EXISTS (SELECT 1 FROM customers);
INSERT INTO orders (customer_id, placed_at, note)
  SELECT 1 + g % 2000, timestamptz '2025-01-01' + g * interval '7 minutes', repeat('n', g % 50)
  FROM generate_series(1, 5000) g WHERE NOT EXISTS (SELECT 1 FROM orders);
INSERT INTO order_items (order_id, line, sku, quantity)
  SELECT 1 + g % 5000, g / 5000, 'sku-' || (g % 97), 1 + g % 5
  FROM generate_series(0, 12344) g WHERE NOT EXISTS (SELECT 1 FROM order_items);
INSERT INTO audit.events (payload)
  SELECT jsonb_build_object('n', g, 'kind', 'seed') FROM generate_series(1, 3100) g
  WHERE NOT EXISTS (SELECT 1 FROM audit.events);
