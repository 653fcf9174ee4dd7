"""Unit tests for roles/monitoring/files/stack_status.py (the status page)
and stack_metrics.py (the textfile metrics), with Prometheus' API and the
backups status file faked."""

import datetime as dt
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "roles", "monitoring", "files"))

import stack_metrics  # noqa: E402
import stack_status  # noqa: E402

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.timezone.utc)


def fake_prometheus(results, alerts=()):
    def fetch(path, params):
        if path == "/api/v1/alerts":
            return {"alerts": list(alerts)}
        for key, value in results.items():
            if params["query"].startswith(key):
                return {"result": [{"metric": labels, "value": [0, str(number)]} for labels, number in value]}
        return {"result": []}
    return fetch


HEALTHY = {
    "up": [({"job": "node", "host": "db1"}, 1), ({"job": "http_app", "instance": "x"}, 1),
           ({"job": "app_api", "instance": "10.0.0.5:8001"}, 1), ({"job": "app_api", "instance": "10.0.0.5:8002"}, 0)],
    "pg_up": [({"host": "db1"}, 1)],
    "probe_success": [({"check": "app", "instance": "https://example.test/health"}, 1)],
    "(probe_ssl_earliest_cert_expiry{cert_check!=\"no\"}": [({"instance": "https://example.test/health"}, 60)],
    "(1 - node_filesystem": [({"mountpoint": "/"}, 40), ({"mountpoint": "/srv"}, 55)],
    "(time() - stack_backup": [({"host": "db1"}, 3.5)],
    "stack_unit_failed": [({"unit": "caddy.service"}, 0)],
}


def test_a_healthy_stack_is_green_with_its_figures():
    cards = stack_status.components(fake_prometheus(HEALTHY), 26, 85, 14)
    page = stack_status.render("Demo", cards, stack_status.firing_alerts(fake_prometheus(HEALTHY)), NOW)
    assert 'data-state="ok"' in page.split("<main>")[0]
    assert "Everything is working" in page
    assert "fullest /srv: 55 % used" in page
    assert "newest good backup 3.5 h old" in page
    assert "60 days left" in page
    # The blackbox job's own `up` is not a component; its probe is.
    assert "http_app on" not in page and "HTTP check app" in page
    # The idle colour of a blue/green app does not answer: the app is up.
    assert "App api" in page and "1 of 2 instances answer" in page
    assert 'data-state="failing"' not in page


def test_a_failing_component_and_its_alert_come_first_and_escaped():
    broken = dict(HEALTHY, pg_up=[({"host": "db1"}, 0)],
                  stack_unit_failed=[({"unit": "<script>x</script>.service"}, 1)])
    alerts = [{"state": "firing", "labels": {"alertname": "StackPostgresDown", "severity": "page"},
               "annotations": {"summary": "PostgreSQL on db1 does not answer"}, "activeAt": "2026-11-24T11:59:00Z"},
              {"state": "firing", "labels": {"alertname": "Watchdog"}, "annotations": {}}]
    cards = stack_status.components(fake_prometheus(broken), 26, 85, 14)
    assert [c["state"] for c in cards][:2] == ["failing", "failing"]
    page = stack_status.render("Demo", cards, stack_status.firing_alerts(fake_prometheus(broken, alerts)), NOW)
    assert 'id="overall" data-state="failing"' in page
    assert "2 component(s) need attention, 1 alert(s) firing" in page
    assert "StackPostgresDown" in page and "Watchdog" not in page
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_a_prometheus_that_does_not_answer_is_said(tmp_path):
    out = tmp_path / "index.html"
    assert stack_status.main(["--prometheus", "http://127.0.0.1:9", "--out", str(out)]) == 0
    page = out.read_text()
    assert "Prometheus does not answer" in page and 'data-state="failing"' in page


def test_metrics_backup_age_and_failed_units(tmp_path, monkeypatch):
    status = tmp_path / "status.json"
    status.write_text(json.dumps({"last_good": {"set": "x", "finished": "2026-11-24T02:30:00Z"}}))
    assert stack_metrics.backup_lines(str(status))[-1] == "stack_backup_last_good_timestamp_seconds 1795487400"
    status.write_text(json.dumps({"last_run": {"result": "failed"}}))
    assert stack_metrics.backup_lines(str(status))[-1] == "stack_backup_last_good_timestamp_seconds 0"
    assert stack_metrics.backup_lines(str(tmp_path / "missing.json")) == []

    class Done:
        stdout = ("caddy.service loaded active running Caddy\n"
                  "backups.service loaded failed failed Backups\n"
                  "ssh.service loaded failed failed OpenSSH\n")
    monkeypatch.setattr(stack_metrics.subprocess, "run", lambda *a, **k: Done())
    lines = stack_metrics.unit_lines("(caddy|backups)\\.service")
    assert 'stack_unit_failed{unit="caddy.service"} 0' in lines
    assert 'stack_unit_failed{unit="backups.service"} 1' in lines
    assert not [line for line in lines if "ssh" in line]


