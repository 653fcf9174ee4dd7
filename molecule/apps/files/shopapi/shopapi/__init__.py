"""shopapi: the apps scenario's Python API (not the demo app).

FastAPI behind an app factory, psycopg 3 with plain SQL, its own migration,
worker and nightly commands; the database URL comes from SHOP_DSN.
"""
