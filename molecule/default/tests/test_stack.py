"""The whole stack on one host, proven through Caddy over HTTPS."""

import json
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))

from stacktest import (  # noqa: E402
    CADDY_CA, HTTPS, Background, RequestLoop, get, lock_holder, new_release_source, recap, run_playbook,
    wait_for_holder)


def test_health_through_caddy(host):
    status, body = get(host, "/health")
    assert status == 200, body
    assert body.get("release")
    status, body = get(host, "/health/db")
    assert status == 200, body
    assert body["status"] == "ok", body
    assert body["revision"], body
    # The running app uses the DML-only role, never the owner.
    assert body["db_user"] == "demo_app", body


def test_plain_http_redirects_to_https(host):
    out = host.check_output("curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' http://localhost:8080/health")
    code, location = out.split(" ", 1)
    assert code in ("301", "308"), out
    assert location.startswith("https://localhost:8443/"), out


def test_database_port_is_local_only(host):
    listeners = host.check_output("ss -H -ltn").split()
    assert "127.0.0.1:9991" in listeners
    assert "0.0.0.0:9991" not in listeners and "*:9991" not in listeners


def ssh_inventory() -> str:
    """The inventory converge.yml wrote: this host over SSH as deploy."""
    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ssh", "inventory.yml")
    assert "ansible_user: deploy" in open(path, encoding="utf-8").read()
    return path


def test_check_mode_reports_no_changes(host):
    """--check --diff as the README's user runs it (over SSH as deploy), with
    every role play run (stack_skip_unchanged: false): each role's own check
    and its check-mode path, not only the first play."""
    rc, out = run_playbook("playbooks/site.yml", "--check", "--diff", "-e", "stack_skip_unchanged=false",
                           inventory=ssh_inventory())
    counts = recap(out)
    assert rc == 0, out[-4000:]
    assert counts and all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), counts
    plays, skipped = _role_plays(out)
    assert plays >= 7 and skipped <= 1, (plays, skipped)  # only the standbys' play matches no host


def _console(*args: str, stdin: str) -> subprocess.CompletedProcess:
    """bin/console against the SSH inventory (as deploy, sudo), fed a here-document."""
    return subprocess.run([sys.executable, os.path.join(REPO, "bin", "console"), "-i", ssh_inventory(), *args],
                          input=stdin, capture_output=True, text=True, timeout=120, check=False)


def test_console_over_ssh_runs_in_the_release_with_the_right_roles(host):
    """bin/console as the README shows it, over SSH as deploy: psql as the
    read-only role by default (a write refused), the owner with --owner, and
    the runtime's REPL as the app user in the current release."""
    out = _console("psql", "-v", "ON_ERROR_STOP=1", "-At",
                   stdin="SELECT current_user, count(*) >= 0 FROM notes;\n")
    assert out.returncode == 0 and out.stdout.split() == ["demo_readonly|t"], out.stdout + out.stderr
    out = _console("psql", "-v", "ON_ERROR_STOP=1", stdin="INSERT INTO notes (body) VALUES ('x');\n")
    assert out.returncode != 0 and "permission denied" in out.stderr, out.stdout + out.stderr
    out = _console("--owner", "psql", "-At", stdin="SELECT current_user;\n")
    assert out.returncode == 0 and out.stdout.split() == ["demo_owner"], out.stdout + out.stderr
    current = host.check_output("readlink -f /srv/demo/current")
    out = _console(stdin="import os, sys\nprint(os.getuid() != 0, os.getcwd(), sys.prefix)\n")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.split() == ["True", current, "/srv/demo/current/.venv"], out.stdout + out.stderr


def _role_plays(out: str) -> tuple[int, int]:
    """(plays after the stack's first one, those of them that matched no host)."""
    plays = re.split(r"^PLAY \[", out, flags=re.M)[2:]
    return len(plays), sum(1 for play in plays if "skipping: no hosts matched" in play.split("\n", 3)[1])


