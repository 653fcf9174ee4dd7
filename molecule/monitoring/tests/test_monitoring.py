"""The monitoring role seen from outside: exporters answer, only on
localhost; every alert the tests can produce reaches the webhook receiver;
the Watchdog reaches the dead-man's switch; bad input fails before anything
changes; check mode reports no changes. Tests run in file order: the alert
test breaks things and puts them back."""

import json
import os
import re
import shlex
import subprocess
import time

import pytest

CONVERGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "converge.yml")


def _inventory():
    path = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not path or not os.path.exists(path):
        pytest.fail("MOLECULE_INVENTORY_FILE is not set: run through molecule verify")
    return path


CHROMIUM = ("chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
            "--virtual-time-budget=2000")
STATUS = "file:///var/lib/stack-status/index.html"
REPORTS = os.path.join(os.environ.get("MOLECULE_PROJECT_DIRECTORY", "."), "reports")


def status_dom(host, screenshot=""):
    """The status page as Chromium renders it (and a screenshot, copied to
    reports/ on the controller, which git ignores)."""
    if screenshot:
        # Not /tmp: docker cp does not see the container's tmpfs mounts.
        host.check_output(f"cd /var/tmp && {CHROMIUM} --window-size=1280,900 --screenshot=/var/tmp/{screenshot} "
                          f"{STATUS}")
        os.makedirs(REPORTS, exist_ok=True)
        subprocess.run(["docker", "cp", f"{host.backend.host}:/var/tmp/{screenshot}",
                        os.path.join(REPORTS, screenshot)], check=True)
        assert os.path.getsize(os.path.join(REPORTS, screenshot)) > 10000
    return host.check_output(f"{CHROMIUM} --dump-dom {STATUS} 2>/dev/null")


def wait_for_status(host, predicate, seconds=60):
    deadline = time.time() + seconds
    dom = ""
    while time.time() < deadline:
        dom = status_dom(host)
        if predicate(dom):
            return dom
        time.sleep(2)
    return dom


def prom(host, path):
    return json.loads(host.check_output(f"curl -sf 'http://127.0.0.1:9090{path}'"))


def received(host, name):
    out = host.run(f"cat /var/lib/webhook/{name}.jsonl").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def firing(host, name):
    names = set()
    for message in received(host, name):
        names.update(a["labels"]["alertname"] for a in message["alerts"] if a["status"] == "firing")
    return names


def assert_alerts_reach_the_webhook(host, wanted, started, seconds=120):
    """Wait until every alert of ``wanted`` has reached the team's webhook;
    print how long each took from ``started`` (the fault)."""
    seen = {}
    deadline = time.time() + seconds
    while time.time() < deadline and set(seen) != wanted:
        for name in wanted & firing(host, "team"):
            seen.setdefault(name, round(time.time() - started, 1))
        time.sleep(1)
    print(f"seconds from the fault to the webhook: {seen}")
    assert set(seen) == wanted, (wanted - set(seen), prom(host, "/api/v1/alerts"))


def test_exporters_answer_and_every_target_is_up(host):
    assert "node_filesystem_avail_bytes" in host.check_output("curl -sf http://127.0.0.1:9100/metrics")
    assert "pg_up 1" in host.check_output("curl -sf http://127.0.0.1:9187/metrics")
    deadline = time.time() + 60
    while True:
        targets = prom(host, "/api/v1/targets")["data"]["activeTargets"]
        # Every target on its own: one job's down target must not hide behind another that is up.
        health = {f'{t["labels"]["job"]} {t["labels"].get("instance", "")}': t["health"] for t in targets}
        if all(h == "up" for h in health.values()) or time.time() > deadline:
            break
        time.sleep(2)
    print(f"targets: {health}")
    assert {name.split()[0] for name in health} >= {"prometheus", "alertmanager", "node", "postgres", "http_app",
                                                    "http_tls", "caddy"}
    assert all(h == "up" for h in health.values()), health


