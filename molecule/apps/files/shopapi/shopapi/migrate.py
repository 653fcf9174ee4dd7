"""python -m shopapi.migrate: create the tables (idempotent, plain SQL, no Alembic)."""

from __future__ import annotations

from shopapi.db import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    processed boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS runs (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    ran_at timestamptz NOT NULL DEFAULT now()
);
"""


def main() -> None:
    with connect() as conn:
        conn.execute(SCHEMA)
    print("shopapi schema ready")


if __name__ == "__main__":
    main()
