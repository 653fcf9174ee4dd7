"""Deploys, a failed deploy, a restart and a rollback while requests flow.

Each test drives ansible-playbook once for all hosts (session fixtures in
conftest.py) while a bounded request loop runs through Caddy in every
container, then checks every host. Runs after test_1_converged.py (these
tests take no `host` argument, so pytest keeps them in file order).
"""

import re

from conftest import APP, PORTS, PROXY, SCENARIO_DIR, all_hosts, current_release, get, playbook, report


def _serving(host) -> list[int]:
    return [p for p in PORTS if host.service(f"{APP}@{p}").is_running]


def _report(what: str, loops: dict) -> None:
    for name, loop in sorted(loops.items()):
        report(f"{what} on {name}: requests={loop['requests']} failures={loop['failures']} releases={loop['releases']}")


def test_check_mode_on_converged_hosts_changes_nothing():
    proc = playbook(SCENARIO_DIR / "converge.yml", "--check", "--diff", "--tags", "app_service")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", proc.stdout, re.M)
    assert len(recap) == len(all_hosts()) and all(changed == "0" for _, changed in recap), recap


def test_second_deploy_switches_without_losing_requests(deploy_v2, first_release):
    proc, loops = deploy_v2
    _report("deploy v2", loops)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name, host in all_hosts().items():
        loop = loops[name]
        assert loop["requests"] > 50
        assert loop["failures"] == 0, loop["errors"]
        new = current_release(host)
        assert new != first_release[name]
        # Both releases answered during the loop: traffic really moved.
        assert set(loop["releases"]) == {first_release[name], new}
        status, body = get(host, f"{PROXY}/health/db")
        assert status == 200 and body["revision"] == "0002" and body["release"] == new
        assert len(_serving(host)) == 1
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
        assert loop["requests"] > 50
        assert loop["failures"] == 0, loop["errors"]
        v2 = current_release(host)
        assert set(loop["releases"]) == {v2}
        status, body = get(host, f"{PROXY}/health")
        assert status == 200 and body["release"] == v2
        assert len(_serving(host)) == 1
        assert "result=failed" in host.check_output(f"tail -n1 /var/log/{APP}-deploy.log")


def test_restart_app_tag_restarts_without_losing_requests(restart, deploy_broken):
    proc, loops = restart
    _report("restart_app", loops)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name, host in all_hosts().items():
        loop = loops[name]
        assert loop["failures"] == 0, loop["errors"]
        last = host.check_output(f"tail -n1 /var/log/{APP}-deploy.log")
        assert "action=restart" in last and "result=ok" in last
        assert len(_serving(host)) == 1


def test_rollback_to_previous_release(rollback, first_release):
    proc, loops = rollback
    _report("rollback", loops)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name, host in all_hosts().items():
        loop = loops[name]
        assert loop["failures"] == 0, loop["errors"]
        assert current_release(host) == first_release[name]
        status, body = get(host, f"{PROXY}/health")
        assert status == 200 and body["release"] == first_release[name]
        last = host.check_output(f"tail -n1 /var/log/{APP}-deploy.log")
        assert "action=rollback" in last and "result=ok" in last
