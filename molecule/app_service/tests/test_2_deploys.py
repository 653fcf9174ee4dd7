"""Deploys, a failed deploy, a restart, settings that fail or drift, and a
schema-guarded rollback, while requests flow.

Each test drives ansible-playbook once for all hosts (session fixtures in
conftest.py) while a bounded request loop runs through Caddy in every
container, then checks every host. Runs after test_1_converged.py (these
tests take no `host` argument, so pytest keeps them in file order).
"""

import json
import re

from conftest import (APP, KNOWN_GOOD, PROXY, SCENARIO_DIR, SECRETS, SETTINGS_FILES, all_hosts, current_release,
                      get, instance_record, log_lines, startup_sums, main_pid, playbook, recap, report, serving, settings_sums)


def _report(what: str, loops: dict) -> None:
    for name, loop in sorted(loops.items()):
        report(f"{what} on {name}: requests={loop['requests']} failures={loop['failures']} releases={loop['releases']}")


def test_check_mode_on_converged_hosts_changes_nothing():
    proc = playbook(SCENARIO_DIR / "converge.yml", "--check", "--diff", "--tags", "app_service")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", proc.stdout, re.M)
    assert len(recap) == len(all_hosts()) and all(changed == "0" for _, changed in recap), recap


def test_run_entry_point_runs_commands_in_the_current_release():
    """tasks_from: run.yml: the runtime role by default, the owner role on
    request, a failing command's exit code and stderr, nothing deployed."""
    whoami = ["python", "-c", "import os, urllib.parse; print('release=' + open('RELEASE_ID').read().strip() + "
              "' db_user=' + urllib.parse.urlsplit(os.environ['DATABASE_URL']).username)"]
    runtime = playbook(SCENARIO_DIR / "run.yml", "-e", json.dumps({"app_command": whoami}))
    owner = playbook(SCENARIO_DIR / "run.yml", "-e", json.dumps({"app_command": whoami, "app_command_owner": True}))
    failing = playbook(SCENARIO_DIR / "run.yml", "-e", json.dumps(
        {"app_command": ["python", "-c", "import sys; print('oops on stderr', file=sys.stderr); sys.exit(3)"]}))
    nothing = playbook(SCENARIO_DIR / "run.yml", "-e", json.dumps({"app_command": whoami, "app_service_name": "nothing"}))
    assert runtime.returncode == 0 and owner.returncode == 0, (_output(runtime) + _output(owner))[-3000:]
    for proc in (runtime, owner, failing, nothing):
        _no_secrets(proc)
    for name, host in all_hosts().items():
        release = current_release(host)
        assert f"release={release} db_user=app_rw" in _output(runtime)
        assert f"release={release} db_user=app_owner" in _output(owner)
    assert failing.returncode != 0 and "oops on stderr" in _output(failing) and "exited with 3" in _output(failing)
    assert nothing.returncode != 0 and "nothing has no release deployed on this host" in _output(nothing)
    report("run.yml: runtime role, owner role, exit code 3 shown, nothing deployed refused")


def test_bad_process_timer_and_egress_input_is_refused_naming_the_variable():
    cases = {
        "app_service_processes[1].name": {"app_service_processes": [{"name": "worker", "command": ["a"]},
                                                                    {"name": "worker", "command": ["b"]}]},
        "app_service_processes[0].command[2]: {port} has no value here": {
            "app_service_processes": [{"name": "w", "command": ["serve", "--port", "{port}"]}]},
        "app_service_timers[0].on_calendar": {"app_service_timers": [
            {"name": "t", "command": ["true"], "on_calendar": "every full moon"}]},
        "app_service_egress_allow[0]": {"app_service_egress_allow": ["db.example.org"]},
    }
    for expected, bad in cases.items():
        proc = playbook(SCENARIO_DIR / "converge.yml", "--tags", "app_service_install", "-e", json.dumps(bad))
        assert proc.returncode != 0 and expected in _output(proc), (expected, _output(proc)[-2000:])
    report(f"validation refused, naming the variable: {', '.join(cases)}")


def test_second_deploy_switches_without_losing_requests(deploy_v2, first_release):
    proc, loops = deploy_v2
    _report("deploy v2", loops)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name, host in all_hosts().items():
        loop = loops[name]
        # A floor: the loop ran through the run (Loops asserts it stopped on the stop file, not its limit).
        assert loop["requests"] > 50 and loop["failures"] == 0, loop
        new = current_release(host)
        assert new != first_release[name]
        # Both releases answered during the loop: traffic really moved.
        assert set(loop["releases"]) == {first_release[name], new}
        status, body = get(host, f"{PROXY}/health/db")
        assert status == 200 and body["revision"] == "0002" and body["release"] == new
        assert len(serving(host)) == 1
        last = host.check_output(f"tail -n1 /var/log/{APP}-deploy.log")
        assert "action=deploy" in last and "result=ok" in last and "revision=0002" in last


