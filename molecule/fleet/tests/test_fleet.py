"""The whole stack on a split fleet (db, app1, app2, web), proven from outside."""

import os
import sys

import pytest
import testinfra

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared"))

from stacktest import FAIL_HEALTH_FILE, RequestLoop, get, recap, redeploy_under_load, run_playbook  # noqa: E402

# Each test picks its hosts itself; run every test once.
testinfra_hosts = ["ansible://fleet-web"]


def node(name):
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


def can_connect(src, dest, port):
    """TCP connect from one fleet host to another (3 s timeout)."""
    cmd = src.run(
        "python3 -c 'import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)' %s %s",
        dest, str(port))
    return cmd.rc == 0


def test_health_through_caddy_reaches_both_app_hosts(host):
    status, body = get(host, "/health/db")
    assert status == 200 and body["status"] == "ok" and body["db_user"] == "demo_app", body
    # Caddy's upstreams are both instances of both app hosts.
    caddyfile = host.file("/etc/caddy/Caddyfile").content_string
    for app in ("fleet-app1", "fleet-app2"):
        address = node(app).check_output("hostname -I").split()[0]
        assert f"{address}:8001" in caddyfile and f"{address}:8002" in caddyfile, (app, address)
    served = {node(app).check_output("readlink -f /srv/demo/current") for app in ("fleet-app1", "fleet-app2")}
    assert len(served) == 1, served


@pytest.mark.parametrize("src, allowed", [("fleet-app1", True), ("fleet-app2", True), ("fleet-web", False)])
def test_database_port_only_from_app_hosts(host, src, allowed):
    assert can_connect(node(src), "fleet-db", 9991) is allowed


def test_app_ports_only_from_the_web_host(host):
    assert can_connect(host, "fleet-app1", 8001) or can_connect(host, "fleet-app1", 8002)
    db = node("fleet-db")
    assert not can_connect(db, "fleet-app1", 8001) and not can_connect(db, "fleet-app1", 8002)


def test_check_mode_reports_no_changes(host):
    rc, out = run_playbook("playbooks/site.yml", "--check", "--diff")
    counts = recap(out)
    assert rc == 0, out[-4000:]
    assert set(counts) == {"fleet-db", "fleet-app1", "fleet-app2", "fleet-web"}, counts
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), counts


def test_backup_playbook_produces_a_verified_backup(host):
    rc, out = run_playbook("playbooks/backup.yml")
    assert rc == 0, out[-4000:]
    assert "verified True" in out


APPS = ("fleet-app1", "fleet-app2")


def serving(app):
    return node(app).check_output("readlink -f /srv/demo/current").rsplit("/", 1)[-1]


def test_rolling_redeploy_loses_no_request(host, tmp_path):
    _, before = get(host, "/health")
    rc, out, loop = redeploy_under_load(host, tmp_path, "fleet-v2")
    assert rc == 0, out[-4000:]
    _, after = get(host, "/health")
    assert after["release"] != before["release"]
    releases = {node(app).check_output("readlink -f /srv/demo/current") for app in ("fleet-app1", "fleet-app2")}
    assert len(releases) == 1, releases
    assert loop.result["requests"] > 50
    assert loop.result["failures"] == 0, loop.result


def test_release_failing_on_the_second_app_host_leaves_both_on_the_old_release(host, tmp_path):
    before = {app: serving(app) for app in APPS}
    assert len(set(before.values())) == 1, before
    node("fleet-app2").check_output("touch %s", FAIL_HEALTH_FILE)
    try:
        rc, out, loop = redeploy_under_load(host, tmp_path, "fleet-bad-on-app2", "-e", "app_service_health_timeout=10",
                                            fail_where_flagged=True)
    finally:
        node("fleet-app2").run("rm -f %s", FAIL_HEALTH_FILE)
    print(out[out.find("The release failed on"):][:600])
    assert rc != 0, out[-4000:]
    assert "The release failed on fleet-app2" in out, out[-4000:]
    assert "failed its health gate" in out
    after = {app: serving(app) for app in APPS}
    assert after == before, (before, after)
    # app1 really switched to the new release, then went back through the gate.
    log = node("fleet-app1").check_output("tail -n 2 /var/log/demo-deploy.log").splitlines()
    assert "action=deploy" in log[0] and "result=ok" in log[0], log
    assert "action=rollback" in log[1] and "result=ok" in log[1] and f"release={before['fleet-app1']}" in log[1], log
    assert loop.result["requests"] > 50
    assert loop.result["failures"] == 0, loop.result
    # Only the old release answered through Caddy at the end.
    _, body = get(host, "/health")
    assert body["release"] == before["fleet-app1"]


def test_restart_app_tag_loses_no_request(host):
    with RequestLoop(host, "restart") as loop:
        rc, out = run_playbook("playbooks/site.yml", "--tags", "restart_app")
    assert rc == 0, out[-4000:]
    assert loop.result["requests"] > 50
    assert loop.result["failures"] == 0, loop.result
