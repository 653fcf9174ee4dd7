"""Unit tests for roles/base/files/stack_held_updates.py (apt's hook that
reports held package updates waiting, and since when), with apt's version
comparison replaced by a small Debian-like one."""

import json
import os
import re
import stat
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "roles", "base", "files"))

import stack_held_updates as held  # noqa: E402

# The base role's default hold list (roles/base/defaults/main.yml).
DEFAULTS = ["postgresql-[0-9]+$", "pgbouncer$", "caddy$"]
T0 = 1_765_000_000.0


def compare(a: str, b: str) -> int:
    """Enough of dpkg's ordering for these tests: numeric runs compared as numbers."""
    def key(version):
        return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", version)]
    return (key(a) > key(b)) - (key(a) < key(b))


def patterns(entries=DEFAULTS):
    compiled, errors = held.compile_patterns(entries)
    assert errors == []
    return compiled


@pytest.mark.parametrize("name, expected", [
    ("postgresql-15", True), ("postgresql-17", True), ("pgbouncer", True), ("caddy", True),
    ("postgresql-common", False), ("postgresql-client-15", False), ("libpq5", False),
    ("postgresql-15-pgvector", False), ("python3-pgbouncer", False), ("caddy-l4", False),
    ("prometheus-pgbouncer-exporter", False), ("postgresql", False),
])
def test_the_default_hold_list_matches_the_servers_only(name, expected):
    assert held.is_held(name, patterns()) is expected


def test_entries_match_at_the_start_of_the_name_like_unattended_upgrades():
    # re.match: "pgbouncer" without $ also holds pgbouncer-doc, never python3-pgbouncer.
    compiled = patterns(["pgbouncer"])
    assert held.is_held("pgbouncer-doc", compiled) and not held.is_held("python3-pgbouncer", compiled)


def test_an_invalid_entry_is_reported_and_left_out():
    compiled, errors = held.compile_patterns(["caddy$", "postgresql-[0-9+$"])
    assert [p.pattern for p in compiled] == ["caddy$"]
    assert len(errors) == 1 and "'postgresql-[0-9+$' is not a regular expression" in errors[0]


def test_find_pending_keeps_held_packages_with_a_newer_candidate():
    packages = [
        ("postgresql-15", "15.18-0+deb12u1", "15.20-0+deb12u1"),
        ("postgresql-client-15", "15.18-0+deb12u1", "15.20-0+deb12u1"),  # not held
        ("caddy", "2.6.2-5", "2.6.2-5"),  # up to date
        ("pgbouncer", "1.18.0-1", None),  # no candidate (a locally installed .deb)
        ("postgresql-16", "16.4-1", "16.2-1"),  # installed is newer than the candidate
    ]
    assert held.find_pending(packages, patterns(), compare) == [
        held.Pending("postgresql-15", "15.18-0+deb12u1", "15.20-0+deb12u1")]


def test_first_sight_is_recorded_and_kept_on_later_checks():
    pending = [held.Pending("postgresql-15", "15.18-0+deb12u1", "15.20-0+deb12u1")]
    first = held.update_state({}, pending, T0, compare)
    assert first == {"postgresql-15": {"15.20-0+deb12u1": T0}}
    again = held.update_state(first, pending, T0 + 3600, compare)
    assert again == first


def test_a_newer_candidate_keeps_the_older_since_time():
    state = {"postgresql-15": {"15.20-0+deb12u1": T0}}
    pending = [held.Pending("postgresql-15", "15.18-0+deb12u1", "15.21-0+deb12u1")]
    new = held.update_state(state, pending, T0 + 86400, compare)
    assert new == {"postgresql-15": {"15.20-0+deb12u1": T0, "15.21-0+deb12u1": T0 + 86400}}
    assert held.since(new, "postgresql-15") == T0


def test_an_installed_update_leaves_the_state():
    state = {"postgresql-15": {"15.20-0+deb12u1": T0}, "caddy": {"2.6.2-5+deb12u1": T0}}
    # 15.20 installed, 15.21 waiting: only 15.21's time counts from now on.
    pending = [held.Pending("postgresql-15", "15.20-0+deb12u1", "15.21-0+deb12u1")]
    new = held.update_state(state, pending, T0 + 100, compare)
    assert new == {"postgresql-15": {"15.21-0+deb12u1": T0 + 100}}
    assert held.update_state(new, [], T0 + 200, compare) == {}


def test_malformed_state_entries_are_dropped():
    state = {"postgresql-15": {"15.20-0+deb12u1": "yesterday", "15.19": True}, "caddy": ["x"]}
    pending = [held.Pending("postgresql-15", "15.18-0+deb12u1", "15.20-0+deb12u1"),
               held.Pending("caddy", "2.6.2-5", "2.6.2-5+deb12u1")]
    assert held.update_state(state, pending, T0, compare) == {
        "postgresql-15": {"15.20-0+deb12u1": T0}, "caddy": {"2.6.2-5+deb12u1": T0}}