def test_the_status_page_shows_everything_working_in_chromium(host):
    dom = wait_for_status(host, lambda d: 'id="overall" data-state="ok"' in d)
    status_dom(host, "monitoring-status-ok.png")
    assert 'id="overall" data-state="ok"' in dom, dom[-2000:]
    assert "Everything is working" in dom
    assert "PostgreSQL on monitoring-debian13" in dom and "HTTP check app" in dom
    assert "prometheus on monitoring-debian13" in dom and "alertmanager on monitoring-debian13" in dom


def test_everything_listens_on_localhost_only(host):
    listening = host.check_output("ss -Htln | awk '{print $4}'").split()
    for port in (9090, 9093, 9100, 9115, 9187, 2020):
        addresses = [a for a in listening if a.endswith(f":{port}")]
        assert addresses == [f"127.0.0.1:{port}"], (port, addresses)
    assert not [a for a in listening if a.endswith(":9094")]  # no cluster gossip


def test_the_exporter_role_is_only_a_pg_monitor_member(host):
    out = host.check_output("runuser -u postgres -- psql -X -At -p 9991 -c "
                            "\"SELECT rolsuper, rolcreatedb, rolcreaterole, "
                            "(SELECT string_agg(b.rolname, ',') FROM pg_auth_members m JOIN pg_roles b ON b.oid = m.roleid "
                            "WHERE m.member = r.oid) FROM pg_roles r WHERE rolname = 'prometheus'\"")
    assert out == "f|f|f|pg_monitor", out


def test_watchdog_reaches_the_dead_mans_switch(host):
    deadline = time.time() + 60
    while "Watchdog" not in firing(host, "deadman") and time.time() < deadline:
        time.sleep(2)
    assert "Watchdog" in firing(host, "deadman")
    assert "Watchdog" not in firing(host, "team")


# What the base role's apt hook writes (roles/base/files/stack_held_updates.py)
# for an update of PostgreSQL's server package first seen 100 hours ago.
HELD_METRICS = """# TYPE stack_held_updates_pending gauge
stack_held_updates_pending 1
# TYPE stack_held_update_pending gauge
stack_held_update_pending{{package="postgresql-17",installed="17.12-0+deb13u1",candidate="17.13-0+deb13u1"}} 1
# TYPE stack_held_update_pending_since_timestamp_seconds gauge
stack_held_update_pending_since_timestamp_seconds{{package="postgresql-17"}} {since:.0f}
"""
HELD_SUMMARY = re.compile(r"An update of postgresql-17 on monitoring-debian13 has been held back from unattended "
                          r"upgrades for 4d 4h [01]m \d+s: install it with playbooks/update.yml")


def summaries(host, alertname):
    return {a["annotations"]["summary"] for message in received(host, "team") for a in message["alerts"]
            if a["labels"]["alertname"] == alertname and a["status"] == "firing"}


def test_each_alert_fires_and_reaches_the_webhook(host):
    wanted = {"StackPostgresDown", "StackDiskAlmostFull", "StackBackupTooOld", "StackUnitFailed",
              "StackHttpCheckFailing", "StackHeldUpdatesWaiting"}
    assert not wanted & firing(host, "team"), firing(host, "team")
    started = time.time()
    held = HELD_METRICS.format(since=started - 100 * 3600)
    host.check_output(f"printf '%s' {shlex.quote(held)} > /var/lib/prometheus/node-exporter/.held.tmp && "
                      "mv /var/lib/prometheus/node-exporter/.held.tmp /var/lib/prometheus/node-exporter/stack_held_updates.prom")
    host.check_output("systemctl stop postgresql@17-main fakeapp")
    host.check_output("head -c 7900k /dev/zero > /srv/fill/blob")
    host.check_output("mkdir -p /var/lib/backups && printf '%s' "
                      "'{\"last_good\": {\"set\": \"20250101T000000Z\", \"finished\": \"2025-01-01T00:10:00Z\"}}'"
                      " > /var/lib/backups/status.json")
    host.run("systemctl start stacktest-fail.service")
    try:
        assert_alerts_reach_the_webhook(host, wanted, started)
        # The status page shows the failing components and the alerts.
        dom = wait_for_status(host, lambda d: "StackPostgresDown" in d)
        status_dom(host, "monitoring-status-failing.png")
        assert 'id="overall" data-state="failing"' in dom, dom[-2000:]
        card = dom.split("PostgreSQL on monitoring-debian13")[0].rsplit("<div", 1)[-1]
        assert 'data-state="failing"' in card, card
        assert "stacktest-fail.service failed" in dom and "StackDiskAlmostFull" in dom
        # Names the package, the host and how long (100 h and the seconds to the alert).
        held_summaries = summaries(host, "StackHeldUpdatesWaiting")
        print(f"StackHeldUpdatesWaiting: {held_summaries}")
        assert held_summaries and all(HELD_SUMMARY.fullmatch(s) for s in held_summaries), held_summaries
    finally:
        host.run("rm -f /srv/fill/blob /var/lib/backups/status.json "
                 "/var/lib/prometheus/node-exporter/stack_held_updates.prom")
        host.run("systemctl reset-failed stacktest-fail.service")
        host.check_output("systemctl start postgresql@17-main fakeapp")


