"""The whole stack on a split fleet (db, app1, app2, web), proven from outside."""

import json
import os
import subprocess
import sys
import time

import pytest
import testinfra

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared"))

from stacktest import CADDY_CA, FAIL_HEALTH_FILE, RequestLoop, get, recap, redeploy_under_load, run_playbook  # noqa: E402

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


@pytest.mark.parametrize("src, allowed", [("fleet-app1", True), ("fleet-app2", True), ("fleet-db2", True),
                                          ("fleet-web", False)])
def test_database_port_only_from_app_hosts_and_the_standby(host, src, allowed):
    assert can_connect(node(src), "fleet-db", 9991) is allowed


@pytest.mark.parametrize("src, allowed", [("fleet-app1", True), ("fleet-web", False)])
def test_standby_port_from_app_hosts_only(host, src, allowed):
    """The apps use the standby once it is promoted."""
    assert can_connect(node(src), "fleet-db2", 9991) is allowed


def test_app_ports_only_from_the_web_host(host):
    assert can_connect(host, "fleet-app1", 8001) or can_connect(host, "fleet-app1", 8002)
    db = node("fleet-db")
    assert not can_connect(db, "fleet-app1", 8001) and not can_connect(db, "fleet-app1", 8002)


def test_check_mode_reports_no_changes(host):
    rc, out = run_playbook("playbooks/site.yml", "--check", "--diff")
    counts = recap(out)
    assert rc == 0, out[-4000:]
    assert set(counts) == {"fleet-db", "fleet-db2", "fleet-app1", "fleet-app2", "fleet-web"}, counts
    assert counts and all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), counts


# TLS between the app hosts and PostgreSQL (stack_db_tls): the app's own URL,
# with its own driver, from each app host.
DB_PROBE = """
import os, sys, psycopg
url = sys.argv[1].replace("postgresql+psycopg://", "postgresql://", 1)
try:
    with psycopg.connect(url, connect_timeout=5) as conn:
        print("ssl=%s %s" % conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone())
except psycopg.Error as exc:
    print("refused: %s" % exc)
"""


def app_database_url(app, env_file="/etc/demo/migrate.env"):
    """DATABASE_URL of an env file of the app: migrate.env (the migrations',
    straight to PostgreSQL over TLS) by default, env for the app's processes
    (through PgBouncer on the host)."""
    env = node(app).check_output("grep ^DATABASE_URL= %s", env_file)
    return env.split("=", 1)[1].strip().strip("'\"")


def wrong_ca(app):
    """A CA other than the stack's, made on the app host: /tmp/wrong-ca.crt."""
    node(app).check_output(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=wrong-ca "
        "-keyout /tmp/wrong-ca.key -out /tmp/wrong-ca.crt 2>/dev/null")
    return "/tmp/wrong-ca.crt"


def probe_database(app, url):
    cmd = node(app).run("/srv/demo/current/.venv/bin/python -c %s %s", DB_PROBE, url)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


@pytest.mark.parametrize("app", ["fleet-app1", "fleet-app2"])
def test_app_hosts_reach_postgresql_over_verified_tls_only(host, app):
    """The migrations' URL (owner role, straight to the server)."""
    url = app_database_url(app)
    assert "sslmode=verify-full" in url and "sslrootcert=/etc/ssl/demo-db-ca.crt" in url, url
    # The app's own URL: encrypted, the server's certificate verified against the stack's CA.
    result = probe_database(app, url)
    print(app, result)
    assert result.startswith("ssl=True TLSv1."), result
    # Plain text from another host finds no pg_hba line (hostssl only).
    plain = probe_database(app, url.replace("sslmode=verify-full", "sslmode=disable"))
    assert plain.startswith("refused:") and "no pg_hba.conf entry" in plain and "no encryption" in plain, plain
    # A CA other than the stack's fails the verification.
    wrong = probe_database(app, url.replace("/etc/ssl/demo-db-ca.crt", wrong_ca(app)))
    assert wrong.startswith("refused:") and "certificate verify failed" in wrong, wrong


def pgbouncer_ini(app):
    return node(app).check_output("cat /etc/pgbouncer/pgbouncer.ini")


