"""Connection helper: SHOP_DSN is a libpq URL (postgresql://...)."""

from __future__ import annotations

import os

import psycopg


def connect() -> psycopg.Connection:
    return psycopg.connect(os.environ["SHOP_DSN"], connect_timeout=5)
