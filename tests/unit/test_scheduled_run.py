"""Tests for bin/scheduled_run.py: real ansible-runner runs on localhost."""

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "scheduled_run", Path(__file__).resolve().parents[2] / "bin" / "scheduled_run.py")
sr = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(sr)

PLAY_OK = """
- name: Good
  hosts: all
  gather_facts: false
  tasks:
    - name: A change
      ansible.builtin.command: "true"
    - name: No change
      ansible.builtin.debug:
        msg: hello
"""
PLAY_FAIL = """
- name: Bad
  hosts: all
  gather_facts: false
  tasks:
    - name: Boom
      ansible.builtin.fail:
        msg: planned failure
"""


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "ok.yml").write_text(PLAY_OK)
    (tmp_path / "fail.yml").write_text(PLAY_FAIL)
    (tmp_path / "hosts.ini").write_text(
        f"testhost ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    return tmp_path


def run(workdir, playbook, *extra):
    return sr.main([str(workdir / playbook), "-i", str(workdir / "hosts.ini"),
                    "--summary", str(workdir / "summary.json"), "--lock", str(workdir / "run.lock"),
                    "--artifacts", str(workdir / "runner"), *extra])


def test_successful_run_writes_summary_and_exits_zero(workdir):
    assert run(workdir, "ok.yml") == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "successful"
    assert summary["rc"] == 0
    assert summary["hosts"]["testhost"]["ok"] == 2
    assert summary["hosts"]["testhost"]["changed"] == 1
    assert summary["hosts"]["testhost"]["failed"] == 0
    assert summary["totals"] == {"ok": 2, "changed": 1, "failed": 0, "unreachable": 0}
    assert summary["duration_seconds"] >= 0
    assert oct(os.stat(workdir / "summary.json").st_mode & 0o777) == "0o640"
    assert run(workdir, "ok.yml", "-e", "x=1") == 0


def test_failed_run_exits_non_zero_with_failed_counts(workdir):
    assert run(workdir, "fail.yml") == 1
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["hosts"]["testhost"]["failed"] == 1
    assert summary["totals"]["failed"] == 1


def test_overlapping_run_is_refused_while_the_lock_is_held(workdir):
    with sr.RunLock(workdir / "run.lock"):
        assert run(workdir, "ok.yml") == sr.EX_LOCKED
    assert not (workdir / "summary.json").exists()
    # Released: the next run goes ahead.
    assert run(workdir, "ok.yml") == 0


def test_usage_errors(workdir):
    assert sr.main([str(workdir / "missing.yml"), "-i", str(workdir / "hosts.ini")]) == sr.EX_USAGE
    assert sr.main([str(workdir / "ok.yml"), "-i", str(workdir / "nope.ini")]) == sr.EX_USAGE


def test_host_stats_and_summary_are_pure():
    stats = {"ok": {"a": 3, "b": 1}, "changed": {"a": 1}, "failures": {"b": 1}, "dark": {"c": 1}}
    hosts = sr.host_stats(stats)
    assert hosts["a"] == {"ok": 3, "changed": 1, "failed": 0, "unreachable": 0, "skipped": 0, "rescued": 0, "ignored": 0}
    assert hosts["b"]["failed"] == 1 and hosts["c"]["unreachable"] == 1
    summary = sr.build_summary("p.yml", "failed", 2, 100.0, 112.34, stats)
    assert summary["duration_seconds"] == 12.3
    assert summary["totals"] == {"ok": 4, "changed": 1, "failed": 1, "unreachable": 1}
    assert sr.host_stats(None) == {}
    assert sr.exit_code("successful") == 0
    assert sr.exit_code("timeout") == 1
