"""Unit tests for the backup runner (roles/backups/files/backups_runner/):
retention applied to a backup directory, checksum and verification
failures, the restore safety rules, the run's failure handling, status,
alerts and the command line.

The runner's files, checksums, manifests and status are real (in tmp_path);
only the PostgreSQL server is a fake (FakePostgres: databases as a dict, a
dump as a JSON file of one database's tables and owner) with the methods of
backups_runner.postgres.Postgres.
"""

from __future__ import annotations

import fcntl
import http.server
import json
import os
import stat
import subprocess
import sys
import threading

import psycopg2
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "roles", "backups", "files"))

from backups_runner import cli, dump, restore, retention, status, store, verify  # noqa: E402
from backups_runner.common import BackupError, scratch_name  # noqa: E402

APP = {"public.items": 120, "public.orders": 30, "audit.events": 7}
INVENTORY = {"public.stock": 3000}


class FakePostgres:
    """A PostgreSQL server in a dict, for the runner's Postgres interface.

    ``dbs`` maps a database to {"owner", "tables": {schema.table: rows},
    "connections": bool, "acl": str}. ``changes`` lists every change made,
    in order. ``lose_rows`` {database: {table: n}} makes the dump hold n rows
    fewer than the snapshot's counts (a dump that disagrees with its counts);
    ``fail_rename`` holds (old, new) renames that fail as a statement would.
    """

    def __init__(self, **databases: dict[str, int]):
        self.dbs = {name: {"owner": f"{name}_owner", "tables": dict(tables), "connections": True,
                           "acl": f"grants of {name}"} for name, tables in databases.items()}
        self.changes: list[tuple] = []
        self.lose_rows: dict[str, dict[str, int]] = {}
        self.fail_rename: set[tuple[str, str]] = set()

    # SQL
    def databases(self) -> list[str]:
        return sorted(n for n in self.dbs if not n.endswith(("__verify", "__restore")))

    def database_exists(self, database):
        return database in self.dbs

    def drop_database(self, database):
        if database in self.dbs:
            del self.dbs[database]
            self.changes.append(("drop", database))

    def rename_database(self, old, new):
        if (old, new) in self.fail_rename or new in self.dbs or old not in self.dbs:
            raise psycopg2.Error(f"cannot rename {old} to {new}")
        self.dbs[new] = self.dbs.pop(old)
        self.changes.append(("rename", old, new))

    def close_connections(self, database):
        self.dbs[database]["connections"] = False
        self.changes.append(("close", database))

    def allow_connections(self, database):
        self.dbs[database]["connections"] = True
        self.changes.append(("allow", database))

    def copy_database_acl(self, source, target):
        self.dbs[target]["acl"] = self.dbs[source]["acl"]
        self.changes.append(("acl", source, target))

    def counts_of(self, database):
        return dict(self.dbs[database]["tables"])

    # client commands
    def _write(self, database, out, tables):
        with open(out, "w", encoding="utf-8") as handle:
            json.dump({"owner": self.dbs[database]["owner"], "tables": tables}, handle)

    def dump(self, database, out):
        counts = self.counts_of(database)
        dumped = {t: n - self.lose_rows.get(database, {}).get(t, 0) for t, n in counts.items()}
        self._write(database, out, dumped)
        return {"owner": self.dbs[database]["owner"], "tables": counts}

    def dump_safety(self, database, out):
        self._write(database, out, self.counts_of(database))
        self.changes.append(("safety", database))

    def dump_globals(self, out):
        with open(out, "w", encoding="utf-8") as handle:
            handle.write("CREATE ROLE app_owner;\n")

    def restore_into(self, dump_file, target, owner=None):
        if target in self.dbs:
            raise psycopg2.Error(f'database "{target}" already exists')
        self.dbs[target] = {"owner": owner or "postgres", "tables": {}, "connections": True, "acl": None}
        self.changes.append(("create", target))
        try:
            with open(dump_file, encoding="utf-8") as handle:
                content = json.load(handle)
        except (ValueError, UnicodeDecodeError):
            raise BackupError(f"pg_restore into {target} failed (exit 1): pg_restore: error: "
                              "input file does not appear to be a valid archive") from None
        self.dbs[target]["tables"] = dict(content["tables"])

    def snapshot(self):
        return json.loads(json.dumps(self.dbs))


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(name="cfg")
def fixture_cfg(tmp_path):
    (tmp_path / "sets").mkdir()
    return {
        "name": "backups", "dir": str(tmp_path / "sets"), "status_file": str(tmp_path / "status.json"),
        "lock_file": str(tmp_path / "lock"), "port": 9991, "socket_dir": "/nonexistent", "bin_dir": "/nonexistent",
        "databases": [], "format": "custom", "jobs": 2, "compress_args": ["--compress=6"],
        "encryption": {"method": "none", "recipients": [], "gpg_homedir": str(tmp_path / "gnupg")},
        "verify": True, "retention": {"daily": 7, "weekly": 4, "monthly": 6}, "keep_tagged": {"premigration": 3},
        "offsite_rsync": None, "offsite_rclone": None, "pitr": None,
        "checkin_url": "", "failure_command": "", "failure_webhook": "",
    }


