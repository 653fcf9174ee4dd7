"""Verification: restore a dump into a scratch database <db>__verify and
compare its per-table row counts with the counts taken at dump time (every
run does it for its new dumps); `verify [SET]` re-checks a stored set
(checksums first, then the test restore; encrypted sets: checksums only)."""

from __future__ import annotations

import os
import time
from typing import Any

from . import status, store
from .common import BackupError, iso, log, scratch_name, utcnow
from .postgres import Error as DatabaseError


def verify_dump(pg, dump: str, database: str, expected: dict[str, int]) -> dict[str, Any]:
    """Restore DUMP into a scratch database and compare per-table row counts."""
    scratch = scratch_name(database, "__verify")
    start = time.monotonic()
    pg.drop_database(scratch)
    try:
        pg.restore_into(dump, scratch)
        restored = pg.counts_of(scratch)
    finally:
        pg.drop_database(scratch)
    if restored != expected:
        diff = sorted(set(expected) ^ set(restored)) + sorted(
            t for t in set(expected) & set(restored) if expected[t] != restored[t])
        detail = ", ".join(f"{t}: {expected.get(t)} vs {restored.get(t)}" for t in diff[:5])
        raise BackupError(f"verification of {database}: row counts differ (dumped vs restored) {detail}")
    return {"verified": True, "verify_seconds": round(time.monotonic() - start, 1),
            "verified_rows": sum(restored.values())}


def verify_set(cfg: dict[str, Any], pg, name: str) -> dict[str, Any]:
    """Checksums of every file of set NAME, then a test restore of each dump against the manifest."""
    manifest = store.manifest(cfg["dir"], name)
    set_dir = os.path.join(cfg["dir"], name)
    result: dict[str, Any] = {"set": name, "databases": {}}
    store.check_checksum(set_dir, manifest["globals"])
    for database, info in manifest["databases"].items():
        store.check_checksum(set_dir, info["file"])
        if manifest["encryption"] != "none":
            result["databases"][database] = {"checksum": "ok", "restore": "skipped (encrypted)"}
            continue
        outcome = verify_dump(pg, os.path.join(set_dir, info["file"]), database, info["tables"])
        result["databases"][database] = {"checksum": "ok", **outcome}
    return result


def cmd_verify(cfg: dict[str, Any], pg, name: str | None) -> int:
    """`verify [SET]` (the <name>-verify unit): the newest set by default; recorded as last_verify."""
    record: dict[str, Any] = {"started": iso(utcnow())}
    try:
        name = store.choose_set(cfg["dir"], name)
        record.update(verify_set(cfg, pg, name))
    except (BackupError, OSError, ValueError, KeyError, DatabaseError) as exc:
        record.update({"set": name, "result": "failed", "error": str(exc).strip(), "finished": iso(utcnow())})
        status.write_status(cfg, "last_verify", record, good=False)
        log(f"verify result=failed set={name} error={record['error']}")
        return 1
    record.update({"result": "ok", "finished": iso(utcnow())})
    status.write_status(cfg, "last_verify", record, good=True)
    log(f"verify result=ok set={name} databases={len(record['databases'])}")
    return 0