def test_an_app_with_no_instance_answering_fails_and_internal_certificates_are_left_out():
    queries = []
    down = dict(HEALTHY, up=[({"job": "app_api", "instance": "10.0.0.5:8001"}, 0),
                             ({"job": "app_api", "instance": "10.0.0.5:8002"}, 0)])
    fetch = fake_prometheus(down)

    def recording(path, params):
        queries.append(params.get("query", ""))
        return fetch(path, params)
    cards = stack_status.components(recording, 26, 85, 14)
    assert cards[0] == {"name": "App api", "state": "failing", "figure": "no instance answers"}
    assert any(q.startswith('(probe_ssl_earliest_cert_expiry{cert_check!="no"}') for q in queries), queries


def test_metrics_from_the_last_line_of_each_deploy_log(tmp_path):
    (tmp_path / "api-deploy.log").write_text(
        "2026-11-24T11:00:00Z app=api action=deploy release=aaa previous=- source=dir:/x result=ok port=8001\n"
        '2026-11-24T11:48:00Z app=api action=deploy release=bbb previous=aaa source=dir:/x result=ok port=8002 '
        'by=alice@laptop playbook=redeploy.yml inventory=3f2a9c1d04be message="hotfix \\"1.4.3\\""\n')
    (tmp_path / "web-deploy.log").write_text("")
    (tmp_path / "odd-deploy.log").write_text("not a deploy line\n")
    lines = stack_metrics.deploy_lines(str(tmp_path / "*-deploy.log"))
    assert 'stack_deploy_timestamp_seconds{app="api"} 1795520880' in lines
    info = [line for line in lines if line.startswith("stack_deploy_info")]
    assert info == ['stack_deploy_info{app="api",action="deploy",release="bbb",result="ok",by="alice@laptop",'
                    'inventory="3f2a9c1d04be",message="hotfix \\"1.4.3\\""} 1'], info
    assert stack_metrics.deploy_lines(str(tmp_path / "none-*.log")) == []


def test_the_status_page_says_who_deployed_what_and_when():
    results = dict(HEALTHY)
    results["time() - stack_deploy_timestamp_seconds"] = [({"app": "api", "instance": "app1:9100"}, 720)]
    results["stack_deploy_info"] = [
        ({"app": "api", "instance": "app1:9100", "host": "app1", "action": "deploy", "release": "bbb",
          "result": "ok", "by": "alice@laptop", "message": "hotfix"}, 1)]
    cards = {card["name"]: card for card in stack_status.components(fake_prometheus(results), 26, 85, 14)}
    card = cards["Last change of api on app1"]
    assert card["state"] == stack_status.OK
    assert card["figure"] == "deployed 12 min ago by alice@laptop: bbb, hotfix"
    results["stack_deploy_info"][0][0]["result"] = "failed"
    cards = {card["name"]: card for card in stack_status.components(fake_prometheus(results), 26, 85, 14)}
    assert cards["Last change of api on app1"]["state"] == stack_status.WARN
    assert "(failed)" in cards["Last change of api on app1"]["figure"]


def test_the_status_page_says_who_switched_maintenance(tmp_path):
    (tmp_path / "maintenance-deploy.log").write_text(
        "2026-11-24T11:00:00Z app=maintenance action=maintenance-on result=ok by=bob@desk playbook=site.yml "
        'inventory=- message="db move"\n')
    info = [line for line in stack_metrics.deploy_lines(str(tmp_path / "*-deploy.log")) if line.startswith("stack_deploy_info")]
    assert info == ['stack_deploy_info{app="maintenance",action="maintenance-on",release="",result="ok",by="bob@desk",'
                    'inventory="-",message="db move"} 1'], info
    results = dict(HEALTHY)
    results["time() - stack_deploy_timestamp_seconds"] = [({"app": "maintenance", "instance": "web1:9100"}, 180)]
    results["stack_deploy_info"] = [
        ({"app": "maintenance", "instance": "web1:9100", "host": "web1", "action": "maintenance-on", "release": "",
          "result": "ok", "by": "bob@desk", "message": "db move"}, 1)]
    cards = {card["name"]: card for card in stack_status.components(fake_prometheus(results), 26, 85, 14)}
    assert cards["Maintenance switch on web1"] == {"name": "Maintenance switch on web1", "state": stack_status.OK,
                                                   "figure": "switched on 3 min ago by bob@desk, db move"}
