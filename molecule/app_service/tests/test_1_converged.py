"""After converge and idempotence: the demo app as deployed once, from outside."""

import json
import re
import time

from conftest import (APP, KNOWN_GOOD, PORTS, PROXY, ROOT, SECRETS, SETTINGS_FILES, WORKER, current_release,
                      egress_from_unit, get, instance_record, report, serving, settings_sums, startup_sums)


def test_health_db_reports_revision_through_proxy(host):
    status, body = get(host, f"{PROXY}/health/db")
    print(f"/health/db -> {status} {body}")
    assert status == 200
    assert body["revision"] == "0001"
    assert body["db_user"] == "app_rw"
    assert body["release"] == current_release(host)


def test_app_reads_and_writes_with_dml_role(host):
    out = host.check_output(
        "python3 -c \"import urllib.request as u,json;"
        "r=u.urlopen(u.Request('http://127.0.0.1:8080/notes',data=b'{\\\"body\\\":\\\"hi\\\"}',"
        "headers={'Content-Type':'application/json'}),timeout=10);print(r.status)\"")
    assert out.strip() == "201"
    status, body = get(host, f"{PROXY}/notes")
    assert status == 200 and body["notes"][0]["body"] == "hi"


def test_migration_ran_as_owner_and_runtime_role_cannot_ddl(host):
    owner = host.check_output(
        "sudo -u postgres psql -p 9991 -d app -Atc \"SELECT tableowner FROM pg_tables WHERE tablename='notes'\"")
    assert owner == "app_owner"
    ddl = host.run("PGPASSWORD=rw-Secret-42 psql -h 127.0.0.1 -p 9991 -U app_rw -d app -c 'DROP TABLE notes'")
    assert ddl.rc != 0 and "must be owner" in ddl.stderr


def test_service_runs_unprivileged_and_cannot_write_code(host):
    active = [p for p in PORTS if host.service(f"{APP}@{p}").is_running]
    assert len(active) == 1
    pid = host.check_output(f"systemctl show -p MainPID --value {APP}@{active[0]}")
    user = host.check_output(f"ps -o user= -p {pid}")
    assert user == APP
    assert host.run(f"runuser -u {APP} -- touch {ROOT}/current/app/x").rc != 0
    assert host.run(f"runuser -u {APP} -- touch /var/lib/{APP}/probe").rc == 0
    env = host.file(f"/etc/{APP}/env")
    assert env.user == "root" and env.mode == 0o600
    assert "app_rw" in env.content_string and "app_owner" not in env.content_string


def test_instances_listen_on_loopback_only(host):
    listening = host.check_output("ss -Hltn")
    ports = re.findall(r"(\S+):(800[12])\s", listening)
    assert ports and all(addr == "127.0.0.1" for addr, _ in ports)


def test_one_release_after_converge_and_idempotence(host):
    releases = host.check_output(f"ls {ROOT}/releases").split()
    report(f"{host.backend.host}: releases after converge + idempotence: {releases}")
    assert releases == [current_release(host)]
    log = host.check_output(f"cat /var/log/{APP}-deploy.log")
    assert len([l for l in log.splitlines() if "action=deploy" in l and "result=ok" in l]) == 1
    assert "revision=0001" in log


def test_security_exposure_is_low(host):
    out = host.check_output(f"systemd-analyze security --no-pager {APP}@{PORTS[0]}.service {APP}@{PORTS[1]}.service")
    scores = [float(s) for s in re.findall(r"Overall exposure level for \S+: (\d+\.\d+)", out)]
    report(f"{host.backend.host}: systemd-analyze security exposure for {APP}@{PORTS[0]}, {APP}@{PORTS[1]}: {scores}")
    assert len(scores) == 2 and max(scores) <= 2.0




