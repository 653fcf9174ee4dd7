"""Unit tests for library/stack_state.py (the roles' one-read no-op check)
and lookup_plugins/stack_code_digest.py."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


state = load(REPO / "library" / "stack_state.py", "stack_state")
code = load(REPO / "lookup_plugins" / "stack_code_digest.py", "stack_code_digest")

SHOW = """LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled
NeedDaemonReload=no

LoadState=loaded
ActiveState=failed
SubState=failed
UnitFileState=enabled
NeedDaemonReload=no
"""


def test_units_and_packages_are_read_from_one_call_each():
    units = state.parse_units(SHOW, ["caddy.service", "pgbouncer.service", "gone.service"])
    assert units["caddy.service"] == ("LoadState=loaded,ActiveState=active,SubState=running,UnitFileState=enabled,"
                                      "NeedDaemonReload=no")
    assert "ActiveState=failed" in units["pgbouncer.service"]
    assert units["gone.service"] == "unknown"
    packages = state.parse_packages("caddy\t2.6.2-5\tii \nufw\t0.36\trc \nlibc6:amd64\t2.36\tii \n",
                                    ["caddy", "ufw", "libc6", "nope"])
    assert packages == {"caddy": "2.6.2-5", "ufw": "absent", "libc6": "2.36", "nope": "absent"}


def fake_run(outputs):
    def run(argv, **kwargs):
        key = argv[0]
        return subprocess.CompletedProcess(argv, 0, stdout=outputs.get(key, ""), stderr="")
    return run


def test_nothing_differs_until_a_file_a_unit_a_package_a_command_or_the_stamp_does(tmp_path):
    conf = tmp_path / "app.conf"
    conf.write_text("a = 1\n")
    conf.chmod(0o644)
    args = ([str(conf), str(tmp_path / "missing")], ["caddy.service"], ["caddy"], [["ufw", "status"]])
    outputs = {"systemctl": SHOW.split("\n\n")[0], "dpkg-query": "caddy\t2.6.2-5\tii \n", "ufw": "Status: active\n"}
    before = state.fingerprint(*args, run=fake_run(outputs))
    assert before["files"][str(tmp_path / "missing")] == "absent"
    record = {"stamp": "s1", "fingerprint": json.loads(json.dumps(before))}
    assert state.differences(record, "s1", state.fingerprint(*args, run=fake_run(outputs))) == []
    assert state.differences(record, "s2", before) == ["stamp"]
    assert state.differences(None, "s1", before) == ["no record"]
    conf.write_text("a = 2\n")
    assert state.differences(record, "s1", state.fingerprint(*args, run=fake_run(outputs))) == [f"file:{conf}"]
    conf.write_text("a = 1\n")
    conf.chmod(0o666)
    assert state.differences(record, "s1", state.fingerprint(*args, run=fake_run(outputs))) == [f"file:{conf}"]
    conf.chmod(0o644)
    stopped = dict(outputs, systemctl=SHOW.split("\n\n")[1])
    assert state.differences(record, "s1", state.fingerprint(*args, run=fake_run(stopped))) == ["unit:caddy.service"]
    updated = dict(outputs, **{"dpkg-query": "caddy\t2.6.2-6\tii \n"})
    assert state.differences(record, "s1", state.fingerprint(*args, run=fake_run(updated))) == ["package:caddy"]
    off = dict(outputs, ufw="Status: inactive\n")
    assert state.differences(record, "s1", state.fingerprint(*args, run=fake_run(off))) == ["command:0"]


def test_the_record_is_written_root_only_and_only_when_it_changes(tmp_path):
    path = str(tmp_path / "state" / "caddy.json")
    record = {"stamp": "s1", "fingerprint": {"files": {}}}
    assert state.write_record(path, record) is True
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert state.write_record(path, record) is False
    assert state.read_record(path) == record
    Path(path).write_text("not json")
    assert state.read_record(path) is None


def test_the_code_digest_follows_names_and_contents(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "main.yml").write_text("---\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "x.pyc").write_bytes(b"\0")
    first = code.tree_digest([str(tmp_path)])
    (tmp_path / "__pycache__" / "y.pyc").write_bytes(b"\1")
    assert code.tree_digest([str(tmp_path)]) == first  # compiled caches do not count
    (tmp_path / "tasks" / "main.yml").write_text("--- # changed\n")
    second = code.tree_digest([str(tmp_path)])
    assert second != first
    (tmp_path / "tasks" / "main.yml").rename(tmp_path / "tasks" / "other.yml")
    assert code.tree_digest([str(tmp_path)]) != second


def test_a_tree_counts_every_file_under_it(tmp_path):
    (tmp_path / "lib" / "pkg").mkdir(parents=True)
    (tmp_path / "lib" / "pkg" / "a.py").write_text("x = 1\n")
    first = state.tree_digest(str(tmp_path / "lib"))
    assert state.tree_digest(str(tmp_path / "nope")) == "absent"
    (tmp_path / "lib" / "pkg" / "b.py").write_text("")
    assert state.tree_digest(str(tmp_path / "lib")) != first
    (tmp_path / "lib" / "pkg" / "b.py").unlink()
    assert state.tree_digest(str(tmp_path / "lib")) == first
    (tmp_path / "lib" / "pkg" / "a.py").write_text("x = 2\n")
    assert state.tree_digest(str(tmp_path / "lib")) != first


def test_one_summary_checks_every_record_with_the_spec_it_keeps(tmp_path):
    conf = tmp_path / "app.conf"
    conf.write_text("a = 1\n")
    run = fake_run({"systemctl": "LoadState=loaded\nActiveState=active\n", "dpkg-query": "caddy\t2.6\tii \n"})
    spec = {"files": [str(conf)], "trees": [], "units": ["caddy.service"], "packages": ["caddy"], "commands": []}
    current = state.fingerprint(spec["files"], spec["units"], spec["packages"], spec["commands"], run=run)
    records = tmp_path / "records"
    state.write_record(str(records / "caddy.json"), state.record_entry("s1", spec, current))
    state.write_record(str(records / "old.json"), {"stamp": "s2", "fingerprint": current})
    summary = state.records_summary(str(records), run=run)
    assert summary[str(records / "caddy.json")] == {"stamp": "s1", "matches": True, "differs": []}
    # A record written before records kept their spec never matches.
    assert summary[str(records / "old.json")]["matches"] is False
    conf.write_text("a = 2\n")
    changed = state.records_summary(str(records), run=run)[str(records / "caddy.json")]
    assert changed["matches"] is False and changed["differs"] == [f"file:{conf}"]
    stopped = fake_run({"systemctl": "LoadState=loaded\nActiveState=inactive\n", "dpkg-query": "caddy\t2.6\tii \n"})
    conf.write_text("a = 1\n")
    assert state.records_summary(str(records), run=stopped)[str(records / "caddy.json")]["differs"] == [
        "unit:caddy.service"]
    assert state.records_summary(str(tmp_path / "nowhere"), run=run) == {}


def test_a_refresh_keeps_the_stamp_and_takes_what_a_later_role_changed(tmp_path):
    conf = tmp_path / "catalog"
    conf.write_text("tables: 1\n")
    run = fake_run({"systemctl": "", "dpkg-query": ""})
    spec = {"files": [str(conf)], "trees": [], "units": [], "packages": [], "commands": []}
    records = tmp_path / "records"
    path = str(records / "postgresql.json")
    state.write_record(path, state.record_entry("s1", spec, state.fingerprint([str(conf)], [], [], [], run=run)))
    state.write_record(str(records / "old.json"), {"stamp": "s2", "fingerprint": {}})
    # A later role of the same run (the app's migrations) changes what this one fingerprints.
    conf.write_text("tables: 2\n")
    assert state.records_summary(str(records), run=run)[path]["differs"] == [f"file:{conf}"]
    refreshed = state.refresh_records([path, str(records / "old.json"), str(records / "missing.json")], run=run)
    assert refreshed == [path]
    assert state.read_record(path)["stamp"] == "s1"
    assert state.records_summary(str(records), run=run)[path] == {"stamp": "s1", "matches": True, "differs": []}
    # Nothing to rewrite the second time; a record without a spec is left as it was.
    assert state.refresh_records([path], run=run) == []
    assert state.read_record(str(records / "old.json")) == {"stamp": "s2", "fingerprint": {}}