@pytest.fixture(name="pg")
def fixture_pg():
    return FakePostgres(app=APP, inventory=INVENTORY)


def stored_set(cfg, pg, name):
    """A complete set NAME written by the runner's own code (without the test restore)."""
    partial = os.path.join(cfg["dir"], store.PARTIAL_PREFIX + name)
    dump.write_set(cfg, pg, partial, {"set": name, "tag": "", "started": "", "format": cfg["format"],
                                      "compress_args": [], "encryption": cfg["encryption"]["method"],
                                      "databases": {}}, verify=False)
    os.rename(partial, os.path.join(cfg["dir"], name))
    return os.path.join(cfg["dir"], name)


def fake_set(cfg, name):
    """A set directory holding only a manifest (enough for retention and listing)."""
    os.makedirs(os.path.join(cfg["dir"], name))
    store.write_manifest(os.path.join(cfg["dir"], name), {"databases": {}, "encryption": "none"})


def edit_manifest(set_dir, change):
    path = os.path.join(set_dir, store.MANIFEST)
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    change(manifest)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)


def flip_byte(path, offset=5):
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def read_status(cfg):
    with open(cfg["status_file"], encoding="utf-8") as handle:
        return json.load(handle)


def stub_command(tmp_path, monkeypatch, name, script):
    """Put an executable NAME running SCRIPT (sh) first on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    path = bindir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


# ---------------------------------------------------------------- retention on disk

def test_retention_deletes_exactly_what_the_policy_prunes(cfg):
    for name in ["20250310T020000Z", "20250310T010000Z", "20250309T020000Z", "20250308T020000Z",
                 "20250215T020000Z", "20250110T020000Z", "20250309T120000Z-premigration",
                 "20250301T020000Z-premigration", "20250101T000000Z-keepme"]:
        fake_set(cfg, name)
    # Not complete sets: a partial one, a set name without a manifest, the safety backups.
    os.makedirs(os.path.join(cfg["dir"], ".partial-20250311T000000Z"))
    os.makedirs(os.path.join(cfg["dir"], "20240101T000000Z"))
    os.makedirs(os.path.join(cfg["dir"], "safety"))
    cfg.update(retention={"daily": 2, "weekly": 1, "monthly": 2}, keep_tagged={"premigration": 1})
    # By hand: days 03-10 and 03-09 (daily), week 11 (weekly: the same set),
    # months 2025-03 and 2025-02 (monthly); the newer premigration set; the
    # keepme tag has no count and is never pruned.
    pruned = retention.prune(cfg)
    assert pruned == ["20250110T020000Z", "20250301T020000Z-premigration", "20250308T020000Z",
                      "20250310T010000Z"]
    assert sorted(os.listdir(cfg["dir"])) == [
        ".partial-20250311T000000Z", "20240101T000000Z", "20250101T000000Z-keepme", "20250215T020000Z",
        "20250309T020000Z", "20250309T120000Z-premigration", "20250310T020000Z", "safety"]


def test_retention_never_deletes_the_newest_set_even_a_tagged_one(cfg):
    for name in ["20250310T020000Z", "20250311T020000Z-premigration"]:
        fake_set(cfg, name)
    cfg.update(retention={"daily": 1}, keep_tagged={"premigration": 0})
    assert retention.prune(cfg) == []
    assert store.sets(cfg["dir"]) == ["20250311T020000Z-premigration", "20250310T020000Z"]


def test_retention_of_an_empty_directory_deletes_nothing(cfg):
    assert retention.prune(cfg) == []


def test_sets_are_complete_sets_newest_first_and_choose_set(cfg):
    for name in ["20250309T020000Z", "20250310T020000Z-premigration", "20250310T010000Z"]:
        fake_set(cfg, name)
    os.makedirs(os.path.join(cfg["dir"], "20250311T000000Z"))  # no manifest: still being written, or broken
    os.makedirs(os.path.join(cfg["dir"], "not-a-set"))
    assert store.sets(cfg["dir"]) == ["20250310T020000Z-premigration", "20250310T010000Z", "20250309T020000Z"]
    assert store.choose_set(cfg["dir"], None) == "20250310T020000Z-premigration"
    assert store.choose_set(cfg["dir"], "20250309T020000Z") == "20250309T020000Z"
    with pytest.raises(BackupError, match="backup set 20250311T000000Z not found in"):
        store.choose_set(cfg["dir"], "20250311T000000Z")


# ---------------------------------------------------------------- checksums

def test_checksum_file_is_sha256sum_format_and_passes(tmp_path):
    (tmp_path / "app.dump").write_bytes(b"PGDMP" + bytes(range(256)) * 10)
    digest = store.write_checksum(str(tmp_path), "app.dump")
    assert (tmp_path / "app.dump.sha256").read_text() == f"{digest}  app.dump\n"
    store.check_checksum(str(tmp_path), "app.dump")
    assert subprocess.run(["sha256sum", "-c", "app.dump.sha256"], cwd=tmp_path, capture_output=True,
                          check=False).returncode == 0


def test_checksum_mismatch_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "app.dump").write_bytes(b"PGDMP" + b"x" * 100)
    digest = store.write_checksum(str(tmp_path), "app.dump")
    flip_byte(tmp_path / "app.dump")
    with pytest.raises(BackupError, match=rf"checksum mismatch for .*/app\.dump: expected {digest}, got [0-9a-f]{{64}}$"):
        store.check_checksum(str(tmp_path), "app.dump")


def test_missing_checksum_file_and_missing_dump_are_errors(tmp_path):
    (tmp_path / "app.dump").write_bytes(b"PGDMP")
    with pytest.raises(BackupError, match=r"checksum file .*/app\.dump\.sha256 is missing"):
        store.check_checksum(str(tmp_path), "app.dump")
    store.write_checksum(str(tmp_path), "app.dump")
    (tmp_path / "app.dump").unlink()
    with pytest.raises(BackupError, match=r"/app\.dump listed in .*/app\.dump\.sha256 is missing"):
        store.check_checksum(str(tmp_path), "app.dump")


def test_directory_dump_checksums_every_file(tmp_path):
    (tmp_path / "app.dir").mkdir()
    for name, content in (("toc.dat", b"toc"), ("3001.dat.gz", b"rows"), ("3002.dat.gz", b"more rows")):
        (tmp_path / "app.dir" / name).write_bytes(content)
    digest = store.write_checksum(str(tmp_path), "app.dir")
    lines = (tmp_path / "app.dir.sha256").read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["app.dir/3001.dat.gz", "app.dir/3002.dat.gz", "app.dir/toc.dat"]
    assert digest == store.sha256_file(str(tmp_path / "app.dir.sha256"))
    store.check_checksum(str(tmp_path), "app.dir")
    (tmp_path / "app.dir" / "3002.dat.gz").write_bytes(b"other rows")
    with pytest.raises(BackupError, match=r"checksum mismatch for .*app\.dir/3002\.dat\.gz"):
        store.check_checksum(str(tmp_path), "app.dir")
    (tmp_path / "app.dir" / "3001.dat.gz").unlink()
    with pytest.raises(BackupError, match=r"app\.dir/3001\.dat\.gz listed in .* is missing"):
        store.check_checksum(str(tmp_path), "app.dir")


# ---------------------------------------------------------------- verification

def test_verify_dump_passes_and_drops_the_scratch_database(tmp_path, pg):
    before = pg.snapshot()
    pg.dump("app", str(tmp_path / "app.dump"))
    outcome = verify.verify_dump(pg, str(tmp_path / "app.dump"), "app", APP)
    assert outcome["verified"] is True and outcome["verified_rows"] == 157
    assert ("create", "app__verify") in pg.changes and pg.snapshot() == before


def test_verify_dump_counts_mismatch_names_the_tables(tmp_path, pg):
    pg.dump("app", str(tmp_path / "app.dump"))
    expected = {**APP, "public.items": 121, "public.gone": 5}
    with pytest.raises(BackupError) as failure:
        verify.verify_dump(pg, str(tmp_path / "app.dump"), "app", expected)
    assert str(failure.value) == ("verification of app: row counts differ (dumped vs restored) "
                                  "public.gone: 5 vs None, public.items: 121 vs 120")
    assert "app__verify" not in pg.dbs


def test_verify_dump_restore_error_fails_and_drops_the_scratch_database(tmp_path, pg):
    (tmp_path / "app.dump").write_bytes(b"\x00garbage")
    with pytest.raises(BackupError, match="pg_restore into app__verify failed"):
        verify.verify_dump(pg, str(tmp_path / "app.dump"), "app", APP)
    assert "app__verify" not in pg.dbs and ("drop", "app__verify") in pg.changes


def test_verify_of_a_good_set_records_last_good_verify(cfg, pg):
    stored_set(cfg, pg, "20250310T020000Z")
    assert verify.cmd_verify(cfg, pg, None) == 0
    record = read_status(cfg)["last_verify"]
    assert record["result"] == "ok" and record["set"] == "20250310T020000Z"
    assert record["databases"]["app"]["checksum"] == "ok" and record["databases"]["app"]["verified_rows"] == 157
    assert record["databases"]["inventory"]["verified_rows"] == 3000
    assert read_status(cfg)["last_good_verify"] == record
    assert sorted(pg.dbs) == ["app", "inventory"]


def test_verify_bad_checksum_fails_without_a_test_restore(cfg, pg, capsys):
    stored_set(cfg, pg, "20250309T020000Z")
    assert verify.cmd_verify(cfg, pg, "20250309T020000Z") == 0
    set_dir = stored_set(cfg, pg, "20250310T020000Z")
    flip_byte(os.path.join(set_dir, "app.dump"))
    pg.changes.clear()
    assert verify.cmd_verify(cfg, pg, None) == 1
    state = read_status(cfg)
    assert state["last_verify"]["result"] == "failed" and state["last_verify"]["set"] == "20250310T020000Z"
    assert "checksum mismatch" in state["last_verify"]["error"]
    assert state["last_good_verify"]["set"] == "20250309T020000Z"  # the earlier good one stays
    assert not any(change[0] == "create" and change[1] == "app__verify" for change in pg.changes)
    assert "verify result=failed set=20250310T020000Z error=checksum mismatch" in capsys.readouterr().out


def test_verify_missing_dump_or_globals_fails(cfg, pg):
    set_dir = stored_set(cfg, pg, "20250310T020000Z")
    os.remove(os.path.join(set_dir, "inventory.dump"))
    assert verify.cmd_verify(cfg, pg, None) == 1
    assert "inventory.dump listed in" in read_status(cfg)["last_verify"]["error"]
    os.remove(os.path.join(set_dir, "globals.sql.sha256"))
    assert verify.cmd_verify(cfg, pg, None) == 1
    assert "globals.sql.sha256 is missing" in read_status(cfg)["last_verify"]["error"]


def test_verify_damage_before_the_checksum_fails_the_test_restore(cfg, pg):
    set_dir = stored_set(cfg, pg, "20250310T020000Z")
    with open(os.path.join(set_dir, "app.dump"), "wb") as handle:
        handle.write(b"\x00not an archive")
    store.write_checksum(set_dir, "app.dump")
    assert verify.cmd_verify(cfg, pg, None) == 1
    assert "pg_restore into app__verify failed" in read_status(cfg)["last_verify"]["error"]
    assert sorted(pg.dbs) == ["app", "inventory"]


def test_verify_counts_mismatch_with_the_manifest_fails(cfg, pg):
    set_dir = stored_set(cfg, pg, "20250310T020000Z")
    edit_manifest(set_dir, lambda m: m["databases"]["inventory"]["tables"].update({"public.stock": 2999}))
    assert verify.cmd_verify(cfg, pg, None) == 1
    assert read_status(cfg)["last_verify"]["error"] == (
        "verification of inventory: row counts differ (dumped vs restored) public.stock: 2999 vs 3000")


def test_verify_without_sets_or_of_an_unknown_set_fails(cfg, pg):
    assert verify.cmd_verify(cfg, pg, None) == 1
    assert read_status(cfg)["last_verify"]["error"] == f"no complete backup set in {cfg['dir']}"
    stored_set(cfg, pg, "20250310T020000Z")
    assert verify.cmd_verify(cfg, pg, "20250309T020000Z") == 1
    assert read_status(cfg)["last_verify"]["error"] == f"backup set 20250309T020000Z not found in {cfg['dir']}"


def test_verify_of_an_encrypted_set_checks_checksums_only(cfg, pg, tmp_path, monkeypatch):
    # A stand-in for age: "encrypts" by copying (-o OUT IN).
    stub_command(tmp_path, monkeypatch, "age", 'while [ "$1" != "-o" ]; do shift; done; cp "$3" "$2"\n')
    cfg["encryption"].update(method="age", recipients=["age1example"])
    set_dir = stored_set(cfg, pg, "20250310T020000Z")
    assert sorted(os.listdir(set_dir)) == ["app.dump.age", "app.dump.age.sha256", "globals.sql.age",
                                           "globals.sql.age.sha256", "inventory.dump.age",
                                           "inventory.dump.age.sha256", "manifest.json"]
    pg.changes.clear()
    assert verify.cmd_verify(cfg, pg, None) == 0
    assert read_status(cfg)["last_verify"]["databases"]["app"] == {"checksum": "ok", "restore": "skipped (encrypted)"}
    assert pg.changes == []
    flip_byte(os.path.join(set_dir, "app.dump.age"))
    assert verify.cmd_verify(cfg, pg, None) == 1


# ---------------------------------------------------------------- a run

def test_run_writes_a_verified_set_and_records_it(cfg, pg, capsys):
    assert dump.cmd_run(cfg, pg, verify=True, offsite=True, retention=True) == 0
    (name,) = store.sets(cfg["dir"])
    set_dir = os.path.join(cfg["dir"], name)
    manifest = store.manifest(cfg["dir"], name)
    assert manifest["databases"]["app"]["tables"] == APP and manifest["databases"]["app"]["verified"] is True
    assert manifest["databases"]["app"]["owner"] == "app_owner" and manifest["globals"] == "globals.sql"
    for rel in ("app.dump", "inventory.dump", "globals.sql"):
        store.check_checksum(set_dir, rel)
    assert [c for c in pg.changes if c[0] == "create"] == [("create", "app__verify"), ("create", "inventory__verify")]
    assert sorted(pg.dbs) == ["app", "inventory"]  # scratch databases dropped
    last = read_status(cfg)["last_run"]
    assert last["result"] == "ok" and last["set"] == name and last["verified"] is True
    assert last["databases"]["app"]["rows"] == 157 and last["databases"]["app"]["tables"] == 3
    assert read_status(cfg)["last_good"] == last
    assert f"result=ok set={name} databases=2" in capsys.readouterr().out


def test_run_with_a_tag_names_the_set_and_retention_keeps_it_apart(cfg, pg):
    fake_set(cfg, "20250310T020000Z")
    fake_set(cfg, "20250309T020000Z-premigration")
    cfg.update(retention={"daily": 1}, keep_tagged={"premigration": 1})
    assert dump.cmd_run(cfg, pg, verify=False, offsite=False, retention=True, tag="premigration") == 0
    sets = store.sets(cfg["dir"])
    assert len(sets) == 2 and sets[0].endswith("-premigration") and sets[1] == "20250310T020000Z"
    assert read_status(cfg)["last_run"]["pruned"] == ["20250309T020000Z-premigration"]
    assert store.manifest(cfg["dir"], sets[0])["tag"] == "premigration"


def test_run_whose_dump_disagrees_with_its_counts_fails_and_prunes_nothing(cfg, pg, capsys):
    fake_set(cfg, "20250310T020000Z")
    cfg["retention"] = {"daily": 1}
    pg.lose_rows = {"inventory": {"public.stock": 1}}
    assert dump.cmd_run(cfg, pg, verify=True, offsite=True, retention=True) == 1
    assert os.listdir(cfg["dir"]) == ["20250310T020000Z"]  # no new set, no partial one, nothing pruned
    last = read_status(cfg)["last_run"]
    assert last["result"] == "failed" and "last_good" not in read_status(cfg)
    assert last["error"] == ("verification of inventory: row counts differ (dumped vs restored) "
                             "public.stock: 3000 vs 2999")
    assert "result=failed" in capsys.readouterr().out


def test_run_without_verification_does_not_restore(cfg, pg):
    cfg["verify"] = False
    assert dump.cmd_run(cfg, pg, verify=True, offsite=False, retention=False) == 0
    assert not [c for c in pg.changes if c[0] == "create"]
    assert store.manifest(cfg["dir"], store.sets(cfg["dir"])[0])["databases"]["app"]["verified"] is False


def test_run_with_no_retention_keeps_every_set(cfg, pg):
    fake_set(cfg, "20250310T020000Z")
    cfg["retention"] = {"daily": 1}
    assert dump.cmd_run(cfg, pg, verify=False, offsite=False, retention=False) == 0
    assert len(store.sets(cfg["dir"])) == 2 and "pruned" not in read_status(cfg)["last_run"]
    assert dump.cmd_run(cfg, pg, verify=False, offsite=False, retention=True, tag="x") == 0
    assert read_status(cfg)["last_run"]["pruned"] == ["20250310T020000Z"]


def test_run_removes_partial_sets_of_a_killed_run(cfg, pg):
    os.makedirs(os.path.join(cfg["dir"], ".partial-20250310T020000Z", "app.dump.tmp"))
    assert dump.cmd_run(cfg, pg, verify=False, offsite=False, retention=False) == 0
    assert not [n for n in os.listdir(cfg["dir"]) if n.startswith(".partial-")]


def test_run_of_the_configured_databases_only(cfg, pg):
    cfg["databases"] = ["inventory"]
    assert dump.cmd_run(cfg, pg, verify=False, offsite=False, retention=False) == 0
    assert list(store.manifest(cfg["dir"], store.sets(cfg["dir"])[0])["databases"]) == ["inventory"]


def test_run_without_databases_fails(cfg):
    assert dump.cmd_run(cfg, FakePostgres(), verify=True, offsite=True, retention=True) == 1
    assert read_status(cfg)["last_run"]["error"] == "no database to back up"
    assert os.listdir(cfg["dir"]) == []


def test_offsite_copy_uses_strict_host_keys(cfg, pg, tmp_path, monkeypatch):
    argv_file = tmp_path / "rsync.argv"
    stub_command(tmp_path, monkeypatch, "rsync", f'printf "%s\\n" "$@" > {argv_file}\n')
    cfg["offsite_rsync"] = {"destination": "backup@vault:/srv/db1/", "port": 2222,
                            "ssh_key": "/var/lib/backups/ssh/id_ed25519", "known_hosts": "/etc/backups/known_hosts"}
    assert dump.cmd_run(cfg, pg, verify=False, offsite=True, retention=False) == 0
    argv = argv_file.read_text().splitlines()
    name = store.sets(cfg["dir"])[0]
    assert argv[-2:] == [os.path.join(cfg["dir"], name), "backup@vault:/srv/db1/"]
    ssh = argv[argv.index("-e") + 1]
    for option in ("-p 2222", "-i /var/lib/backups/ssh/id_ed25519", "BatchMode=yes", "StrictHostKeyChecking=yes",
                   "UserKnownHostsFile=/etc/backups/known_hosts"):
        assert option in ssh
    assert read_status(cfg)["last_run"]["offsite"] == ["rsync"]


def test_offsite_failure_fails_the_run_keeps_the_set_and_prunes_nothing(cfg, pg, tmp_path, monkeypatch):
    stub_command(tmp_path, monkeypatch, "rsync", 'echo "rsync: mkdir failed: Permission denied (13)" >&2\nexit 23\n')
    cfg["offsite_rsync"] = {"destination": "backup@vault:/srv/db1", "port": 22, "ssh_key": "k", "known_hosts": "h"}
    cfg["retention"] = {"daily": 1}
    fake_set(cfg, "20250310T020000Z")
    assert dump.cmd_run(cfg, pg, verify=True, offsite=True, retention=True) == 1
    last = read_status(cfg)["last_run"]
    assert last["result"] == "failed"
    assert last["error"] == "off-site rsync failed (exit 23): rsync: mkdir failed: Permission denied (13)"
    sets = store.sets(cfg["dir"])
    assert len(sets) == 2 and sets[1] == "20250310T020000Z"  # the new set is complete; the old one stays


# ---------------------------------------------------------------- restore safety rules

def test_scratch_names_stay_within_postgresql_names():
    assert scratch_name("app", "__restore") == "app__restore"
    long = "d" * 70
    assert scratch_name(long, "__restore") == "d" * 54 + "__restore" and len(scratch_name(long, "__restore")) == 63
    assert len(scratch_name("e" * 63, "__verify")) == 63


def test_restore_refuses_a_live_database_without_replace_live_and_changes_nothing(cfg, pg):
    stored_set(cfg, pg, "20250310T020000Z")
    before = pg.snapshot()
    with pytest.raises(BackupError, match="^database app exists; refusing to replace it without --replace-live$"):
        restore.cmd_restore(cfg, pg, None, "app", None, replace_live=False)
    assert pg.snapshot() == before and pg.changes == []
    assert not os.path.exists(os.path.join(cfg["dir"], "safety"))


def test_restore_check_reports_and_changes_nothing(cfg, pg, capsys):
    stored_set(cfg, pg, "20250310T020000Z")
    capsys.readouterr()  # the set's log lines
    before = pg.snapshot()
    assert restore.cmd_restore(cfg, pg, None, "app", None, replace_live=False, check_only=True) == 0
    assert json.loads(capsys.readouterr().out) == {
        "set": "20250310T020000Z", "database": "app", "target": "app", "live": True, "checksum": "ok",
        "size": store.size_of(os.path.join(cfg["dir"], "20250310T020000Z", "app.dump")), "tables": 3, "rows": 157}
    assert restore.cmd_restore(cfg, pg, None, "app", "app_copy", replace_live=False, check_only=True) == 0
    assert json.loads(capsys.readouterr().out)["live"] is False
    assert pg.snapshot() == before and pg.changes == []


def test_restore_into_a_new_database(cfg, pg, capsys):
    stored_set(cfg, pg, "20250310T020000Z")
    capsys.readouterr()  # the set's log lines
    pg.dbs["app"]["tables"]["public.items"] = 0  # the live one changed since; it is not touched
    assert restore.cmd_restore(cfg, pg, None, "app", "app_copy", replace_live=False) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {"set": "20250310T020000Z", "database": "app", "target": "app_copy", "replaced_live": False,
                      "tables": APP, "rows": 157}
    assert pg.dbs["app_copy"]["tables"] == APP and pg.dbs["app_copy"]["owner"] == "app_owner"
    assert pg.dbs["app"]["tables"]["public.items"] == 0
    assert "app_copy__restore" not in pg.dbs
    assert pg.changes == [("create", "app_copy__restore"), ("rename", "app_copy__restore", "app_copy")]
    assert not os.path.exists(os.path.join(cfg["dir"], "safety"))


def test_restore_over_the_live_database_takes_a_safety_backup_first(cfg, pg, capsys):
    stored_set(cfg, pg, "20250310T020000Z")
    capsys.readouterr()  # the set's log lines
    pg.dbs["inventory"]["tables"]["public.stock"] = 2900  # damaged after the backup
    assert restore.cmd_restore(cfg, pg, "20250310T020000Z", "inventory", None, replace_live=True) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["replaced_live"] is True and result["target"] == "inventory" and result["rows"] == 3000
    assert pg.dbs["inventory"]["tables"] == INVENTORY and pg.dbs["inventory"]["connections"] is True
    assert pg.dbs["inventory"]["acl"] == "grants of inventory"  # GRANT ... ON DATABASE copied
    assert sorted(pg.dbs) == ["app", "inventory"]  # no staging, no __old left
    # The safety backup holds the replaced (damaged) state, with a checksum that passes.
    safety = result["safety_backup"]
    assert os.path.dirname(safety) == os.path.join(cfg["dir"], "safety")
    assert os.path.basename(safety).startswith("inventory-") and safety.endswith("Z.dump")
    store.check_checksum(os.path.dirname(safety), os.path.basename(safety))
    with open(safety, encoding="utf-8") as handle:
        assert json.load(handle)["tables"] == {"public.stock": 2900}
    assert pg.changes == [("safety", "inventory"), ("create", "inventory__restore"),
                          ("acl", "inventory", "inventory__restore"), ("close", "inventory"),
                          ("rename", "inventory", "inventory__old"), ("rename", "inventory__restore", "inventory"),
                          ("drop", "inventory__old")]


def test_restore_with_a_bad_checksum_refuses_before_anything(cfg, pg):
    set_dir = stored_set(cfg, pg, "20250310T020000Z")
    flip_byte(os.path.join(set_dir, "app.dump"))
    before = pg.snapshot()
    for replace_live, check_only in ((True, False), (False, True)):
        with pytest.raises(BackupError, match="checksum mismatch for .*app.dump"):
            restore.cmd_restore(cfg, pg, None, "app", "app_copy", replace_live=replace_live, check_only=check_only)
    assert pg.snapshot() == before and pg.changes == []


def test_restore_of_an_encrypted_set_is_refused(cfg, pg, tmp_path, monkeypatch):
    stub_command(tmp_path, monkeypatch, "age", 'while [ "$1" != "-o" ]; do shift; done; cp "$3" "$2"\n')
    cfg["encryption"].update(method="age", recipients=["age1example"])
    stored_set(cfg, pg, "20250310T020000Z")
    with pytest.raises(BackupError, match="set 20250310T020000Z is encrypted; decrypt app.dump.age"):
        restore.cmd_restore(cfg, pg, None, "app", "app_copy", replace_live=False)
    assert pg.changes == []


def test_restore_picks_the_set_and_the_database(cfg, pg):
    stored_set(cfg, pg, "20250309T020000Z")
    stored_set(cfg, pg, "20250310T020000Z-premigration")
    with pytest.raises(BackupError, match="set 20250310T020000Z-premigration holds app, inventory: name the database"):
        restore.plan(cfg, pg, None, None, None)
    with pytest.raises(BackupError, match="set 20250310T020000Z-premigration has no database shop"):
        restore.plan(cfg, pg, None, "shop", None)
    with pytest.raises(BackupError, match="backup set 20250308T020000Z not found"):
        restore.plan(cfg, pg, "20250308T020000Z", "app", None)
    plan = restore.plan(cfg, pg, None, "app", None)
    assert (plan["set"], plan["database"], plan["target"], plan["live"]) == (
        "20250310T020000Z-premigration", "app", "app", True)  # the newest set, tagged or not; target = database
    cfg["databases"] = ["app"]
    stored_set(cfg, pg, "20250311T020000Z")
    assert restore.plan(cfg, pg, None, None, "other")["database"] == "app"  # the set's only database


def test_restore_whose_counts_differ_from_the_manifest_leaves_the_live_database(cfg, pg):
    set_dir = stored_set(cfg, pg, "20250310T020000Z")
    edit_manifest(set_dir, lambda m: m["databases"]["app"]["tables"].update({"public.orders": 31}))
    before = pg.snapshot()["app"]
    with pytest.raises(BackupError, match="^restored row counts differ from the manifest of 20250310T020000Z$"):
        restore.cmd_restore(cfg, pg, None, "app", None, replace_live=True)
    assert pg.dbs["app"] == before and sorted(pg.dbs) == ["app", "inventory"]
    assert ("rename", "app", "app__old") not in pg.changes


def test_restore_whose_swap_fails_puts_the_live_database_back(cfg, pg):
    stored_set(cfg, pg, "20250310T020000Z")
    pg.dbs["app"]["tables"]["public.items"] = 1
    pg.fail_rename.add(("app__restore", "app"))
    with pytest.raises(psycopg2.Error):
        restore.cmd_restore(cfg, pg, None, "app", None, replace_live=True)
    assert pg.dbs["app"]["tables"]["public.items"] == 1 and pg.dbs["app"]["connections"] is True
    assert sorted(pg.dbs) == ["app", "inventory"]
    assert pg.changes[-3:] == [("rename", "app__old", "app"), ("allow", "app"), ("drop", "app__restore")]


def test_restore_drops_a_staging_database_left_by_an_earlier_attempt(cfg, pg):
    stored_set(cfg, pg, "20250310T020000Z")
    pg.dbs["app_copy__restore"] = {"owner": "x", "tables": {"junk.t": 1}, "connections": True, "acl": None}
    assert restore.cmd_restore(cfg, pg, None, "app", "app_copy", replace_live=False) == 0
    assert pg.dbs["app_copy"]["tables"] == APP and "app_copy__restore" not in pg.dbs


def test_restore_into_a_long_target_name_stages_under_a_valid_name(cfg, pg):
    stored_set(cfg, pg, "20250310T020000Z")
    target = "restored_" + "x" * 60
    assert restore.cmd_restore(cfg, pg, None, "app", target, replace_live=False) == 0
    staging = pg.changes[0][1]
    assert len(staging) == 63 and staging.endswith("__restore") and target.startswith(staging[:-9])


# ---------------------------------------------------------------- status, list and alerts

def test_status_keeps_the_last_good_run_after_a_failure(cfg, pg, capsys):
    assert status.cmd_status(cfg) == 1  # no status yet
    assert dump.cmd_run(cfg, pg, verify=False, offsite=False, retention=False) == 0
    assert status.cmd_status(cfg) == 0
    good = read_status(cfg)["last_good"]
    assert dump.cmd_run(cfg, FakePostgres(), verify=False, offsite=False, retention=False) == 1
    assert status.cmd_status(cfg) == 1
    assert read_status(cfg)["last_good"] == good and read_status(cfg)["last_run"]["result"] == "failed"
    assert f"last good backup: {good['set']}" in capsys.readouterr().err
    assert oct(os.stat(cfg["status_file"]).st_mode & 0o777) == "0o644"


def test_list_shows_every_set_with_its_tag(cfg, pg, capsys):
    stored_set(cfg, pg, "20250309T020000Z")
    stored_set(cfg, pg, "20250310T020000Z-premigration")
    capsys.readouterr()
    assert status.cmd_list(cfg, as_json=True) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["set"], r["tag"], r["databases"]) for r in rows] == [
        ("20250310T020000Z-premigration", "premigration", ["app", "inventory"]),
        ("20250309T020000Z", "", ["app", "inventory"])]


def test_alert_runs_the_command_with_the_failed_unit(cfg, tmp_path):
    marker = tmp_path / "marker"
    cfg["failure_command"] = f'echo "$BACKUPS_FAILED_UNIT" > {marker}'
    assert status.cmd_alert(cfg, "backups-verify.service") == 0
    assert marker.read_text() == "backups-verify.service\n"
    cfg["failure_command"] = "exit 3"
    assert status.cmd_alert(cfg, "backups.service") == 1


def test_alert_posts_the_status_to_the_webhook(cfg):
    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the handler's API
            received.append((self.headers["Content-Type"],
                             json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    status.write_status(cfg, "last_run", {"result": "failed", "error": "boom"}, good=False)
    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    cfg["failure_webhook"] = f"http://127.0.0.1:{server.server_port}/hook"
    try:
        assert status.cmd_alert(cfg, "backups.service") == 0
    finally:
        thread.join(10)
        server.server_close()
    (content_type, body), = received
    assert content_type == "application/json" and body["unit"] == "backups.service"
    assert body["status"]["last_run"]["error"] == "boom"
    # Nobody listening any more: the alert fails.
    assert status.cmd_alert(cfg, "backups.service") == 1


# ---------------------------------------------------------------- the command line

@pytest.fixture(name="config_file")
def fixture_config_file(cfg, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_cli_refuses_a_bad_tag_before_taking_the_lock(cfg, config_file, capsys):
    assert cli.main(["--config", config_file, "run", "--tag", "Pre_migration"]) == 1
    assert "error: --tag: 'Pre_migration' is not a tag" in capsys.readouterr().err
    assert not os.path.exists(cfg["lock_file"]) and os.listdir(cfg["dir"]) == []


def test_cli_refuses_to_run_while_another_run_holds_the_lock(cfg, config_file, capsys):
    with open(cfg["lock_file"], "a", encoding="ascii") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for argv in (["run"], ["verify"], ["restore", "--database", "app", "--target", "copy"]):
            assert cli.main(["--config", config_file, *argv]) == 1
            assert "error: another backup, verify or restore is running" in capsys.readouterr().err
    assert not os.path.exists(cfg["status_file"])


def test_cli_restore_refusal_and_check_through_main(cfg, pg, config_file, monkeypatch, capsys):
    monkeypatch.setattr(cli, "Postgres", lambda _cfg: pg)
    stored_set(cfg, pg, "20250310T020000Z")
    capsys.readouterr()  # the set's log lines
    assert cli.main(["--config", config_file, "restore", "--database", "app", "--check"]) == 0
    assert json.loads(capsys.readouterr().out)["live"] is True
    assert cli.main(["--config", config_file, "restore", "--database", "app"]) == 1
    assert "refusing to replace it without --replace-live" in capsys.readouterr().err
    assert cli.main(["--config", config_file, "restore", "--database", "app", "--replace-live"]) == 0
    assert json.loads(capsys.readouterr().out)["replaced_live"] is True


def test_backup_py_is_the_command_line(config_file, cfg, pg):
    """The shipped entry point runs cli.main (here `list`, which needs no server)."""
    stored_set(cfg, pg, "20250310T020000Z")
    script = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "backups", "files", "backup.py")
    proc = subprocess.run([sys.executable, script, "--config", config_file, "list", "--json"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert [row["set"] for row in json.loads(proc.stdout)] == ["20250310T020000Z"]
