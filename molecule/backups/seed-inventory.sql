-- A second database so the per-database summary and restores have a choice.
\set ON_ERROR_STOP on
SET ROLE app_owner;
CREATE TABLE IF NOT EXISTS stock (sku text PRIMARY KEY, on_hand int NOT NULL);
INSERT INTO stock SELECT 'sku-' || g, g % 40 FROM generate_series(1, 3000) g
  WHERE NOT EXISTS (SELECT 1 FROM stock);