def test_connections_5xx_and_an_expiring_certificate_fire_and_reach_the_webhook(host):
    """17 of max_connections 20 held open, requests through Caddy answering
    502 (a route to a closed port), and the TLS check's certificate swapped
    for one that expires in 5 days."""
    wanted = {"StackPostgresConnectionsHigh", "StackHttp5xxRate", "StackCertificateExpiring"}
    assert not wanted & firing(host, "team"), firing(host, "team")
    hold = ("import psycopg2, time\n"
            "held = [psycopg2.connect('port=9991 dbname=postgres') for _ in range(17)]\n"
            "time.sleep(600)\n")
    started = time.time()
    host.check_output(f"systemd-run --unit load-conns --uid postgres /usr/bin/python3 -c {shlex.quote(hold)}")
    host.check_output("systemd-run --unit load-5xx /bin/sh -c "
                      "'while :; do curl -sk -o /dev/null https://localhost:9943/broken/x; sleep 0.2; done'")
    host.check_output("ln -sfn cert-5.pem /srv/tls/current.pem && systemctl restart tlsapp")
    try:
        assert_alerts_reach_the_webhook(host, wanted, started)
        assert host.check_output("curl -sk -o /dev/null -w '%{http_code}' https://localhost:9943/broken/x") == "502"
    finally:
        host.run("systemctl stop load-conns load-5xx")
        host.check_output("ln -sfn cert-3650.pem /srv/tls/current.pem && systemctl restart tlsapp")


def test_replication_lag_alert_with_promtool(host):
    """No standby runs here (molecule/fleet has one): the lag alert is proven
    on the installed rules file with promtool's rule tests, on the series the
    exporter gives a standby (pg_replication_lag_seconds), lagging from minute 3."""
    case = {
        "rule_files": ["/etc/prometheus/stack-rules.yml"],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [{"series": 'pg_replication_lag_seconds{instance="db2:9187"}',
                              "values": "0x11 120x20"}],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "StackReplicationLag", "exp_alerts": []},
                {"eval_time": "6m", "alertname": "StackReplicationLag",
                 "exp_alerts": [{"exp_labels": {"severity": "page", "instance": "db2:9187"},
                                 "exp_annotations": {"summary": "The standby db2:9187 replays 120 s behind its primary"}}]},
            ],
        }],
    }
    host.check_output(f"printf '%s' {shlex.quote(json.dumps(case))} > /var/tmp/lag-test.yml")
    out = host.run("promtool test rules /var/tmp/lag-test.yml")
    assert out.rc == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_pgbouncer_clients_waiting_alert_with_promtool(host):
    """PgBouncer runs beside the apps (molecule/fleet, molecule/default): the
    alert for clients waiting for a server connection is proven on the
    installed rules file, with its default for: 1m. A wait of a pause's
    length (30 s, a database restart) does not fire it; three minutes do."""
    series = 'pgbouncer_pools_client_waiting_connections{instance="app1:9127",database="demo",user="demo_app"}'
    case = {
        "rule_files": ["/etc/prometheus/stack-rules.yml"],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [{"series": series, "values": "0x4 2x2 0x4 3x12"}],
            "alert_rule_test": [
                {"eval_time": "1m30s", "alertname": "StackPgbouncerClientsWaiting", "exp_alerts": []},
                {"eval_time": "5m", "alertname": "StackPgbouncerClientsWaiting",
                 "exp_alerts": [{"exp_labels": {"severity": "page", "instance": "app1:9127", "database": "demo"},
                                 "exp_annotations": {"summary": "3 clients of demo wait for a server connection "
                                                                "in PgBouncer on app1:9127"}}]},
            ],
        }],
    }
    host.check_output(f"printf '%s' {shlex.quote(json.dumps(case))} > /var/tmp/pgbouncer-test.yml")
    out = host.run("promtool test rules /var/tmp/pgbouncer-test.yml")
    assert out.rc == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