@pytest.mark.parametrize("app", ["fleet-app1", "fleet-app2"])
def test_the_apps_processes_go_through_pgbouncer_which_verifies_the_server(host, app):
    url = app_database_url(app, "/etc/demo/env")
    assert url.startswith("postgresql+psycopg://demo_app:") and url.endswith("@127.0.0.1:6432/demo?sslmode=disable"), url
    db_address = node("fleet-db").check_output("hostname -I").split()[0]
    ini = pgbouncer_ini(app)
    assert f"demo = host={db_address} port=9991 dbname=demo" in ini, ini
    assert "server_tls_sslmode = verify-full" in ini and "server_tls_ca_file = /etc/pgbouncer/server-ca.crt" in ini
    # A query through it runs on one of PgBouncer's server connections: the
    # server sees it arrive over TLS.
    assert probe_database(app, url.replace("postgresql+psycopg://", "postgresql://", 1)).startswith("ssl=True TLSv1.")
    address = node(app).check_output("hostname -I").split()[0]
    rows = psql("fleet-db", "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                            f"WHERE a.usename = 'demo_app' AND a.client_addr = '{address}'").stdout.split()
    print(app, "server connections of its PgBouncer:", rows)
    assert rows and all(r.startswith("t|TLSv1.") for r in rows), rows
    # The pooler listens on loopback only: another host cannot reach it.
    assert not can_connect(host, app, 6432)


ASYNCPG_LOAD = """
import asyncio, sys
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
async def main(url):
    # asyncpg's own statement cache and SQLAlchemy's: named prepared
    # statements reused across transactions, on server connections that
    # transaction pooling hands out to whoever asks.
    engine = create_async_engine(url, pool_size=8, max_overflow=0)
    errors = []
    async def worker(n):
        for i in range(15):
            try:
                async with engine.begin() as conn:
                    row = (await conn.execute(text("SELECT count(*) + :n FROM notes WHERE id > :i"), {"n": n, "i": i})).one()
                    assert row[0] >= n
            except Exception as exc:
                errors.append(type(exc).__name__ + ": " + str(exc).splitlines()[0])
    await asyncio.gather(*(worker(n) for n in range(24)))
    await engine.dispose()
    print("errors=%d %s" % (len(errors), errors[:2]))
asyncio.run(main(sys.argv[1]))
"""


def test_asyncpg_with_its_statement_caches_works_through_transaction_pooling(host):
    """PgBouncer 1.24 (Debian 13) keeps the apps' named prepared statements
    across transactions (max_prepared_statements): SQLAlchemy with asyncpg
    and both statement caches on, 24 tasks on 8 connections, 360
    transactions through the pooler."""
    app = node("fleet-app1")
    venv = "/var/tmp/asyncpg-probe"
    app.check_output(f"test -x {venv}/bin/python || python3 -m venv {venv}")
    app.check_output(f"{venv}/bin/pip install -q --cache-dir /var/cache/stack-pip 'sqlalchemy[asyncio]' asyncpg")
    assert "max_prepared_statements = 200" in pgbouncer_ini("fleet-app1")
    url = app_database_url("fleet-app1", "/etc/demo/env").replace("postgresql+psycopg://", "postgresql+asyncpg://", 1)
    url = url.replace("sslmode=disable", "ssl=disable")
    out = app.run(f"{venv}/bin/python -c %s %s", ASYNCPG_LOAD, url)
    print(out.stdout, out.stderr[-500:])
    assert out.rc == 0 and out.stdout.strip().startswith("errors=0 "), out.stdout + out.stderr


def test_the_asyncpg_url_form_verifies_the_server_too(host):
    """SQLAlchemy with asyncpg: ssl=verify-full in the URL, the CA from PGSSLROOTCERT
    (what app_service writes for a postgresql+asyncpg driver)."""
    app = node("fleet-app1")
    venv = "/var/tmp/asyncpg-probe"
    app.check_output(f"test -x {venv}/bin/python || python3 -m venv {venv}")
    app.check_output(f"{venv}/bin/pip install -q --cache-dir /var/cache/stack-pip 'sqlalchemy[asyncio]' asyncpg")
    url = app_database_url("fleet-app1").split("?", 1)[0].replace("postgresql+psycopg://", "postgresql+asyncpg://", 1)
    probe = (
        "import asyncio, sys\n"
        "from sqlalchemy import text\n"
        "from sqlalchemy.ext.asyncio import create_async_engine\n"
        "async def main(url):\n"
        "    engine = create_async_engine(url)\n"
        "    try:\n"
        "        async with engine.connect() as conn:\n"
        "            row = (await conn.execute(text('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()'))).one()\n"
        "            print('ssl=%s' % row[0])\n"
        "    except Exception as exc:\n"
        "        print('refused: %s' % exc)\n"
        "    finally:\n"
        "        await engine.dispose()\n"
        "asyncio.run(main(sys.argv[1]))\n")
    good = app.run(f"PGSSLROOTCERT=/etc/ssl/demo-db-ca.crt {venv}/bin/python -c %s %s", probe, url + "?ssl=verify-full")
    assert good.rc == 0 and good.stdout.strip() == "ssl=True", good.stdout + good.stderr
    wrong = app.run(f"PGSSLROOTCERT={wrong_ca('fleet-app1')} {venv}/bin/python -c %s %s", probe, url + "?ssl=verify-full")
    assert "refused:" in wrong.stdout and "certificate verify failed" in wrong.stdout, wrong.stdout + wrong.stderr


def test_a_certificate_without_the_apps_database_address_fails_before_anything_changes(host):
    rc, out = run_playbook("playbooks/site.yml", "-e", '{"postgresql_tls_names": ["fleet-db", "localhost"]}')
    counts = recap(out)
    assert rc != 0
    assert "postgresql_tls_names of fleet-db (fleet-db, localhost) must include" in out, out[-3000:]
    assert counts and all(c["changed"] == 0 for c in counts.values()), counts


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


# The streaming standby (fleet-db2, group db_replica).
def psql(name, sql, db="demo"):
    return node(name).run("runuser -u postgres -- psql -X -p 9991 -d %s -v ON_ERROR_STOP=1 -Atc %s", db, sql)


def test_standby_streams_over_tls_from_its_slot(host):
    rows = psql("fleet-db", "SELECT r.application_name, r.state, s.ssl, s.version, sl.active "
                            "FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) "
                            "JOIN pg_replication_slots sl ON sl.active_pid = r.pid").stdout.split()
    print("pg_stat_replication on fleet-db:", rows)
    assert len(rows) == 1 and rows[0].startswith("fleet_db2|streaming|t|TLSv1.") and rows[0].endswith("|t"), rows
    hba = node("fleet-db").check_output("grep -E '^hostssl +replication' /etc/postgresql/17/main/pg_hba.conf")
    address = node("fleet-db2").check_output("hostname -I").split()[0]
    assert hba.split()[2:5] == ["replicator", f"{address}/32", "scram-sha-256"], hba


def test_a_row_written_on_the_primary_is_read_on_the_standby_within_5s(host):
    token = f"replica-{time.time_ns()}"
    write = psql("fleet-db", "CREATE TABLE IF NOT EXISTS replica_probe (token text PRIMARY KEY); "
                             f"INSERT INTO replica_probe VALUES ('{token}')")
    assert write.rc == 0, write.stderr
    started = time.monotonic()
    while time.monotonic() - started < 5:
        if psql("fleet-db2", f"SELECT count(*) FROM replica_probe WHERE token = '{token}'").stdout.strip() == "1":
            break
        time.sleep(0.1)
    seen = time.monotonic() - started
    print(f"row written on fleet-db read on fleet-db2 after {seen:.2f} s")
    assert seen < 5


def test_the_standby_refuses_writes(host):
    write = psql("fleet-db2", "INSERT INTO replica_probe VALUES ('on-the-standby')")
    assert write.rc != 0 and "cannot execute INSERT in a read-only transaction" in write.stderr, write.stderr
    # The app's roles exist there (replicated), so the apps can connect once it is promoted.
    assert psql("fleet-db2", "SELECT count(*) FROM pg_roles WHERE rolname IN ('demo_app', 'demo_owner')").stdout.strip() == "2"


def test_the_lag_status_file_is_fresh_and_small(host):
    db2 = node("fleet-db2")
    assert db2.service("postgresql-replica-status.timer").is_running
    db2.check_output("systemctl start postgresql-replica-status.service")
    status = json.loads(db2.check_output("cat /var/lib/postgresql-replica/status.json"))
    print("replica status:", status)
    assert status["ok"] is True and status["in_recovery"] is True and status["receiver_status"] == "streaming", status
    assert status["lag_seconds"] < 5, status
    score = db2.check_output("systemd-analyze security postgresql-replica-status.service | tail -n 1")
    print(score)
    assert float(score.split("level for postgresql-replica-status.service: ")[1].split()[0]) < 2, score


def test_a_replica_without_a_primary_fails_before_anything_changes(host):
    import yaml
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    data = yaml.safe_load(open(inventory, encoding="utf-8"))
    data.pop("db")
    broken = os.path.join(os.path.dirname(inventory), "no-primary.yml")
    with open(broken, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    try:
        proc = subprocess.run(["ansible-playbook", "-i", broken, "playbooks/site.yml"], capture_output=True, text=True,
                              cwd=os.path.join(os.path.dirname(__file__), "..", "..", ".."), timeout=600, check=False)
    finally:
        os.remove(broken)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "a replica without a primary" in out, out[-3000:]
    assert recap(out) and all(c["changed"] == 0 for c in recap(out).values()), recap(out)


def test_a_wiped_standby_is_cloned_again_by_a_plain_run(host):
    db2 = node("fleet-db2")
    db2.check_output("systemctl stop postgresql@17-main && rm -rf /var/lib/postgresql/17/main/*")
    rc, out = run_playbook("playbooks/site.yml", "--tags", "postgresql")
    assert rc == 0, out[-4000:]
    assert "Clone the standby from the primary" in out
    assert psql("fleet-db2", "SELECT count(*) > 0 FROM replica_probe").stdout.strip() == "t"
    assert db2.file("/var/lib/postgresql/17/main/standby.signal").exists


def test_a_failing_lag_check_runs_the_alert(host):
    """The check with a lag limit no standby meets (a runtime drop-in) fails, and
    OnFailure= runs the alert unit, which logs the status."""
    db2 = node("fleet-db2")
    dropin = "/run/systemd/system/postgresql-replica-status.service.d"
    check = ("/usr/bin/python3 /usr/local/lib/postgresql-replica/replica_status.py --port 9991 --max-lag -1 "
             "--out /var/lib/postgresql-replica/status.json")
    db2.check_output(f"mkdir -p {dropin} && printf '[Service]\\nExecStart=\\nExecStart={check}\\n' > {dropin}/test.conf "
                     "&& systemctl daemon-reload")
    try:
        since = db2.check_output("date +%s")
        assert db2.run("systemctl start postgresql-replica-status.service").rc != 0
        logged = ""
        for _ in range(30):
            logged = db2.run(f"journalctl -o cat --since @{since} "
                             "-u postgresql-replica-alert@postgresql-replica-status.service").stdout
            if "PostgreSQL standby check postgresql-replica-status.service failed" in logged:
                break
            time.sleep(0.5)
        print(logged.strip()[-400:])
        assert "PostgreSQL standby check postgresql-replica-status.service failed" in logged, logged
        assert "replay lags" in logged, logged
    finally:
        db2.run(f"rm -rf {dropin} && systemctl daemon-reload && systemctl reset-failed postgresql-replica-status.service")
    db2.check_output("systemctl start postgresql-replica-status.service")


def prom_values(host, expr):
    """The values of a PromQL expression on the monitoring host (fleet-web)."""
    out = json.loads(host.check_output(f"curl -sf --get --data-urlencode 'query={expr}' "
                                       "http://$(hostname -I | cut -d' ' -f1):9090/api/v1/query"))
    return [r["value"][1] for r in out["data"]["result"]]


def test_the_monitoring_host_scrapes_every_host_over_the_private_network(host):
    """fleet-web (groups web and monitoring) runs Prometheus; every host runs
    its node exporter, the primary and the standby their PostgreSQL exporter,
    the app hosts their PgBouncer exporter, on their private address, open
    to the monitoring host only."""
    wanted = {'count(up{job="node"} == 1)': ["5"], 'count(up{job="postgres"} == 1)': ["2"],
              "count(pg_up == 1)": ["2"], 'count(up{job="caddy"} == 1)': ["1"],
              'count(up{job="app_demo"} == 1)': ["2"], 'probe_success{check="site"}': ["1"],
              'count(pg_replication_is_replica == 1)': ["1"],
              # Debian 13's PgBouncer exporter on each app host.
              'count(up{job="pgbouncer"} == 1)': ["2"], 'count(pgbouncer_up{job="pgbouncer"} == 1)': ["2"]}
    deadline = time.time() + 90
    while time.time() < deadline and any(prom_values(host, q) != v for q, v in wanted.items()):
        time.sleep(3)
    assert {q: prom_values(host, q) for q in wanted} == wanted
    for src, allowed in (("fleet-web", True), ("fleet-app1", False)):
        assert can_connect(node(src), "fleet-db", 9100) is allowed, src
        assert can_connect(node(src), "fleet-db2", 9187) is allowed, src
    for src, allowed in (("fleet-web", True), ("fleet-db", False)):
        assert can_connect(node(src), "fleet-app2", 9127) is allowed, src
    db = node("fleet-db")
    assert db.run("systemctl is-active prometheus").stdout.strip() != "active"
    assert db.check_output("systemctl is-active prometheus-node-exporter prometheus-postgres-exporter") == "active\nactive"


def test_a_paused_standby_makes_the_replication_lag_alert_pending(host):
    """Replay paused on fleet-db2 and rows written on the primary: the
    exporter's lag passes 30 s and the rule's alert goes pending (it would
    fire after its 2 minutes). The exporter measures the lag from the last
    transaction the standby replayed: one is replayed first (a standby that
    has replayed none since it started reports 0, the exporter's blind spot)."""
    psql = "runuser -u postgres -- psql -X -At -p 9991 -c"
    db2 = node("fleet-db2")
    assert post_note(host, "replayed before the pause") == "201"
    deadline = time.time() + 30
    while time.time() < deadline and not db2.check_output(f"{psql} 'SELECT pg_last_xact_replay_timestamp()'"):
        time.sleep(1)
    db2.check_output(f"{psql} 'SELECT pg_wal_replay_pause()'")
    try:
        deadline = time.time() + 90
        while time.time() < deadline and not prom_values(host, 'ALERTS{alertname="StackReplicationLag"}'):
            assert post_note(host, "written while the standby pauses") == "201"
            time.sleep(3)
        state = db2.check_output(f"{psql} \"SELECT pg_is_wal_replay_paused(), pg_last_wal_receive_lsn(), "
                                 "pg_last_wal_replay_lsn(), now() - pg_last_xact_replay_timestamp()\"")
        print(f"standby: {state}; lag: {prom_values(host, 'pg_replication_lag_seconds')}")
        assert prom_values(host, 'ALERTS{alertname="StackReplicationLag"}'), "no StackReplicationLag alert"
    finally:
        db2.check_output(f"{psql} 'SELECT pg_wal_replay_resume()'")


def post_note(host, body):
    cmd = host.run("curl -sS --max-time 15 --cacert %s -o /dev/null -w '%%{http_code}' -H 'Content-Type: application/json' "
                   "-d %s https://localhost:8443/notes", CADDY_CA,
                   json.dumps({"body": body}))
    return cmd.stdout.strip()


def test_promote_refuses_a_lagging_standby(host):
    rc, out = run_playbook("playbooks/promote.yml", "-e", "promote_max_lag_seconds=-1")
    assert rc != 0 and "fleet-db2 is not ready to be promoted: replay lags" in out, out[-3000:]
    assert recap(out) and all(c["changed"] == 0 for c in recap(out).values()), recap(out)


# Last, in this order: a planned switchover to fleet-db2, fleet-db re-cloned
# as its standby (the way back), then a failover to fleet-db with fleet-db2's
# container stopped. The fleet is destroyed afterwards.
PROBE_BODY = json.dumps({"body": "promote probe"})


def promote(*args, inventory=None, tmp_path=None):
    report = os.path.join(str(tmp_path), "promote.json")
    rc, out = run_playbook("playbooks/promote.yml", "-e", "promote_probe_path=/notes", "-e", "promote_probe_method=POST",
                           "-e", json.dumps({"promote_probe_body": PROBE_BODY, "promote_report_file": report}), *args,
                           inventory=inventory)
    print(out[out.find("Promoted fleet-db"):][:700])
    assert rc == 0, out[-5000:]
    with open(report, encoding="utf-8") as handle:
        result = json.load(handle)
    print("promote figures:", json.dumps(result))
    return out, result


def test_zz_1_a_planned_switchover_loses_no_request(host, tmp_path):
    """The pools pause, fleet-db2 catches up and is promoted, PgBouncer on
    each app host points at it and resumes: no request fails, writes wait
    for the pause. The apps keep their processes (no restart for the runtime
    URL, which names PgBouncer)."""
    assert post_note(host, "before the promote") == "201"
    pids = {app: node(app).check_output("systemctl show -p MainPID --value 'demo@8001' 'demo@8002' | sort -n | tail -1")
            for app in APPS}
    with RequestLoop(host, "promote", "/health/db") as loop:
        out, result = promote(tmp_path=tmp_path)
    assert result["planned"] is True and result["target"] == "fleet-db2"
    # The playbook's write probe (POST /notes through Caddy) and the test's read loop.
    assert result["requests"] > 50 and result["failures"] == 0, result
    assert result["stopped"] == "stop file", result
    assert result["pause_seconds"] is not None, result  # the pools were paused (and resumed)
    assert loop.result["requests"] > 50 and loop.result["failures"] == 0, loop.result
    # The app writes through Caddy again, into the new primary.
    assert post_note(host, "after the promote") == "201"
    assert psql("fleet-db2", "SELECT count(*) FROM notes WHERE body = 'after the promote'").stdout.strip() == "1"
    assert psql("fleet-db2", "SELECT count(*) FROM notes WHERE body = 'before the promote'").stdout.strip() == "1"
    assert psql("fleet-db2", "SELECT pg_is_in_recovery()").stdout.strip() == "f"
    address = node("fleet-db2").check_output("hostname -I").split()[0]
    for app in APPS:
        assert f"demo = host={address} port=9991" in pgbouncer_ini(app), app
        assert f"@{address}:9991/" in app_database_url(app), app
    # The old primary is stopped and cannot start.
    db = node("fleet-db")
    assert db.run("systemctl is-enabled postgresql@17-main").stdout.strip() == "masked"
    assert db.run("systemctl is-active postgresql@17-main").stdout.strip() != "active"
    assert db.run("systemctl start postgresql@17-main").rc != 0
    # The apps were not restarted: the runtime URL names PgBouncer on their host.
    after = {app: node(app).check_output("systemctl show -p MainPID --value 'demo@8001' 'demo@8002' | sort -n | tail -1")
             for app in APPS}
    assert after == pids and all(pid != "0" for pid in pids.values()), (pids, after)


def swapped_inventory(primary, standby):
    """The scenario's inventory with `primary` in db and `standby` in
    db_replica, in a directory of its own (Molecule reads every file of its
    inventory directory) that links the same group_vars."""
    import yaml
    inventory = os.environ["MOLECULE_INVENTORY_FILE"]
    data = yaml.safe_load(open(inventory, encoding="utf-8"))
    hosts = {**data["db"]["hosts"], **data["db_replica"]["hosts"]}
    data["db"]["hosts"] = {primary: hosts[primary]}
    data["db_replica"]["hosts"] = {standby: hosts[standby]}
    directory = os.path.join(os.path.dirname(os.path.dirname(inventory)), f"inventory-primary-{primary}")
    os.makedirs(directory, exist_ok=True)
    link = os.path.join(directory, "group_vars")
    if not os.path.islink(link):
        os.symlink(os.path.realpath(os.path.join(os.path.dirname(inventory), "group_vars")), link)
    path = os.path.join(directory, "hosts.yml")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(data, handle)
    return path


def test_zz_2_the_old_primary_becomes_the_new_primarys_standby(host):
    """The way back, as the README says: fleet-db2 in db, fleet-db in
    db_replica, site.yml with postgresql_replica_reclone: fleet-db is cloned
    from fleet-db2 (unmasked for it) and streams from it."""
    inventory = swapped_inventory("fleet-db2", "fleet-db")
    rc, out = run_playbook("playbooks/site.yml", "-e", "postgresql_replica_reclone=true", inventory=inventory)
    assert rc == 0, out[-5000:]
    assert "Clone the standby from the primary" in out
    counts = recap(out)
    assert set(counts) == {"fleet-db", "fleet-db2", "fleet-app1", "fleet-app2", "fleet-web"}, counts
    assert psql("fleet-db", "SELECT pg_is_in_recovery()").stdout.strip() == "t"
    assert psql("fleet-db", "SELECT count(*) FROM notes WHERE body = 'after the promote'").stdout.strip() == "1"
    rows = psql("fleet-db2", "SELECT application_name, state FROM pg_stat_replication").stdout.split()
    assert rows == ["fleet_db|streaming"], rows
    # A second run with the new inventory changes nothing.
    rc, out = run_playbook("playbooks/site.yml", inventory=inventory)
    counts = recap(out)
    assert rc == 0 and counts and all(c["changed"] == 0 for c in counts.values()), counts


def test_zz_3_a_failover_with_the_primary_gone_prints_its_window(host, tmp_path):
    """fleet-db2's container stopped (the primary gone, unreachable):
    promote_force promotes fleet-db, PgBouncer drops its connections to the
    dead server and resumes on the new one. Meanwhile PgBouncer holds the
    apps' queries (up to pgbouncer_query_wait_timeout, 120 s) instead of
    failing them: a client that waits long enough gets its answer from the
    new primary. Printed: what a request loop through Caddy (15 s client
    timeout) saw from the stop to the end, and the playbook's figures."""
    inventory = swapped_inventory("fleet-db2", "fleet-db")
    assert post_note(host, "before the failover") == "201"
    deadline = time.time() + 10
    while time.time() < deadline and psql("fleet-db", "SELECT count(*) FROM notes WHERE body = 'before the failover'"
                                          ).stdout.strip() != "1":
        time.sleep(0.2)
    with RequestLoop(host, "failover", "/health/db") as loop:
        stopped = time.monotonic()
        subprocess.run(["docker", "stop", "-t", "1", "fleet-db2"], check=True, capture_output=True)
        # It stays stopped: started, it would come up as a second primary.
        out, result = promote("-e", "promote_force=true", "-e", "promote_target=fleet-db", inventory=inventory,
                              tmp_path=tmp_path)
        took = time.monotonic() - stopped
    assert result["planned"] is False and result["target"] == "fleet-db"
    assert "is unreachable and was not fenced" in out
    print(f"failover: {took:.0f} s from the stop to the end of promote.yml; the request loop (15 s timeout): "
          f"{loop.result['failures']} of {loop.result['requests']} failed, none got through for "
          f"{loop.result['longest_unavailable_seconds']} s; promote.yml's probe: {result['failures']} of "
          f"{result['requests']} failed, the slowest took {result['max_latency_seconds']} s; "
          f"{result['switch_seconds']} s from pg_promote() to the pools resumed")
    assert not result["still_failing"] and not loop.result["still_failing"], (result, loop.result)
    assert post_note(host, "after the failover") == "201"
    assert psql("fleet-db", "SELECT pg_is_in_recovery()").stdout.strip() == "f"
    assert psql("fleet-db", "SELECT count(*) FROM notes WHERE body IN ('before the failover', 'after the failover')"
                ).stdout.strip() == "2"
    address = node("fleet-db").check_output("hostname -I").split()[0]
    for app in APPS:
        assert f"demo = host={address} port=9991" in pgbouncer_ini(app), app