def test_a_hand_edit_heals_and_the_next_plain_run_skips_the_role_plays(host):
    """A pg_hba.conf edited by hand (and loaded) makes the host differ from
    the records: the next plain run puts the file back and reloads it. The
    run after that finds nothing that differs and runs the first play only
    (README, "No-op runs"). (test_database_events.py ran update.yml before:
    the first run also settles what that changed.)"""
    hba = host.check_output("ls /etc/postgresql/*/main/pg_hba.conf")
    no_password = ("runuser -u postgres -- env -u PGPASSWORD psql -X -w -h 127.0.0.1 -p 9991 "
                   "-U demo_app -d demo -tAc 'SELECT 1'")
    assert host.run(no_password).rc != 0
    host.check_output(f"sed -i '1i host all all 0.0.0.0/0 trust' {hba} && pg_ctlcluster $(ls /etc/postgresql) main reload")
    assert host.run(no_password).stdout.strip() == "1"
    rc, out = run_playbook("playbooks/site.yml")
    assert rc == 0 and recap(out)["stack-default"]["changed"] > 0, out[-4000:]
    assert "trust" not in host.file(hba).content_string
    assert host.run(no_password).rc != 0

    rc, out = run_playbook("playbooks/site.yml")
    plays, skipped = _role_plays(out)
    assert rc == 0 and recap(out)["stack-default"]["changed"] == 0, out[-4000:]
    assert plays >= 7 and skipped == plays and "TASK [postgresql : Install pg_hba.conf]" not in out, (plays, skipped)


def test_backup_playbook_produces_a_verified_backup(host):
    rc, out = run_playbook("playbooks/backup.yml")
    assert rc == 0, out[-4000:]
    # Every database of the set restored into a scratch database and its rows counted.
    verdicts = re.findall(r"rows in\s+\d+ tables, verified (\w+)", out)
    assert verdicts and all(v == "True" for v in verdicts), (verdicts, out[-3000:])


def test_pitr_archiving_through_the_stack_wiring(host):
    """The sandbox's backups_pitr_enabled: the stack turned WAL archiving on
    (postgresql_archive_command/_timeout) and pgBackRest holds a full backup."""
    psql = "runuser -u postgres -- psql -X -At -p 9991 -d postgres -c"
    assert host.check_output(f"{psql} 'SHOW archive_mode'") == "on"
    assert host.check_output(f"{psql} 'SHOW archive_command'") == "pgbackrest --stanza=main archive-push %p"
    assert host.check_output(f"{psql} 'SHOW archive_timeout'") == "1min"
    check = host.run("runuser -u postgres -- pgbackrest --stanza=main check")
    assert check.rc == 0, check.stdout + check.stderr
    info = json.loads(host.check_output("runuser -u postgres -- pgbackrest --stanza=main --output=json info"))[0]
    assert info["status"]["code"] == 0 and any(b["type"] == "full" for b in info["backup"]), info


def test_status_page_through_caddy_needs_the_login(host):
    """The monitoring role's status page at /status/ (group monitoring), behind
    basic auth with the sandbox's generated password: all green once
    Prometheus has scraped everything, the app's idle colour not counted as
    a failure, Caddy's 12-hour internal certificate not shown as expiring."""
    secrets = os.path.join(os.environ["MOLECULE_PROJECT_DIRECTORY"], ".cache", "sandbox-secrets", "status_password")
    with open(secrets, encoding="ascii") as handle:
        password = handle.read().strip()
    url = "https://localhost:8443/status/"
    ca = CADDY_CA
    assert host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' --cacert {ca} {url}") == "401"
    assert host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' --cacert {ca} -u status:wrong {url}") == "401"
    deadline = time.time() + 90
    while True:
        page = host.check_output(f"curl -sf --cacert {ca} -u status:{password} {url}")
        if 'id="overall" data-state="ok"' in page and "caddy on" in page and "Last change of demo" in page \
                or time.time() > deadline:
            break
        time.sleep(3)
    assert 'id="overall" data-state="ok"' in page and "Everything is working" in page, page
    assert "HTTP check site" in page and "App demo" in page and "1 of 2 instances answer" in page, page
    assert "Certificate of" not in page, page
    # Who deployed what, from the deploy log through stack_deploy_info.
    release = get(host, "/health")[1]["release"]
    # (the database-events tests restart the app: the last change may be a restart)
    assert re.search(r"Last change of demo on [^<]*</h2><div class=\"state\">ok</div><div>"
                     r"(deployed|restarted|rolled back) [^<]* ago by [^<@ -]+@[^<: -]+: " + release, page), page


