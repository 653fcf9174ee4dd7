#!/usr/bin/python3
"""PostgreSQL backup runner installed by the Ansible role `backups`.

Runs as the PostgreSQL superuser's OS account with peer authentication over
the unix socket: no password file exists anywhere.

  backup.py --config FILE run [--tag TAG] [--no-verify] [--no-offsite] [--no-retention]
  backup.py --config FILE verify [SET]          checksums + test restore of a stored set
  backup.py --config FILE restore [--set SET] --database DB [--target NAME] [--replace-live]
  backup.py --config FILE list [--json]
  backup.py --config FILE status
  backup.py --config FILE alert UNIT            the OnFailure= hook

Every external command is checked (the equivalent of `set -euo pipefail`): a
non-zero exit anywhere fails the run, removes its partial files, skips
retention and exits 1 so the systemd unit fails and OnFailure= fires.

A run with --tag makes a set named <UTC time>-<tag> (the unit
<name>-tagged@<tag>.service does that); retention keeps tagged sets apart
from the grandfather-father-son sets (backups_lib.retention_keep).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backups_lib  # noqa: E402  same file as filter_plugins/backups.py

import psycopg2  # noqa: E402
from psycopg2 import extensions, sql  # noqa: E402

MANIFEST = "manifest.json"
PARTIAL_PREFIX = ".partial-"
HTTP_TIMEOUT = 15


class BackupError(Exception):
    """A failure that fails the run with a one-line reason."""


def log(msg: str) -> None:
    print(msg, flush=True)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Runner:
    """Holds the configuration and implements the sub-commands."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        self.dir = cfg["dir"]
        self.bin = cfg["bin_dir"]
        self.conn_args = ["-h", cfg["socket_dir"], "-p", str(cfg["port"])]

    # ------------------------------------------------------------ helpers
    def connect(self, database: str = "postgres"):
        conn = psycopg2.connect(host=self.cfg["socket_dir"], port=self.cfg["port"], dbname=database,
                                application_name=self.cfg["name"])
        return conn

    def admin(self, statement: Any, params: tuple = ()) -> list[tuple]:
        """Run one statement in autocommit on the postgres database."""
        conn = self.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def run_cmd(self, argv: list[str], what: str) -> None:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise BackupError(f"{what} failed (exit {proc.returncode}): {' | '.join(detail)}")

    def database_exists(self, database: str) -> bool:
        return bool(self.admin("SELECT 1 FROM pg_database WHERE datname = %s", (database,)))

    def drop_database(self, database: str) -> None:
        self.admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))

    def rename_database(self, old: str, new: str) -> None:
        self.admin(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))

    def copy_database_acl(self, source: str, target: str) -> None:
        """GRANT ... ON DATABASE are not inside a pg_dump archive restored without --create: copy them."""
        if not self.admin("SELECT datacl IS NOT NULL FROM pg_database WHERE datname = %s", (source,))[0][0]:
            return
        target_id = sql.Identifier(target)
        self.admin(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(target_id))
        rows = self.admin("SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN NULL "
                          "ELSE pg_get_userbyid(a.grantee) END, a.is_grantable "
                          "FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s", (source,))
        for privilege, grantee, grantable in rows:
            statement = sql.SQL("GRANT {} ON DATABASE {} TO {}").format(
                sql.SQL(privilege), target_id, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"))
            if grantable:
                statement = sql.SQL("{} WITH GRANT OPTION").format(statement)
            self.admin(statement)

    def scratch_name(self, database: str, suffix: str) -> str:
        return f"{database[:63 - len(suffix)]}{suffix}"

    def list_databases(self) -> list[str]:
        if self.cfg["databases"]:
            return list(self.cfg["databases"])
        rows = self.admin(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
            "AND datname <> 'postgres' AND datname NOT LIKE %s AND datname NOT LIKE %s ORDER BY datname",
            ("%\\_\\_verify", "%\\_\\_restore"))
        return [r[0] for r in rows]

    @staticmethod
    def table_query(cur) -> list[tuple[str, str]]:
        cur.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' "
            "ORDER BY 1, 2")
        return cur.fetchall()

    @staticmethod
    def count_tables(cur, tables: list[tuple[str, str]]) -> dict[str, int]:
        counts = {}
        for schema, table in tables:
            cur.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(schema),
                                                                           sql.Identifier(table)))
            counts[f"{schema}.{table}"] = cur.fetchone()[0]
        return counts

    def counts_of(self, database: str) -> dict[str, int]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                return self.count_tables(cur, self.table_query(cur))
        finally:
            conn.close()

    # ------------------------------------------------------------ checksums
    @staticmethod
    def sha256_file(path: str) -> str:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def write_checksum(self, set_dir: str, rel: str) -> str:
        """Write REL.sha256 in sha256sum format (one line per file of a directory dump)."""
        target = os.path.join(set_dir, rel)
        files = [rel]
        if os.path.isdir(target):
            files = sorted(os.path.join(rel, f) for f in os.listdir(target))
        lines = [f"{self.sha256_file(os.path.join(set_dir, f))}  {f}\n" for f in files]
        tmp = os.path.join(set_dir, f".{rel}.sha256.tmp")
        with open(tmp, "w", encoding="ascii") as handle:
            handle.writelines(lines)
        os.replace(tmp, os.path.join(set_dir, f"{rel}.sha256"))
        return lines[0].split()[0] if len(lines) == 1 else self.sha256_file(os.path.join(set_dir, f"{rel}.sha256"))

    @staticmethod
    def check_checksum(set_dir: str, rel: str) -> None:
        sums = os.path.join(set_dir, f"{rel}.sha256")
        if not os.path.isfile(sums):
            raise BackupError(f"checksum file {sums} is missing")
        with open(sums, encoding="ascii") as handle:
            lines = [ln.split(None, 1) for ln in handle if ln.strip()]
        for expected, name in lines:
            name = name.strip()
            path = os.path.join(set_dir, name)
            if not os.path.isfile(path):
                raise BackupError(f"{path} listed in {sums} is missing")
            actual = Runner.sha256_file(path)
            if actual != expected:
                raise BackupError(f"checksum mismatch for {path}: expected {expected}, got {actual}")

    @staticmethod
    def size_of(path: str) -> int:
        if os.path.isdir(path):
            return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        return os.path.getsize(path)

    @staticmethod
    def fsync_dir(path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_tree(self, path: str) -> None:
        """Flush every file of a set, then the directories, before the set is renamed into place."""
        for root, _, files in os.walk(path):
            for name in files:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self.fsync_dir(root)

    # ------------------------------------------------------------ dump / restore
    def dump_database(self, database: str, out: str) -> dict[str, Any]:
        """pg_dump DATABASE to OUT while counting every table in the same snapshot."""
        conn = self.connect(database)
        try:
            conn.set_session(isolation_level=extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
            with conn.cursor() as cur:
                cur.execute("SELECT pg_export_snapshot(), pg_get_userbyid(datdba) FROM pg_database "
                            "WHERE datname = current_database()")
                snapshot, owner = cur.fetchone()
                tables = self.table_query(cur)
                argv = [os.path.join(self.bin, "pg_dump"), *self.conn_args, f"--snapshot={snapshot}",
                        *self.cfg["compress_args"], "-f", out]
                if self.cfg["format"] == "directory":
                    argv += ["-Fd", "-j", str(self.cfg["jobs"])]
                else:
                    argv += ["-Fc"]
                argv.append(database)
                with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
                    # The counts run beside pg_dump in the snapshot pg_dump imported.
                    counts = self.count_tables(cur, tables)
                    _, err = proc.communicate()
                if proc.returncode != 0:
                    raise BackupError(f"pg_dump {database} failed (exit {proc.returncode}): {err.strip()}")
        finally:
            conn.close()
        return {"owner": owner, "tables": counts}

    def restore_into(self, dump: str, target: str, owner: str | None = None) -> None:
        """Create TARGET (which must not exist) and pg_restore DUMP into it, stopping at the first error."""
        create = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(target))
        if owner:
            create = sql.SQL("{} OWNER {}").format(create, sql.Identifier(owner))
        self.admin(create)
        self.run_cmd([os.path.join(self.bin, "pg_restore"), *self.conn_args, "--exit-on-error",
                      "-j", str(self.cfg["jobs"]), "-d", target, dump], f"pg_restore into {target}")

    def verify_dump(self, dump: str, database: str, expected: dict[str, int]) -> dict[str, Any]:
        """Restore DUMP into a scratch database and compare per-table row counts."""
        scratch = self.scratch_name(database, "__verify")
        start = time.monotonic()
        self.drop_database(scratch)
        try:
            self.restore_into(dump, scratch)
            restored = self.counts_of(scratch)
        finally:
            self.drop_database(scratch)
        if restored != expected:
            diff = sorted(set(expected) ^ set(restored)) + sorted(
                t for t in set(expected) & set(restored) if expected[t] != restored[t])
            detail = ", ".join(f"{t}: {expected.get(t)} vs {restored.get(t)}" for t in diff[:5])
            raise BackupError(f"verification of {database}: row counts differ (dumped vs restored) {detail}")
        return {"verified": True, "verify_seconds": round(time.monotonic() - start, 1),
                "verified_rows": sum(restored.values())}

    def encrypt(self, src: str, dst: str) -> None:
        enc = self.cfg["encryption"]
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
        self.run_cmd(argv, f"{enc['method']} encryption of {os.path.basename(src)}")
        os.replace(tmp, dst)

    # ------------------------------------------------------------ sets
    def sets(self) -> list[str]:
        """Complete sets (renamed from their partial name, manifest present), newest first."""
        if not os.path.isdir(self.dir):
            return []
        found = [n for n in os.listdir(self.dir)
                 if backups_lib.SET_NAME_RE.match(n) and os.path.isfile(os.path.join(self.dir, n, MANIFEST))]
        return sorted(found, reverse=True)

    def manifest(self, name: str) -> dict[str, Any]:
        with open(os.path.join(self.dir, name, MANIFEST), encoding="utf-8") as handle:
            return json.load(handle)

    # ------------------------------------------------------------ status
    def read_status(self) -> dict[str, Any]:
        try:
            with open(self.cfg["status_file"], encoding="utf-8") as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}

    def write_status(self, key: str, value: dict[str, Any], good: bool) -> None:
        status = self.read_status()
        status[key] = value
        if good and key == "last_run":
            status["last_good"] = value
        if good and key == "last_verify":
            status["last_good_verify"] = value
        tmp = self.cfg["status_file"] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(status, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.cfg["status_file"])

    # ------------------------------------------------------------ off-site
    def offsite(self, set_dir: str) -> list[str]:
        done = []
        rsync = self.cfg.get("offsite_rsync")
        if rsync:
            ssh = ["ssh", "-p", str(rsync["port"]), "-i", rsync["ssh_key"], "-o", "BatchMode=yes",
                   "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={rsync['known_hosts']}",
                   "-o", "ConnectTimeout=20"]
            self.run_cmd(["rsync", "-a", "--partial", "--timeout=300", "-e", " ".join(ssh),
                          set_dir, rsync["destination"].rstrip("/") + "/"], "off-site rsync")
            done.append("rsync")
        rclone = self.cfg.get("offsite_rclone")
        if rclone:
            self.run_cmd(["rclone", "--config", rclone["config"], "copy", set_dir,
                          f"{rclone['remote'].rstrip('/')}/{os.path.basename(set_dir)}"], "off-site rclone")
            done.append("rclone")
        return done

    def retention(self) -> list[str]:
        names = self.sets()
        prune = backups_lib.retention_prune(names, self.cfg["retention"], tagged=self.cfg["keep_tagged"])
        newest = names[0] if names else None
        for name in prune:
            if name == newest:  # retention_prune never returns it; belt and braces
                continue
            shutil.rmtree(os.path.join(self.dir, name))
        return prune

    # ------------------------------------------------------------ commands
    def cmd_run(self, verify: bool, offsite: bool, retention: bool, tag: str = "") -> int:
        started = utcnow()
        clock = time.monotonic()
        name = backups_lib.set_name(started, tag)
        partial = os.path.join(self.dir, PARTIAL_PREFIX + name)
        final = os.path.join(self.dir, name)
        verify = verify and self.cfg["verify"]
        encryption = self.cfg["encryption"]["method"]
        record: dict[str, Any] = {"set": name, "tag": tag, "started": iso(started), "host": socket.gethostname()}
        try:
            for stale in os.listdir(self.dir):  # left behind by a killed run
                if stale.startswith(PARTIAL_PREFIX):
                    shutil.rmtree(os.path.join(self.dir, stale))
            os.mkdir(partial, 0o700)
            databases = self.list_databases()
            if not databases:
                raise BackupError("no database to back up")
            manifest: dict[str, Any] = {"set": name, "tag": tag, "started": iso(started), "format": self.cfg["format"],
                                        "compress_args": self.cfg["compress_args"], "encryption": encryption,
                                        "databases": {}}
            for database in databases:
                ext = "dir" if self.cfg["format"] == "directory" else "dump"
                plain_rel = f"{database}.{ext}"
                plain = os.path.join(partial, plain_rel)
                info = self.dump_database(database, plain + ".tmp")
                os.replace(plain + ".tmp", plain)
                rel = plain_rel
                if encryption == "none":
                    info["sha256"] = self.write_checksum(partial, rel)
                if verify:
                    # Restore exactly the bytes that were checksummed (or, when
                    # encrypting, the plaintext before it leaves the host encrypted).
                    if encryption == "none":
                        self.check_checksum(partial, rel)
                    info.update(self.verify_dump(plain, database, info["tables"]))
                else:
                    info["verified"] = False
                if encryption != "none":
                    rel = f"{plain_rel}.{encryption}"
                    self.encrypt(plain, os.path.join(partial, rel))
                    os.remove(plain)
                    info["sha256"] = self.write_checksum(partial, rel)
                info["file"] = rel
                info["size"] = self.size_of(os.path.join(partial, rel))
                manifest["databases"][database] = info
                log(f"database={database} size={info['size']} tables={len(info['tables'])} "
                    f"rows={sum(info['tables'].values())} verified={str(info['verified']).lower()}")
            globals_rel = "globals.sql"
            tmp = os.path.join(partial, globals_rel + ".tmp")
            self.run_cmd([os.path.join(self.bin, "pg_dumpall"), *self.conn_args, "--globals-only", "-f", tmp],
                         "pg_dumpall --globals-only")
            if encryption != "none":
                self.encrypt(tmp, os.path.join(partial, f"{globals_rel}.{encryption}"))
                os.remove(tmp)
                globals_rel = f"{globals_rel}.{encryption}"
            else:
                os.replace(tmp, os.path.join(partial, globals_rel))
            self.write_checksum(partial, globals_rel)
            manifest["globals"] = globals_rel
            manifest["finished"] = iso(utcnow())
            manifest["size"] = sum(self.size_of(os.path.join(partial, f)) for f in os.listdir(partial))
            with open(os.path.join(partial, MANIFEST), "w", encoding="utf-8") as handle:
                json.dump(manifest, handle, indent=2, sort_keys=True)
                handle.write("\n")
            self.fsync_tree(partial)
            os.rename(partial, final)
            self.fsync_dir(self.dir)
            record.update({"databases": {d: {**{k: v for k, v in i.items() if k != "tables"},
                                             "tables": len(i["tables"]), "rows": sum(i["tables"].values())}
                                         for d, i in manifest["databases"].items()},
                           "size": manifest["size"], "verified": verify})
            if offsite:
                record["offsite"] = self.offsite(final)
            if retention:
                record["pruned"] = self.retention()
        except Exception as exc:  # noqa: BLE001 - whatever failed, record it, clean up and fail the unit
            shutil.rmtree(partial, ignore_errors=True)
            record.update({"result": "failed", "error": str(exc).strip(), "finished": iso(utcnow()),
                           "duration_seconds": round(time.monotonic() - clock, 1)})
            self.write_status("last_run", record, good=False)
            log(f"result=failed set={name} duration={record['duration_seconds']}s error={record['error']}")
            return 1
        record.update({"result": "ok", "finished": iso(utcnow()),
                       "duration_seconds": round(time.monotonic() - clock, 1)})
        self.write_status("last_run", record, good=True)
        log(f"result=ok set={name} databases={len(record['databases'])} size={record['size']} "
            f"duration={record['duration_seconds']}s verified={str(verify).lower()} "
            f"offsite={','.join(record.get('offsite', [])) or 'none'} pruned={len(record.get('pruned', []))}")
        self.checkin()
        return 0

    def checkin(self) -> None:
        url = self.cfg.get("checkin_url")
        if not url:
            return
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310 - operator's URL
                resp.read(1024)
        except OSError as exc:
            # The backup itself is good; a missed check-in makes the monitor alert.
            log(f"warning: success check-in failed: {exc}")

    def verify_set(self, name: str) -> dict[str, Any]:
        manifest = self.manifest(name)
        set_dir = os.path.join(self.dir, name)
        result: dict[str, Any] = {"set": name, "databases": {}}
        self.check_checksum(set_dir, manifest["globals"])
        for database, info in manifest["databases"].items():
            self.check_checksum(set_dir, info["file"])
            if manifest["encryption"] != "none":
                result["databases"][database] = {"checksum": "ok", "restore": "skipped (encrypted)"}
                continue
            outcome = self.verify_dump(os.path.join(set_dir, info["file"]), database, info["tables"])
            result["databases"][database] = {"checksum": "ok", **outcome}
        return result

    def cmd_verify(self, name: str | None) -> int:
        started = utcnow()
        names = self.sets()
        record: dict[str, Any] = {"started": iso(started)}
        try:
            if not names:
                raise BackupError(f"no complete backup set in {self.dir}")
            name = name or names[0]
            if name not in names:
                raise BackupError(f"backup set {name} not found in {self.dir}")
            record.update(self.verify_set(name))
        except (BackupError, OSError, ValueError, KeyError, psycopg2.Error) as exc:
            record.update({"set": name, "result": "failed", "error": str(exc).strip(), "finished": iso(utcnow())})
            self.write_status("last_verify", record, good=False)
            log(f"verify result=failed set={name} error={record['error']}")
            return 1
        record.update({"result": "ok", "finished": iso(utcnow())})
        self.write_status("last_verify", record, good=True)
        log(f"verify result=ok set={name} databases={len(record['databases'])}")
        return 0

    def cmd_restore(self, name: str | None, database: str | None, target: str | None, replace_live: bool,
                    check_only: bool = False) -> int:
        names = self.sets()
        if not names:
            raise BackupError(f"no complete backup set in {self.dir}")
        name = name or names[0]
        if name not in names:
            raise BackupError(f"backup set {name} not found in {self.dir}")
        manifest = self.manifest(name)
        if database is None:
            if len(manifest["databases"]) != 1:
                raise BackupError(f"set {name} holds {', '.join(manifest['databases'])}: name the database")
            database = next(iter(manifest["databases"]))
        if database not in manifest["databases"]:
            raise BackupError(f"set {name} has no database {database}")
        info = manifest["databases"][database]
        target = target or database
        set_dir = os.path.join(self.dir, name)
        # 1. Checksum first: nothing is touched for a damaged dump.
        self.check_checksum(set_dir, info["file"])
        if manifest["encryption"] != "none":
            raise BackupError(f"set {name} is encrypted; decrypt {info['file']} with the private key "
                              "elsewhere and restore it with pg_restore")
        live = self.database_exists(target)
        if check_only:
            print(json.dumps({"set": name, "database": database, "target": target, "live": live,
                              "checksum": "ok", "size": info["size"], "tables": len(info["tables"]),
                              "rows": sum(info["tables"].values())}, sort_keys=True))
            return 0
        if live and not replace_live:
            raise BackupError(f"database {target} exists; refusing to replace it without --replace-live")
        result: dict[str, Any] = {"set": name, "database": database, "target": target, "replaced_live": live}
        # 2. Safety backup of the database about to be replaced.
        if live:
            safety_dir = os.path.join(self.dir, "safety")
            os.makedirs(safety_dir, mode=0o700, exist_ok=True)
            rel = f"{target}-{backups_lib.set_name(utcnow())}.dump"
            self.run_cmd([os.path.join(self.bin, "pg_dump"), *self.conn_args, "-Fc",
                          *self.cfg["compress_args"], "-f", os.path.join(safety_dir, rel + ".tmp"), target],
                         f"safety backup of {target}")
            os.replace(os.path.join(safety_dir, rel + ".tmp"), os.path.join(safety_dir, rel))
            self.write_checksum(safety_dir, rel)
            result["safety_backup"] = os.path.join(safety_dir, rel)
        # 3. Restore into a staging database and check it before it goes live.
        staging = self.scratch_name(target, "__restore")
        self.drop_database(staging)
        try:
            self.restore_into(os.path.join(set_dir, info["file"]), staging, owner=info.get("owner"))
            restored = self.counts_of(staging)
            if restored != info["tables"]:
                raise BackupError(f"restored row counts differ from the manifest of {name}")
            # 4. Swap: close the old database, rename, drop it (the safety backup holds it).
            if live:
                self.copy_database_acl(target, staging)
                old = self.scratch_name(target, "__old")
                self.drop_database(old)
                self.admin(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(target)))
                self.admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = %s AND pid <> pg_backend_pid()", (target,))
                self.rename_database(target, old)
                try:
                    self.rename_database(staging, target)
                except psycopg2.Error:
                    self.rename_database(old, target)  # put the live database back as it was
                    self.admin(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                        sql.Identifier(target)))
                    raise
                self.drop_database(old)
            else:
                self.rename_database(staging, target)
        finally:
            self.drop_database(staging)
        result["tables"] = restored
        result["rows"] = sum(restored.values())
        print(json.dumps(result, sort_keys=True))
        return 0

    def cmd_list(self, as_json: bool) -> int:
        rows = []
        for name in self.sets():
            manifest = self.manifest(name)
            rows.append({"set": name, "tag": backups_lib.split_set_name(name)[1],
                         "finished": manifest.get("finished"), "size": manifest.get("size"),
                         "databases": sorted(manifest["databases"]), "encryption": manifest["encryption"]})
        if as_json:
            print(json.dumps(rows))
        else:
            width = max((len(row["set"]) for row in rows), default=0)  # tagged names are longer
            for row in rows:
                print(f"{row['set']:<{width}}  {row['size']:>14}  {','.join(row['databases'])}")
        return 0

    def cmd_status(self) -> int:
        status = self.read_status()
        print(json.dumps(status, indent=2, sort_keys=True))
        good = status.get("last_good")
        if good:
            print(f"last good backup: {good['set']} finished {good['finished']} size {good['size']} bytes",
                  file=sys.stderr)
        return 0 if good and status.get("last_run", {}).get("result") == "ok" else 1

    def cmd_alert(self, unit: str) -> int:
        failures = 0
        env = dict(os.environ, BACKUPS_FAILED_UNIT=unit, BACKUPS_HOST=socket.gethostname())
        command = self.cfg.get("failure_command")
        if command:
            rc = subprocess.run(["/bin/sh", "-c", command], env=env, check=False).returncode
            failures += rc != 0
        url = self.cfg.get("failure_webhook")
        if url:
            body = json.dumps({"unit": unit, "host": env["BACKUPS_HOST"], "status": self.read_status()}).encode()
            req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310 - operator's URL
                    resp.read(1024)
            except OSError as exc:
                log(f"failure webhook failed: {exc}")
                failures += 1
        log(f"alert unit={unit} command={'yes' if command else 'no'} webhook={'yes' if url else 'no'}")
        return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--tag", default="", help="name the set <UTC time>-TAG; retention keeps it apart")
    run.add_argument("--no-verify", action="store_true")
    run.add_argument("--no-offsite", action="store_true")
    run.add_argument("--no-retention", action="store_true")
    verify = sub.add_parser("verify")
    verify.add_argument("set", nargs="?")
    restore = sub.add_parser("restore")
    restore.add_argument("--set")
    restore.add_argument("--database")
    restore.add_argument("--target")
    restore.add_argument("--replace-live", action="store_true")
    restore.add_argument("--check", action="store_true", help="verify the checksum and report; change nothing")
    lst = sub.add_parser("list")
    lst.add_argument("--json", action="store_true")
    sub.add_parser("status")
    alert = sub.add_parser("alert")
    alert.add_argument("unit")
    args = parser.parse_args(argv)
    with open(args.config, encoding="utf-8") as handle:
        runner = Runner(json.load(handle))
    os.umask(0o077)
    try:
        if args.command == "run":
            backups_lib.set_tag(args.tag, "--tag")  # before the lock: a bad tag changes nothing
        if args.command in ("run", "verify") or (args.command == "restore" and not args.check):
            lock = open(runner.cfg["lock_file"], "a", encoding="ascii")  # noqa: SIM115 - held until exit
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BackupError("another backup, verify or restore is running (lock "
                                  f"{runner.cfg['lock_file']})") from None
        if args.command == "run":
            return runner.cmd_run(not args.no_verify, not args.no_offsite, not args.no_retention, args.tag)
        if args.command == "verify":
            return runner.cmd_verify(args.set)
        if args.command == "restore":
            return runner.cmd_restore(args.set, args.database, args.target, args.replace_live, args.check)
        if args.command == "list":
            return runner.cmd_list(args.json)
        if args.command == "status":
            return runner.cmd_status()
        return runner.cmd_alert(args.unit)
    except (BackupError, backups_lib.AnsibleFilterError, psycopg2.Error, OSError) as exc:
        print(f"error: {str(exc).strip()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
