"""Unit tests for the deploy lock: roles/app_service/library/app_service_lock.py
(the host side) and action_plugins/app_service_lock.py (the controller side)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = _load("app_service_lock_module", "roles/app_service/library/app_service_lock.py")
action = _load("app_service_lock_action", "roles/app_service/action_plugins/app_service_lock.py")
stack_run = _load("stack_run_lookup", "lookup_plugins/stack_run.py")

ALICE = {"id": "laptop:100:5", "user": "alice", "controller": "laptop", "pid": 100, "pid_start": "5"}
BOB = {"id": "desk:200:7", "user": "bob", "controller": "desk", "pid": 200, "pid_start": "7"}


def test_first_take_creates_the_lock_with_its_holder(tmp_path):
    path = str(tmp_path / "demo.lock")
    result = lock.decide(path, "present", ALICE, now=1000)
    assert result["acquired"] and not result["renewed"]
    assert json.loads((tmp_path / "demo.lock/holder.json").read_text())["user"] == "alice"
    assert oct(os.stat(path).st_mode & 0o777) == "0o700"
    assert oct(os.stat(path + "/holder.json").st_mode & 0o777) == "0o600"


def test_a_second_holder_is_refused_and_told_who_holds_it(tmp_path):
    path = str(tmp_path / "demo.lock")
    lock.decide(path, "present", ALICE, now=1000)
    result = lock.decide(path, "present", BOB, lease_seconds=1800)
    assert not result["acquired"] and result["held"]
    assert result["holder"]["user"] == "alice" and not result["expired"]


def test_the_same_holder_renews_and_keeps_its_start(tmp_path):
    path = str(tmp_path / "demo.lock")
    lock.decide(path, "present", ALICE, now=1000)
    holder_file = Path(path) / "holder.json"
    os.utime(holder_file, (0, 0))
    result = lock.decide(path, "present", ALICE, now=2000)
    assert result["acquired"] and result["renewed"] and result["holder"]["since"] == 1000
    assert lock.read_lock(path)[2] < 5


def test_an_old_lease_is_reported_expired(tmp_path):
    path = str(tmp_path / "demo.lock")
    lock.decide(path, "present", ALICE, now=1000)
    os.utime(Path(path) / "holder.json", (0, 0))
    result = lock.decide(path, "present", BOB, lease_seconds=60)
    assert not result["acquired"] and result["expired"]


def test_takeover_replaces_only_the_holder_it_names(tmp_path):
    path = str(tmp_path / "demo.lock")
    lock.decide(path, "present", ALICE, now=1000)
    carol = dict(BOB, id="other:1:1", user="carol")
    assert not lock.decide(path, "present", carol, takeover="someone-else")["acquired"]
    result = lock.decide(path, "present", BOB, takeover=ALICE["id"], now=3000)
    assert result["acquired"] and result["took_over"]["user"] == "alice"
    assert result["holder"]["user"] == "bob" and result["holder"]["since"] == 3000
    # A second taker that saw alice too comes too late: bob holds it now.
    assert not lock.decide(path, "present", carol, takeover=ALICE["id"])["acquired"]


def test_a_lock_without_holder_file_is_taken_over_as_dash(tmp_path):
    path = tmp_path / "demo.lock"
    path.mkdir()
    result = lock.decide(str(path), "present", BOB)
    assert not result["acquired"] and result["holder"] == {}
    assert lock.decide(str(path), "present", BOB, takeover="-")["acquired"]


def test_release_removes_only_its_own_lock_unless_forced(tmp_path):
    path = str(tmp_path / "demo.lock")
    lock.decide(path, "present", ALICE)
    assert not lock.decide(path, "absent", BOB)["released"] and os.path.isdir(path)
    assert lock.decide(path, "absent", ALICE)["released"] and not os.path.exists(path)
    lock.decide(path, "present", ALICE)
    released = lock.decide(path, "absent", {}, force=True)
    assert released["released"] and released["holder"]["user"] == "alice" and not os.path.exists(path)


def test_query_changes_nothing(tmp_path):
    path = str(tmp_path / "demo.lock")
    assert lock.decide(path, "query", {}) ["held"] is False
    lock.decide(path, "present", ALICE)
    result = lock.decide(path, "query", {})
    assert result["held"] and result["holder"]["id"] == ALICE["id"] and not result["acquired"]


# ------------------------------------------------------------ controller side

def test_a_holder_whose_process_ended_on_this_controller_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    me = {"controller": "ctl"}
    dead = {"controller": "ctl", "pid": child.pid, "pid_start": ""}
    assert "has ended" in action.gone_reason(dead, me, 10, False, 1800)


def test_a_live_holder_or_one_on_another_controller_is_not_gone():
    me = {"controller": "ctl"}
    alive = {"controller": "ctl", "pid": os.getpid(), "pid_start": action._proc_stat(os.getpid())[1]}
    assert action.gone_reason(alive, me, 10, False, 1800) == ""
    elsewhere = {"controller": "laptop", "pid": 999999999, "pid_start": ""}
    assert action.gone_reason(elsewhere, me, 10, False, 1800) == ""
    assert "lease expired" in action.gone_reason(elsewhere, me, 2000, True, 1800)


def test_a_reused_pid_with_another_start_time_counts_as_ended():
    assert not action.process_alive(os.getpid(), "not-its-start-time")
    assert action.process_alive(os.getpid(), action._proc_stat(os.getpid())[1])


def test_the_run_names_the_playbook_and_the_inventory_commit(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=a@b", "-c", "user.name=a",
                    "commit", "-qm", "x"], check=True)
    argv = ["ansible-playbook", "-i", "inv", "playbooks/redeploy.yml", "-e", "x=1"]
    who = stack_run.run_info({"inventory_dir": str(tmp_path)}, "hotfix", argv)
    assert who["message"] == "hotfix" and len(who["inventory_commit"]) == 12
    assert who["playbook"] == "playbooks/redeploy.yml" and who["user"] and who["controller"]
    (tmp_path / "hosts.yml").write_text("all: {hosts: {}}\n")
    assert stack_run.run_info({"inventory_dir": str(tmp_path)}, "", argv)["inventory_commit"].endswith("+")
    assert stack_run.run_info({}, None, argv)["inventory_commit"] == "" and stack_run.run_info({}, None, argv)["message"] == ""


def test_the_holder_is_the_run_named_by_its_playbook_process():
    pid, start, _ = action.playbook_process()
    holder = action.make_holder({"user": "a", "controller": "ctl", "playbook": "p.yml", "inventory_commit": "",
                                 "message": ""}, pid, start)
    assert holder["id"] == f"ctl:{pid}:{start or '-'}" and holder["pid"] == pid and holder["user"] == "a"


def test_the_summary_lock_yml_prints_names_the_holder_or_the_release():
    assert action.summary({"held": False}) == "not locked"
    held = dict(BOB, since=86400, playbook="redeploy.yml", phase="built", message="hotfix")
    text = action.summary({"held": True, "holder": held, "age": 42, "expired": True})
    assert text.startswith("locked by bob@desk (ansible-playbook pid 200, redeploy.yml) since 1970-01-02T00:00:00Z")
    assert "phase built, lease renewed 42s ago, message 'hotfix', expired" in text
    assert action.summary({"held": True, "released": True, "holder": BOB}) == "released the lock of bob@desk"
