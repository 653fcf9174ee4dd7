"""The web app, built by a factory: uvicorn shopapi.main:create_app --factory."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel, Field

from shopapi.db import connect


class Item(BaseModel):
    name: str = Field(min_length=1, max_length=200)


def release_id() -> str:
    try:
        return (Path(__file__).resolve().parent.parent / "RELEASE_ID").read_text(encoding="utf-8").strip()
    except OSError:
        return "unknown"


def create_app() -> FastAPI:
    app = FastAPI(title="shopapi", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/api/healthz")
    def healthz() -> dict:
        return {"status": "ok", "release": release_id()}

    @app.post("/api/items", status_code=201)
    def add_item(item: Item) -> dict:
        with connect() as conn:
            row = conn.execute("INSERT INTO items (name) VALUES (%s) RETURNING id", (item.name,)).fetchone()
        return {"id": row[0], "name": item.name}

    @app.get("/api/items")
    def list_items() -> dict:
        with connect() as conn:
            rows = conn.execute("SELECT id, name, processed FROM items ORDER BY id").fetchall()
        return {"items": [{"id": r[0], "name": r[1], "processed": r[2]} for r in rows]}

    @app.get("/api/egress")
    def egress(url: str) -> dict:
        """Fetch a URL from the app's process: shows what its egress rules allow."""
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                return {"url": url, "status": response.status}
        except urllib.error.HTTPError as exc:
            return {"url": url, "status": exc.code}
        except (OSError, ValueError) as exc:
            return {"url": url, "error": f"{type(exc).__name__}: {exc}"}

    return app
