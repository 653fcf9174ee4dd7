"""python -m shopapi.nightly: record one run in the runs table."""

from __future__ import annotations

from shopapi.db import connect


def main() -> None:
    with connect() as conn:
        row = conn.execute("INSERT INTO runs (kind) VALUES ('nightly') RETURNING id").fetchone()
    print(f"nightly run {row[0]}")


if __name__ == "__main__":
    main()
