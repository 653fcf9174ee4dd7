"""`restore`: a database of a stored set into a new database or, only with
--replace-live, over an existing one.

The safety rules, in order, each before anything changes:
  1. the set (default: the newest, tagged or not) and the database in it
     (default: the set's only one) must exist;
  2. the dump's checksum must match (a damaged dump touches nothing);
  3. an encrypted set is refused (the host has no private key);
  4. a target database that exists is replaced only with --replace-live
     (`--check` reports whether it exists and changes nothing; the playbook
     asks for the confirmation before passing --replace-live).
Then: a safety backup of the database about to be replaced
(<dir>/safety/<target>-<UTC time>.dump + .sha256), a restore into the staging
database <target>__restore with --exit-on-error, its row counts against the
manifest, and the swap: the live database is closed and renamed to
<target>__old, the staging one renamed to <target> (on failure the old one
goes back), the old one dropped. The staging database never survives.
"""

from __future__ import annotations

import json
import os
from typing import Any

import backups_lib  # same file as filter_plugins/backups.py

from . import store
from .common import BackupError, scratch_name, utcnow
from .postgres import Error as DatabaseError


def plan(cfg: dict[str, Any], pg, name: str | None, database: str | None, target: str | None) -> dict[str, Any]:
    """What a restore would do, after rules 1-3: {set, database, target, live, info, set_dir}."""
    name = store.choose_set(cfg["dir"], name)
    manifest = store.manifest(cfg["dir"], name)
    if database is None:
        if len(manifest["databases"]) != 1:
            raise BackupError(f"set {name} holds {', '.join(manifest['databases'])}: name the database")
        database = next(iter(manifest["databases"]))
    if database not in manifest["databases"]:
        raise BackupError(f"set {name} has no database {database}")
    info = manifest["databases"][database]
    target = target or database
    set_dir = os.path.join(cfg["dir"], name)
    # Checksum first: nothing is touched for a damaged dump.
    store.check_checksum(set_dir, info["file"])
    if manifest["encryption"] != "none":
        raise BackupError(f"set {name} is encrypted; decrypt {info['file']} with the private key "
                          "elsewhere and restore it with pg_restore")
    return {"set": name, "database": database, "target": target, "live": pg.database_exists(target),
            "info": info, "set_dir": set_dir}


def check_report(restore_plan: dict[str, Any]) -> dict[str, Any]:
    """What `restore --check` prints (playbooks/restore.yml decides on it)."""
    info = restore_plan["info"]
    return {"set": restore_plan["set"], "database": restore_plan["database"], "target": restore_plan["target"],
            "live": restore_plan["live"], "checksum": "ok", "size": info["size"], "tables": len(info["tables"]),
            "rows": sum(info["tables"].values())}


def safety_backup(cfg: dict[str, Any], pg, database: str) -> str:
    """Dump DATABASE to <dir>/safety/<database>-<UTC time>.dump with its checksum; the dump's path."""
    safety_dir = os.path.join(cfg["dir"], "safety")
    os.makedirs(safety_dir, mode=0o700, exist_ok=True)
    rel = f"{database}-{backups_lib.set_name(utcnow())}.dump"
    pg.dump_safety(database, os.path.join(safety_dir, rel + ".tmp"))
    os.replace(os.path.join(safety_dir, rel + ".tmp"), os.path.join(safety_dir, rel))
    store.write_checksum(safety_dir, rel)
    return os.path.join(safety_dir, rel)


def swap_in(pg, staging: str, target: str) -> None:
    """Replace the live TARGET by STAGING (its GRANTs copied); on a failed rename TARGET goes back."""
    pg.copy_database_acl(target, staging)
    old = scratch_name(target, "__old")
    pg.drop_database(old)
    pg.close_connections(target)
    pg.rename_database(target, old)
    try:
        pg.rename_database(staging, target)
    except DatabaseError:
        pg.rename_database(old, target)  # put the live database back as it was
        pg.allow_connections(target)
        raise
    pg.drop_database(old)  # the safety backup holds it


def restore(cfg: dict[str, Any], pg, restore_plan: dict[str, Any], replace_live: bool) -> dict[str, Any]:
    """Carry out RESTORE_PLAN (rule 4 first): the result `restore` prints."""
    name, target, live, info = (restore_plan[k] for k in ("set", "target", "live", "info"))
    if live and not replace_live:
        raise BackupError(f"database {target} exists; refusing to replace it without --replace-live")
    result: dict[str, Any] = {"set": name, "database": restore_plan["database"], "target": target,
                              "replaced_live": live}
    if live:
        result["safety_backup"] = safety_backup(cfg, pg, target)
    staging = scratch_name(target, "__restore")
    pg.drop_database(staging)
    try:
        pg.restore_into(os.path.join(restore_plan["set_dir"], info["file"]), staging, owner=info.get("owner"))
        restored = pg.counts_of(staging)
        if restored != info["tables"]:
            raise BackupError(f"restored row counts differ from the manifest of {name}")
        if live:
            swap_in(pg, staging, target)
        else:
            pg.rename_database(staging, target)
    finally:
        pg.drop_database(staging)
    result["tables"] = restored
    result["rows"] = sum(restored.values())
    return result


def cmd_restore(cfg: dict[str, Any], pg, name: str | None, database: str | None, target: str | None,
                replace_live: bool, check_only: bool = False) -> int:
    """`restore [--set SET] [--database DB] [--target NAME] [--replace-live] [--check]`: prints JSON."""
    restore_plan = plan(cfg, pg, name, database, target)
    if check_only:
        print(json.dumps(check_report(restore_plan), sort_keys=True))
        return 0
    print(json.dumps(restore(cfg, pg, restore_plan, replace_live), sort_keys=True))
    return 0
