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


def app_database_url(app):
    env = node(app).check_output("grep ^DATABASE_URL= /etc/demo/env")
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
    assert all(c["changed"] == 0 for c in counts.values()), counts


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