def test_known_good_settings_are_the_serving_instances_and_root_only(host):
    directory = host.file(KNOWN_GOOD)
    assert directory.user == "root" and directory.group == "root" and directory.mode == 0o700
    sums = settings_sums(host)
    for name in SETTINGS_FILES:
        copy = host.file(f"{KNOWN_GOOD}/{name}")
        assert copy.user == "root" and copy.mode == 0o600, name
        assert copy.sha256sum == sums[name], name
    port = serving(host)[0]
    record = instance_record(host, port)
    report(f"{host.backend.host}: {APP}@{port} started with env {record['env'][:12]} unit {record['unit'][:12]}; "
           f"on disk env {sums['env'][:12]} unit {sums['unit'][:12]}")
    assert record == startup_sums(sums)
    assert host.file(f"{ROOT}/instances/{port}.settings").mode == 0o600


def test_known_good_record_holds_no_secrets(host):
    text = host.check_output(f"cat {KNOWN_GOOD}/settings.json")
    record = json.loads(text)
    settings = record["settings"]
    assert settings["app_service_asgi_app"] == "app.main:app" and settings["app_service_db_user"] == "app_rw"
    assert settings["app_service_db_password"].startswith("sha256:")
    assert settings["app_service_db_migration_password"].startswith("sha256:")
    assert settings["app_service_environment"]["APP_GREETING"].startswith("sha256:")
    assert not [s for s in SECRETS + ("hello from molecule",) if s in text]
    assert record["files"] == settings_sums(host)


def test_release_records_its_schema_head(host):
    marker = host.file(f"{ROOT}/releases/{current_release(host)}/.app_service_schema_head")
    report(f"{host.backend.host}: release {current_release(host)} schema head {marker.content_string.strip()}")
    assert marker.user == "root" and marker.mode == 0o644
    assert marker.content_string == "0001\n"


# --- processes, timers, hooks, egress (open) --------------------------------------------

def worker_beat(host) -> dict:
    return json.loads(host.check_output(f"cat /var/lib/{APP}/worker.json"))


def test_worker_works_in_the_current_release_with_the_runtime_role(host):
    worker = host.service(WORKER)
    assert worker.is_running and worker.is_enabled
    assert host.check_output(f"systemctl show -p User --value {WORKER}") == APP
    first = worker_beat(host)
    time.sleep(2.5)
    beat = worker_beat(host)
    report(f"{host.backend.host}: {WORKER}: release {beat['release']} db_user {beat.get('db_user')} "
           f"notes {beat.get('notes')} beats {first['beats']} -> {beat['beats']}")
    assert beat["release"] == current_release(host)
    assert beat["db_user"] == "app_rw" and "error" not in beat
    assert beat["beats"] > first["beats"]


def test_worker_unit_is_hardened_like_the_web(host):
    out = host.check_output(f"systemd-analyze security --no-pager {WORKER}")
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out).group(1))
    report(f"{host.backend.host}: systemd-analyze security exposure for {WORKER}: {score}")
    assert score <= 2.0


def test_timer_runs_the_command_in_the_current_release(host):
    timer = host.service(f"{APP}-tick.timer")
    assert timer.is_running and timer.is_enabled
    for _ in range(30):
        journal = host.check_output(f"journalctl --no-pager --output=cat -u {APP}-tick.service")
        if "tick release=" in journal:
            break
        time.sleep(1)
    ticks = [line for line in journal.splitlines() if line.startswith("tick ")]
    report(f"{host.backend.host}: {APP}-tick.timer ran {len(ticks)} times, last: {ticks[-1] if ticks else None}")
    assert ticks and ticks[-1] == f"tick release={current_release(host)} db_user=app_rw"


def test_hooks_ran_around_the_first_switch(host):
    lines = host.check_output(f"cat /var/lib/{APP}/hooks.log").splitlines()
    release = current_release(host)
    assert lines == [f"before release={release} db_user=app_owner", f"after release={release} db_user=app_rw"], lines


def test_egress_open_lets_the_units_reach_another_address(host):
    """app_service_egress: open (the default): from inside the web and the
    worker unit's cgroups a connection to the host's own non-loopback address
    leaves (refused by the closed port, not by systemd)."""
    web = f"{APP}@{serving(host)[0]}.service"
    verdicts = {unit: egress_from_unit(host, unit) for unit in (web, WORKER)}
    report(f"{host.backend.host}: egress open: {verdicts}")
    assert verdicts == {web: "ECONNREFUSED", WORKER: "ECONNREFUSED"}