@pytest.mark.parametrize("extra, message", [
    ({"monitoring_alert_overrides": {"StackNope": {"for": "1m"}}}, "monitoring_alert_overrides: unknown alert(s) StackNope"),
    ({"monitoring_webhook_urls": ["hooks.example.com/x"]}, "not an http(s) URL: hooks.example.com/x"),
])
def test_bad_input_fails_naming_the_variable_before_any_change(host, extra, message):
    before = host.check_output("md5sum /etc/prometheus/alertmanager.yml /etc/prometheus/stack-rules.yml")
    proc = subprocess.run(["ansible-playbook", "-i", _inventory(), CONVERGE, "-e", json.dumps(extra)],
                          capture_output=True, text=True, check=False, timeout=600)
    output = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0, output[-2000:]
    assert message in output, output[-2000:]
    assert "changed=0" in output
    assert host.check_output("md5sum /etc/prometheus/alertmanager.yml /etc/prometheus/stack-rules.yml") == before


def test_a_port_in_use_fails_the_run_and_the_service_keeps_running(host):
    """The node exporter moved to the webhook receiver's port: the run fails
    naming the service and the variable, the exporter runs again on its last
    good port; a plain re-run with good values leaves everything up."""
    proc = subprocess.run(["ansible-playbook", "-i", _inventory(), CONVERGE,
                           "-e", json.dumps({"monitoring_node_exporter_port": 9999})],
                          capture_output=True, text=True, check=False, timeout=600)
    output = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode != 0, output[-2000:]
    assert "prometheus-node-exporter did not answer on 127.0.0.1 at 9999" in output, output[-2000:]
    assert "monitoring_*_port" in output
    assert "127.0.0.1:9100" in host.check_output("cat /etc/default/prometheus-node-exporter")
    assert "node_filesystem_avail_bytes" in host.check_output("curl -sf --retry 10 --retry-connrefused "
                                                             "--retry-delay 1 http://127.0.0.1:9100/metrics")
    healed = subprocess.run(["ansible-playbook", "-i", _inventory(), CONVERGE],
                            capture_output=True, text=True, check=False, timeout=600)
    assert healed.returncode == 0, healed.stdout[-3000:]
    assert "node_filesystem_avail_bytes" in host.check_output("curl -sf http://127.0.0.1:9100/metrics")


def test_check_mode_reports_no_changes(host):
    proc = subprocess.run(["ansible-playbook", "-i", _inventory(), CONVERGE, "--check", "--diff"],
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    recap = [line for line in proc.stdout.splitlines() if line.startswith(host.backend.host + " ")]
    assert recap and "changed=0" in recap[0], proc.stdout[-3000:]


def test_unit_hardening_figures(host):
    """systemd-analyze security of what the role runs: its own metrics unit
    and Debian's units with the role's hardening drop-ins."""
    scores = {}
    for unit in ("stack-metrics.service", "prometheus.service", "prometheus-alertmanager.service",
                 "prometheus-node-exporter.service", "prometheus-postgres-exporter.service",
                 "prometheus-blackbox-exporter.service"):
        out = host.run(f"systemd-analyze security {unit} --no-pager").stdout
        line = [x for x in out.splitlines() if "Overall exposure level" in x]
        scores[unit] = float(line[-1].split("level for")[1].split(":")[1].split()[0]) if line else None
    print(f"systemd-analyze security: {scores}")
    assert None not in scores.values(), scores
    assert all(score <= 2.0 for score in scores.values()), scores