def test_broken_release_fails_and_old_keeps_serving(deploy_broken, deploy_v2):
    proc, loops = deploy_broken
    _report("broken deploy", loops)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, "deploying a release whose /health answers 500 must fail the run"
    assert "failed its health gate" in output
    assert "500 Internal Server Error" in output  # the new instance's journal is shown
    for name, host in all_hosts().items():
        loop = loops[name]
        # A floor: the loop ran through the run (Loops asserts it stopped on the stop file, not its limit).
        assert loop["requests"] > 50 and loop["failures"] == 0, loop
        v2 = current_release(host)
        assert set(loop["releases"]) == {v2}
        status, body = get(host, f"{PROXY}/health")
        assert status == 200 and body["release"] == v2
        assert len(serving(host)) == 1
        assert "result=failed" in host.check_output(f"tail -n1 /var/log/{APP}-deploy.log")


def test_restart_app_tag_restarts_without_losing_requests(restart, deploy_broken):
    proc, loops = restart
    _report("restart_app", loops)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name, host in all_hosts().items():
        loop = loops[name]
        # A floor: the loop ran through the run (Loops asserts it stopped on the stop file, not its limit).
        assert loop["requests"] > 50 and loop["failures"] == 0, loop
        last = host.check_output(f"tail -n1 /var/log/{APP}-deploy.log")
        assert "action=restart" in last and "result=ok" in last
        assert len(serving(host)) == 1


def _output(proc) -> str:
    return proc.stdout + proc.stderr


def _no_secrets(proc) -> None:
    leaked = [s for s in SECRETS if s in _output(proc)]
    assert not leaked, f"passwords in the run's output: {leaked}"


def test_failed_settings_restart_puts_known_good_back(settings_failure):
    proc, loops, before = settings_failure
    _report("settings failure (app_service_asgi_app=app.main:nope)", loops)
    output = _output(proc)
    assert proc.returncode != 0, "a settings change that breaks the app must fail the run"
    assert "failed its health gate" in output
    # The message names the variable that changed and shows the instance's journal.
    assert "Settings changed since the last good start: app_service_asgi_app." in output, output[-3000:]
    assert 'Attribute "nope" not found' in output
    _no_secrets(proc)
    for name, host in all_hosts().items():
        loop = loops[name]
        # A floor: the loop ran through the run (Loops asserts it stopped on the stop file, not its limit).
        assert loop["requests"] > 50 and loop["failures"] == 0, loop
        # The old instance keeps serving: same port, same process.
        assert serving(host) == before[name]["serving"]
        assert main_pid(host, serving(host)[0]) == before[name]["pid"]
        # The settings files on disk are byte-identical to before the run.
        after = settings_sums(host)
        report(f"settings failure on {name}: sha256 before {before[name]['sums']} after {after}")
        assert after == before[name]["sums"]
        # systemd has the restored unit loaded (daemon-reload ran).
        port = serving(host)[0]
        assert host.check_output(f"systemctl show -p NeedDaemonReload --value {APP}@{port}") == "no"
        assert "app.main:nope" not in host.check_output(f"systemctl cat {APP}@{port}")
        last = log_lines(host)[-1]
        assert "action=restart" in last and "source=settings:app_service_asgi_app" in last and "result=failed" in last


def test_plain_rerun_after_failure_restarts_nothing(settings_rerun):
    proc, before = settings_rerun
    assert proc.returncode == 0, _output(proc)[-3000:]
    changes = recap(proc)
    for name, host in all_hosts().items():
        report(f"plain converge after the failure on {name}: changed={changes[name][0]} serving={serving(host)} "
               f"deploy log lines {before[name]['log']} -> {len(log_lines(host))}")
        assert changes[name] == (0, 0)
        assert serving(host) == before[name]["serving"]
        assert main_pid(host, serving(host)[0]) == before[name]["pid"]
        assert len(log_lines(host)) == before[name]["log"]
        assert settings_sums(host) == before[name]["sums"]