def test_prometheus_scrapes_the_site_caddy_the_app_and_postgresql(host):
    """The stack's wiring of the monitoring role: the site's health through
    Caddy (trusting Caddy's internal CA, whose 12-hour certificates are left
    out of the expiry alert), PostgreSQL, Caddy's metrics listener and the
    demo app's /metrics on the live colour, PgBouncer's pools (on Debian 12
    from the stack metrics through node exporter: the packaged exporter does
    not work with PgBouncer 1.18); /metrics is 404 from outside."""
    def value(expr):
        out = json.loads(host.check_output(f"curl -sf --get --data-urlencode 'query={expr}' "
                                           "http://127.0.0.1:9090/api/v1/query"))
        return [r["value"][1] for r in out["data"]["result"]]
    wanted = {'probe_success{check="site"}': ["1"], "pg_up": ["1"], 'up{job="caddy"}': ["1"],
              'max(up{job="app_demo"})': ["1"], 'count(up{job="app_demo"})': ["2"],
              'count(probe_ssl_earliest_cert_expiry{cert_check="no"})': ["1"],
              'pgbouncer_up{job="node"}': ["1"],
              'count(pgbouncer_pools_client_waiting_connections{database="demo",user="demo_app"})': ["1"]}
    deadline = time.time() + 60
    while time.time() < deadline and any(value(q) != v for q, v in wanted.items()):
        time.sleep(2)
    assert {q: value(q) for q in wanted} == wanted
    assert value('sum(demo_app_requests_total{code="200"}) > 0'), "the app's counters are not scraped"
    assert value("sum(caddy_http_request_duration_seconds_count) > 0"), "Caddy's request metrics are not scraped"
    assert not value('ALERTS{alertname="StackCertificateExpiring"}')
    code = host.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' --cacert {CADDY_CA} {HTTPS}/metrics")
    assert code == "404", code
    # Caddy's metrics listener serves nothing but /metrics.
    assert host.check_output("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:2020/") == "404"


def _flat(text: str) -> str:
    """Output with its line wrapping undone (Ansible wraps warnings)."""
    return " ".join(text.split())


def test_redeploy_killed_three_times_then_a_plain_rerun_over_ssh_loses_no_request(host, tmp_path):
    """The README's redeploy (over SSH as the inventory's deploy, Mitogen,
    sudo) on an operator's bad day, under one request loop through Caddy:
    a run that holds the deploy lock hangs (SIGSTOP) and a second run fails
    naming it; the hung run is killed with the lock just taken, the next
    after its build, the next after its migrations (SIGKILL to the whole
    process group: a closed laptop lid); each re-run takes the dead run's
    lock over with a warning, and the last, plain one deploys. No request
    fails, and the deploy log says who deployed, with the message."""
    inventory = ssh_inventory()
    source = new_release_source(tmp_path, "redeploy-v2")
    plain = ("-e", f"stack_app_source_path={source}")
    quick = (*plain, "-e", "redeploy_backup=false", "-e", 'deploy_message="killed on purpose"')
    before = get(host, "/health")[1]["release"]
    with RequestLoop(host, "redeploy-v2") as loop:
        hung = Background("playbooks/redeploy.yml", *quick, inventory=inventory, out=tmp_path / "hung.log")
        wait_for_holder(host, "demo", hung, "locked")
        hung.signal(signal.SIGSTOP)
        rc, out = run_playbook("playbooks/redeploy.yml", *quick, inventory=inventory)
        assert rc != 0, out[-3000:]
        assert "Another run holds the deploy lock of demo" in _flat(out), out[-3000:]
        assert f"ansible-playbook pid {hung.pid}," in _flat(out), out[-3000:]
        assert "message 'killed on purpose'" in _flat(out), out[-3000:]
        assert lock_holder(host, "demo")["pid"] == hung.pid  # the refused run left it alone
        outputs = [hung.kill()]
        for phase in ("built", "migrated"):
            run = Background("playbooks/redeploy.yml", *quick, inventory=inventory, out=tmp_path / f"{phase}.log")
            wait_for_holder(host, "demo", run, phase)
            outputs.append(run.kill())
            assert lock_holder(host, "demo")["pid"] == run.pid, "the kill left no lock to take over"
        rc, out = run_playbook("playbooks/redeploy.yml", *plain, inventory=inventory)
        outputs.append(out)
        assert rc == 0, out[-4000:]
    for killed in outputs[1:]:
        assert "Took over the deploy lock of demo" in _flat(killed), killed[-3000:]
        assert "on this controller has ended" in _flat(killed), killed[-3000:]
    after = get(host, "/health")[1]["release"]
    print(f"redeploy killed at locked/built/migrated, then re-run: {before} -> {after}; "
          f"request loop {loop.result['requests']} requests, {loop.result['failures']} failed")
    assert after != before
    assert loop.result["requests"] > 50
    assert loop.result["failures"] == 0, loop.result
    assert not host.file("/run/lock/app_service-demo.lock").exists
    line = host.check_output("grep ' action=deploy ' /var/log/demo-deploy.log | tail -n 1")
    assert f"release={after} " in line and " result=ok " in line and " by=" in line, line
    assert " playbook=redeploy.yml " in line, line