def test_metrics_name_the_package_versions_and_since_time():
    pending = [held.Pending("caddy", "2.6.2-5", "2.6.2-5+deb12u1"),
               held.Pending("postgresql-15", "15.18-0+deb12u1", "15.20-0+deb12u1")]
    state = {"caddy": {"2.6.2-5+deb12u1": T0 + 60}, "postgresql-15": {"15.19-0+deb12u1": T0, "15.20-0+deb12u1": T0 + 5}}
    text = held.render_metrics(pending, state, T0 + 120)
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert samples == [
        "stack_held_updates_pending 2",
        'stack_held_update_pending{package="caddy",installed="2.6.2-5",candidate="2.6.2-5+deb12u1"} 1',
        'stack_held_update_pending{package="postgresql-15",installed="15.18-0+deb12u1",candidate="15.20-0+deb12u1"} 1',
        'stack_held_update_pending_since_timestamp_seconds{package="caddy"} 1765000060',
        'stack_held_update_pending_since_timestamp_seconds{package="postgresql-15"} 1765000000',
        "stack_held_updates_last_check_timestamp_seconds 1765000120",
    ]
    assert text.endswith("\n")
    # Every sample's family has its HELP and TYPE lines.
    for family in {s.split("{")[0].split()[0] for s in samples}:
        assert f"# HELP {family} " in text and f"# TYPE {family} gauge" in text


def test_no_pending_update_still_writes_the_count():
    samples = [line for line in held.render_metrics([], {}, T0).splitlines() if not line.startswith("#")]
    assert samples == ["stack_held_updates_pending 0", "stack_held_updates_last_check_timestamp_seconds 1765000000"]


def test_label_values_are_escaped():
    text = held.render_metrics([held.Pending('a"b\\c', "1", "2")], {'a"b\\c': {"2": T0}}, T0)
    assert 'package="a\\"b\\\\c"' in text


def test_write_atomic_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "held.prom"
    target.write_text("old\n")
    held.write_atomic(str(target), "new\n")
    assert target.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held.prom"]


def test_load_state_survives_a_missing_or_broken_file(tmp_path):
    assert held.load_state(str(tmp_path / "missing.json")) == {}
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert held.load_state(str(broken)) == {}
    broken.write_text('["a list"]')
    assert held.load_state(str(broken)) == {}


def fake_apt(monkeypatch, entries, packages):
    monkeypatch.setattr(held, "blacklist", lambda: entries)
    monkeypatch.setattr(held, "apt_packages", lambda compiled: (
        [p for p in packages if held.is_held(p[0], compiled)], compare))


def test_run_keeps_the_since_time_across_checks_and_clears_an_installed_update(tmp_path, monkeypatch):
    state, metrics = tmp_path / "lib" / "state.json", tmp_path / "held.prom"
    fake_apt(monkeypatch, DEFAULTS, [("postgresql-15", "15.18-0+deb12u1", "15.20-0+deb12u1"),
                                     ("libpq5", "15.18-0+deb12u1", "15.20-0+deb12u1")])
    assert held.run(str(state), str(metrics), T0) == [
        held.Pending("postgresql-15", "15.18-0+deb12u1", "15.20-0+deb12u1")]
    held.run(str(state), str(metrics), T0 + 600)
    assert json.loads(state.read_text()) == {"packages": {"postgresql-15": {"15.20-0+deb12u1": T0}}}
    assert 'stack_held_update_pending_since_timestamp_seconds{package="postgresql-15"} 1765000000' in metrics.read_text()
    assert "stack_held_updates_last_check_timestamp_seconds 1765000600" in metrics.read_text()
    # The update is installed (a dpkg run): the package leaves the state and the metrics.
    fake_apt(monkeypatch, DEFAULTS, [("postgresql-15", "15.20-0+deb12u1", "15.20-0+deb12u1")])
    assert held.run(str(state), str(metrics), T0 + 700) == []
    assert json.loads(state.read_text()) == {"packages": {}}
    assert "stack_held_updates_pending 0" in metrics.read_text()
    assert "package=" not in metrics.read_text()


def test_run_without_the_metrics_directory_keeps_the_state_only(tmp_path, monkeypatch):
    fake_apt(monkeypatch, DEFAULTS, [("caddy", "2.6.2-5", "2.6.2-5+deb12u1")])
    metrics = tmp_path / "node-exporter" / "held.prom"
    held.run(str(tmp_path / "state.json"), str(metrics), T0)
    assert not metrics.parent.exists()
    assert json.loads((tmp_path / "state.json").read_text())["packages"] == {"caddy": {"2.6.2-5+deb12u1": T0}}


def test_main_never_fails_apt_unless_strict(tmp_path, monkeypatch, capsys):
    def broken():
        raise OSError("cannot open the package cache")
    monkeypatch.setattr(held, "blacklist", broken)
    monkeypatch.setattr(held.syslog, "syslog", lambda *args: None)
    args = ["--state", str(tmp_path / "state.json"), "--metrics", str(tmp_path / "held.prom")]
    assert held.main(args) == 0
    assert "checking the held updates failed: OSError: cannot open the package cache" in capsys.readouterr().err
    assert held.main(args + ["--strict"]) == 1
    assert held.main(["--no-such-option"]) == 0
    assert not (tmp_path / "held.prom").exists()
