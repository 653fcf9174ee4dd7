"""A small FastAPI app: liveness, database readiness and one table.

Configuration comes from the environment (the app_service role writes it to
an EnvironmentFile): DATABASE_URL is the runtime (DML-only) role's URL.
The release id is read from the RELEASE_ID file the role writes into each
release directory (or APP_RELEASE_ID when set).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

app = FastAPI(title="demo_app", docs_url=None, redoc_url=None, openapi_url=None)

# Requests answered by this process, by method and status code, for /metrics.
# Each uvicorn worker counts its own; Prometheus sums what it scrapes.
_requests: Counter[tuple[str, int]] = Counter()
_requests_lock = threading.Lock()


@app.middleware("http")
async def count_requests(request: Request, call_next):
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        with _requests_lock:
            _requests[(request.method, status)] += 1


def release_id() -> str:
    """The release this process runs, as deployed by the role."""
    if os.environ.get("APP_RELEASE_ID"):
        return os.environ["APP_RELEASE_ID"]
    marker = Path(__file__).resolve().parent.parent / "RELEASE_ID"
    try:
        return marker.read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"


def dsn() -> str:
    """DATABASE_URL as libpq understands it (drop a SQLAlchemy '+driver')."""
    url = os.environ.get("DATABASE_URL", "")
    scheme, sep, rest = url.partition("://")
    return scheme.split("+", 1)[0] + sep + rest if sep else url


def connect() -> psycopg.Connection:
    return psycopg.connect(dsn(), connect_timeout=3, application_name="demo_app")


@app.get("/health")
def health() -> JSONResponse:
    """Liveness: the process answers. No database access."""
    return JSONResponse({"status": "ok", "release": release_id()}, status_code=200)


@app.get("/metrics", response_class=PlainTextResponse)
def metrics() -> str:
    """Prometheus text format: requests by method and code, and the release."""
    with _requests_lock:
        counts = sorted(_requests.items())
    lines = ["# HELP demo_app_requests_total Requests answered, by method and status code.",
             "# TYPE demo_app_requests_total counter"]
    lines += [f'demo_app_requests_total{{method="{method}",code="{code}"}} {n}' for (method, code), n in counts]
    lines += ["# HELP demo_app_release_info The release this process runs.",
              "# TYPE demo_app_release_info gauge",
              f'demo_app_release_info{{release="{release_id()}"}} 1']
    return "\n".join(lines) + "\n"


@app.get("/health/db")
def health_db() -> JSONResponse:
    """Readiness: SELECT 1 and the Alembic revision; 503 when unreachable."""
    try:
        with connect() as conn:
            conn.execute("SELECT 1")
            user = conn.execute("SELECT current_user").fetchone()[0]
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except psycopg.Error as exc:
        return JSONResponse({"status": "unavailable", "error": type(exc).__name__,
                             "release": release_id()}, status_code=503)
    return JSONResponse({"status": "ok", "revision": row[0] if row else None,
                         "db_user": user, "release": release_id()})


class NoteIn(BaseModel):
    body: str = Field(min_length=1, max_length=1000)


@app.post("/notes", status_code=201)
def create_note(note: NoteIn) -> dict:
    with connect() as conn:
        new_id = conn.execute("INSERT INTO notes (body) VALUES (%s) RETURNING id",
                              (note.body,)).fetchone()[0]
    return {"id": new_id, "body": note.body}


@app.get("/notes")
def list_notes(limit: int = 20) -> dict:
    with connect() as conn:
        rows = conn.execute("SELECT id, body FROM notes ORDER BY id DESC LIMIT %s",
                            (max(1, min(limit, 100)),)).fetchall()
    return {"notes": [{"id": r[0], "body": r[1]} for r in rows]}