def test_lock_playbook_shows_and_releases_a_lock_left_by_another_controller(host):
    """A run killed on another controller holds the lock until its lease
    runs out; playbooks/lock.yml shows who holds it and releases it."""
    holder = {"id": "laptop-bob:4242:1", "user": "bob", "controller": "laptop-bob", "pid": 4242,
              "pid_start": "1", "playbook": "playbooks/redeploy.yml", "message": "friday fix",
              "phase": "built", "since": int(time.time()) - 60}
    host.check_output("install -d -m 0700 /run/lock/app_service-demo.lock && echo %s > "
                      "/run/lock/app_service-demo.lock/holder.json", json.dumps(holder))
    rc, out = run_playbook("playbooks/site.yml", "--tags", "restart_app")
    assert rc != 0 and "bob@laptop-bob (ansible-playbook pid 4242" in _flat(out), out[-3000:]
    assert "playbooks/lock.yml -e lock_release=true" in _flat(out), out[-3000:]
    rc, out = run_playbook("playbooks/lock.yml")
    assert rc == 0 and "demo: locked by bob@laptop-bob (ansible-playbook pid 4242" in _flat(out), out[-3000:]
    assert "message 'friday fix'" in _flat(out), out[-3000:]
    rc, out = run_playbook("playbooks/lock.yml", "-e", "lock_release=true")
    assert rc == 0 and "demo: released the lock of bob@laptop-bob" in _flat(out), out[-3000:]
    assert not host.file("/run/lock/app_service-demo.lock").exists


# A webhook receiver on the host: each POST body as one line of /run/hook-sink.jsonl.
HOOK_SINK = """
import http.server
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open("/run/hook-sink.jsonl", "ab") as out:
            out.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(204)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", 9477), Sink).serve_forever()
"""
# The token part of a webhook URL: a secret, never printed.
HOOK_TOKEN = "tok-5f3a9e71c2"


def test_restart_app_tag_loses_no_request_and_tells_the_webhook(host):
    pids_before = host.check_output("systemctl show -p MainPID --value 'demo@*'")
    host.run("systemctl stop hook-sink; rm -f /run/hook-sink.jsonl")
    host.check_output("systemd-run --unit=hook-sink --collect /usr/bin/python3 -c %s", HOOK_SINK)
    for _ in range(50):
        if host.socket("tcp://127.0.0.1:9477").is_listening:
            break
        time.sleep(0.1)
    webhook = f"stack_deploy_webhook=http://127.0.0.1:9477/hook/{HOOK_TOKEN}"
    try:
        with RequestLoop(host, "restart") as loop:
            rc, out = run_playbook("playbooks/site.yml", "--tags", "restart_app", "-e", webhook)
        events = [json.loads(line) for line in host.check_output("cat /run/hook-sink.jsonl").splitlines()]
    finally:
        host.run("systemctl stop hook-sink")
    assert rc == 0, out[-4000:]
    assert host.check_output("systemctl show -p MainPID --value 'demo@*'") != pids_before
    # The restart released its deploy lock, and the deploy log says who restarted.
    assert not host.file("/run/lock/app_service-demo.lock").exists
    line = host.check_output("tail -n1 /var/log/demo-deploy.log")
    assert re.search(r" action=restart .* result=ok .* by=[^-@ ]+@[^- ]", line), line
    # The webhook got the same event as JSON, with a line for a chat; the URL's token is not printed.
    assert [(e["app"], e["action"], e["result"]) for e in events] == [("demo", "restart", "ok")], events
    assert f" release={events[0]['release']} " in line and f" by={events[0]['by']} " in line, (events, line)
    assert events[0]["text"].startswith(f"demo: restart of {events[0]['release']} on ") and events[0]["time"], events
    assert HOOK_TOKEN not in out
    assert loop.result["requests"] > 50
    assert loop.result["failures"] == 0, loop.result


def test_rollback_playbook_returns_to_the_previous_release_losing_no_request(host):
    """playbooks/rollback.yml (stack play first, then the role) after the
    redeploy above: back to the release served before it, through the gate."""
    _, before = get(host, "/health")
    # A webhook that refuses the connection (port 9) is reported; the rollback goes on.
    with RequestLoop(host, "rollback") as loop:
        rc, out = run_playbook("playbooks/rollback.yml", "-e", f"stack_deploy_webhook=http://127.0.0.1:9/hook/{HOOK_TOKEN}")
    assert rc == 0, out[-4000:]
    assert "app_service_deploy_webhook did not take the rollback event of demo" in _flat(out), out[-3000:]
    assert HOOK_TOKEN not in out
    _, after = get(host, "/health")
    assert after["release"] != before["release"], (before, after)
    assert loop.result["requests"] > 50
    assert loop.result["failures"] == 0, loop.result
    assert set(loop.result["releases"]) <= {before["release"], after["release"]}, loop.result
    assert not host.file("/run/lock/app_service-demo.lock").exists