def test_drifted_settings_restart_through_the_gate(settings_drift):
    proc, loops, before, kinds = settings_drift
    _report("settings drift", loops)
    assert proc.returncode == 0, _output(proc)[-3000:]
    _no_secrets(proc)
    for name, host in all_hosts().items():
        loop = loops[name]
        # A floor: the loop ran through the run (Loops asserts it stopped on the stop file, not its limit).
        assert loop["requests"] > 50 and loop["failures"] == 0, loop
        now = serving(host)
        report(f"settings drift ({kinds[name]}) on {name}: serving {before[name]['serving']} -> {now}, "
               f"pid {before[name]['pid']} -> {main_pid(host, now[0])}")
        # A fresh instance took over through the gate.
        assert len(now) == 1 and now != before[name]["serving"]
        last = log_lines(host)[-1]
        assert "action=restart" in last and "source=settings:files" in last and "result=ok" in last
        # The serving instance's record matches the files on disk, which are the known-good ones.
        sums = settings_sums(host)
        assert instance_record(host, now[0]) == startup_sums(sums)
        assert "HAND_EDIT" not in host.check_output(f"cat {SETTINGS_FILES['env']}")
        if kinds[name] == "hand edit":
            assert sums["env"] != before[name]["sums"]["env"]
        else:
            assert sums == before[name]["sums"]


def test_rollback_behind_the_schema_is_refused(rollback_refused, first_release):
    proc, loops, before, unrecorded = rollback_refused
    _report("rollback refused (schema)", loops)
    output = _output(proc)
    assert proc.returncode != 0, "a rollback to a release behind the database's schema must fail"
    _no_secrets(proc)
    for name, host in all_hosts().items():
        loop = loops[name]
        # A floor: the loop ran through the run (Loops asserts it stopped on the stop file, not its limit).
        assert loop["requests"] > 50 and loop["failures"] == 0, loop
        source = "read from the release now" if name in unrecorded else "recorded at build"
        expected = (f"release {first_release[name]} shipped schema head 0001 ({source}) "
                    f"but the database is at 0002 (read with current release {before[name]['current']})")
        report(f"rollback refused on {name}: head 0001 ({source}), database 0002; current stays {current_release(host)}")
        assert expected in output, output[-3000:]
        assert "app_service_rollback_allow_schema_mismatch: true" in output
        assert current_release(host) == before[name]["current"]
        assert serving(host) == before[name]["serving"]
        assert main_pid(host, serving(host)[0]) == before[name]["pid"]
        assert len(log_lines(host)) == before[name]["log"]


def test_rollback_guard_in_check_mode_and_through_include_role_vars(rollback_check_mode, first_release):
    refused, allowed, before = rollback_check_mode
    assert refused.returncode != 0, "check mode must refuse the same rollback"
    assert "shipped schema head 0001" in _output(refused) and "the database is at 0002" in _output(refused)
    # include_role vars: a release id and the mismatch allowed, as a fleet redeploy passes them.
    assert allowed.returncode == 0, _output(allowed)[-3000:]
    changes = recap(allowed)
    for name, host in all_hosts().items():
        assert f"Would roll back from {before[name]['current']} to {first_release[name]}" in _output(allowed)
        report(f"rollback --check on {name}: refused without the flag; with include_role vars "
               f"changed={changes[name][0]} (report only), current stays {current_release(host)}")
        assert current_release(host) == before[name]["current"]
        assert len(log_lines(host)) == before[name]["log"]
    assert "app_service_rollback_allow_schema_mismatch is true" in _output(allowed)


def test_rollback_to_previous_release(rollback, first_release):
    proc, loops = rollback
    _report("rollback (schema mismatch allowed)", loops)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name, host in all_hosts().items():
        loop = loops[name]
        # A floor: the loop ran through the run (Loops asserts it stopped on the stop file, not its limit).
        assert loop["requests"] > 50 and loop["failures"] == 0, loop
        assert current_release(host) == first_release[name]
        status, body = get(host, f"{PROXY}/health")
        assert status == 200 and body["release"] == first_release[name]
        last = host.check_output(f"tail -n1 /var/log/{APP}-deploy.log")
        assert "action=rollback" in last and "result=ok" in last and "revision=0002" in last
        # The known-good copies now are the files the rolled-back instance started with.
        sums = settings_sums(host)
        copies = {n: s for n, s in zip(SETTINGS_FILES, host.check_output(
            f"sha256sum {' '.join(f'{KNOWN_GOOD}/{n}' for n in SETTINGS_FILES)}").split()[::2])}
        assert copies == sums
        assert instance_record(host, serving(host)[0]) == startup_sums(sums)
