"""`run`: one backup set, then its off-site copies, retention and the status record.

A set is written as .partial-<name> and renamed to <name> only when complete:
per database a pg_dump in the snapshot its row counts were taken in, a
sha256sum-format checksum, the test restore (verify.verify_dump) of exactly
the checksummed bytes, optional encryption to public keys; then the globals,
the manifest and an fsync of everything. Any failure removes the partial set,
skips retention, records last_run as failed and exits 1 (the unit fails and
OnFailure= alerts).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from typing import Any

import backups_lib  # same file as filter_plugins/backups.py

from . import offsite as offsite_copy
from . import retention as retention_policy
from . import status, store
from .common import BackupError, iso, log, run_cmd, utcnow
from .verify import verify_dump


def encrypt(enc: dict[str, Any], src: str, dst: str) -> None:
    """Encrypt SRC to DST for the configured recipients (age or gpg public keys)."""
    tmp = dst + ".tmp"
    if enc["method"] == "age":
        argv = ["age"]
        for recipient in enc["recipients"]:
            argv += ["-r", recipient]
        argv += ["-o", tmp, src]
    else:
        argv = ["gpg", "--homedir", enc["gpg_homedir"], "--batch", "--yes", "--trust-model", "always",
                "--output", tmp, "--encrypt"]
        for recipient in enc["recipients"]:
            argv += ["--recipient", recipient]
        argv.append(src)
    run_cmd(argv, f"{enc['method']} encryption of {os.path.basename(src)}")
    os.replace(tmp, dst)


def dump_database(cfg: dict[str, Any], pg, partial: str, database: str, verify: bool) -> dict[str, Any]:
    """Dump, checksum, verify and encrypt one database into the partial set: its manifest entry."""
    encryption = cfg["encryption"]["method"]
    plain_rel = f"{database}.{'dir' if cfg['format'] == 'directory' else 'dump'}"
    plain = os.path.join(partial, plain_rel)
    info = pg.dump(database, plain + ".tmp")
    os.replace(plain + ".tmp", plain)
    rel = plain_rel
    if encryption == "none":
        info["sha256"] = store.write_checksum(partial, rel)
    if verify:
        # Restore exactly the bytes that were checksummed (or, when
        # encrypting, the plaintext before it leaves the host encrypted).
        if encryption == "none":
            store.check_checksum(partial, rel)
        info.update(verify_dump(pg, plain, database, info["tables"]))
    else:
        info["verified"] = False
    if encryption != "none":
        rel = f"{plain_rel}.{encryption}"
        encrypt(cfg["encryption"], plain, os.path.join(partial, rel))
        os.remove(plain)
        info["sha256"] = store.write_checksum(partial, rel)
    info["file"] = rel
    info["size"] = store.size_of(os.path.join(partial, rel))
    log(f"database={database} size={info['size']} tables={len(info['tables'])} "
        f"rows={sum(info['tables'].values())} verified={str(info['verified']).lower()}")
    return info


def write_set(cfg: dict[str, Any], pg, partial: str, manifest: dict[str, Any], verify: bool) -> dict[str, Any]:
    """Fill the new directory PARTIAL: every database, the globals, the manifest; flushed to disk."""
    encryption = cfg["encryption"]["method"]
    os.mkdir(partial, 0o700)
    databases = list(cfg["databases"]) or pg.databases()
    if not databases:
        raise BackupError("no database to back up")
    for database in databases:
        manifest["databases"][database] = dump_database(cfg, pg, partial, database, verify)
    globals_rel = "globals.sql"
    tmp = os.path.join(partial, globals_rel + ".tmp")
    pg.dump_globals(tmp)
    if encryption != "none":
        encrypt(cfg["encryption"], tmp, os.path.join(partial, f"{globals_rel}.{encryption}"))
        os.remove(tmp)
        globals_rel = f"{globals_rel}.{encryption}"
    else:
        os.replace(tmp, os.path.join(partial, globals_rel))
    store.write_checksum(partial, globals_rel)
    manifest["globals"] = globals_rel
    manifest["finished"] = iso(utcnow())
    manifest["size"] = sum(store.size_of(os.path.join(partial, f)) for f in os.listdir(partial))
    store.write_manifest(partial, manifest)
    store.fsync_tree(partial)
    return manifest


def cmd_run(cfg: dict[str, Any], pg, verify: bool, offsite: bool, retention: bool, tag: str = "") -> int:
    """`run [--tag TAG]`: a new set <UTC time>[-TAG]; 0 when everything asked for succeeded."""
    started = utcnow()
    clock = time.monotonic()
    name = backups_lib.set_name(started, tag)
    partial = os.path.join(cfg["dir"], store.PARTIAL_PREFIX + name)
    final = os.path.join(cfg["dir"], name)
    verify = verify and cfg["verify"]
    record: dict[str, Any] = {"set": name, "tag": tag, "started": iso(started), "host": socket.gethostname()}
    try:
        store.remove_partials(cfg["dir"])  # left behind by a killed run
        manifest = write_set(cfg, pg, partial, {
            "set": name, "tag": tag, "started": iso(started), "format": cfg["format"],
            "compress_args": cfg["compress_args"], "encryption": cfg["encryption"]["method"], "databases": {}},
            verify)
        os.rename(partial, final)
        store.fsync_dir(cfg["dir"])
        record.update({"databases": {d: {**{k: v for k, v in i.items() if k != "tables"},
                                         "tables": len(i["tables"]), "rows": sum(i["tables"].values())}
                                     for d, i in manifest["databases"].items()},
                       "size": manifest["size"], "verified": verify})
        if offsite:
            record["offsite"] = offsite_copy.copy(cfg, final)
        if retention:
            record["pruned"] = retention_policy.prune(cfg)
    except Exception as exc:  # noqa: BLE001 - whatever failed, record it, clean up and fail the unit
        shutil.rmtree(partial, ignore_errors=True)
        record.update({"result": "failed", "error": str(exc).strip(), "finished": iso(utcnow()),
                       "duration_seconds": round(time.monotonic() - clock, 1)})
        status.write_status(cfg, "last_run", record, good=False)
        log(f"result=failed set={name} duration={record['duration_seconds']}s error={record['error']}")
        return 1
    record.update({"result": "ok", "finished": iso(utcnow()),
                   "duration_seconds": round(time.monotonic() - clock, 1)})
    status.write_status(cfg, "last_run", record, good=True)
    log(f"result=ok set={name} databases={len(record['databases'])} size={record['size']} "
        f"duration={record['duration_seconds']}s verified={str(verify).lower()} "
        f"offsite={','.join(record.get('offsite', [])) or 'none'} pruned={len(record.get('pruned', []))}")
    status.checkin(cfg)
    return 0
