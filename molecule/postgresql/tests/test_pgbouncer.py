"""Prove the pgbouncer role from outside: log in through the pooler, pause
it across a server restart, get refused, and see a bad value never leave the
pooler down."""

import json
import os
import re
import time

import yaml

PORT = 9991
POOLER = 6432
VARS = yaml.safe_load(open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "vars.yml")))
PASSWORDS = VARS["molecule_passwords"]
SERVICE = {"12": "postgresql@15-main", "13": "postgresql@17-main"}


def through_pooler(host, sql, user="app_rw", db="app", password=None, port=POOLER):
    """Run SQL through PgBouncer over TCP with the role's password (SCRAM)."""
    return host.run("PGPASSWORD=%s PGCONNECT_TIMEOUT=5 psql postgresql://%s@127.0.0.1:%s/%s -X -v ON_ERROR_STOP=1 -tAc %s",
                    password or PASSWORDS[user], user, str(port), db, sql)


def ctl(host, *args):
    cmd = host.run("pgbouncer-ctl " + " ".join(args))
    return cmd.rc, json.loads(cmd.stdout)


def recap(out):
    """changed and failed of the one host's PLAY RECAP (None when there is none)."""
    found = re.findall(r"^\S+\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", out, re.M)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def sha256(host, path):
    return host.check_output("sha256sum %s", path).split()[0]


def test_the_app_role_logs_in_through_the_pooler_with_scram(host):
    cmd = through_pooler(host, "SELECT current_user, current_database(), inet_server_port()")
    assert cmd.rc == 0, cmd.stderr
    assert cmd.stdout.strip() == f"app_rw|app|{PORT}"
    # The session-mode alias reaches the same database.
    cmd = through_pooler(host, "SELECT current_database()", db="app_session")
    assert cmd.rc == 0 and cmd.stdout.strip() == "app", cmd.stderr
    wrong = through_pooler(host, "SELECT 1", password="wrong")
    assert wrong.rc != 0 and "SASL authentication failed" in wrong.stderr, wrong.stderr
    # A role without a secret in the auth_file gets no further than PgBouncer.
    other = host.run("PGPASSWORD=%s psql postgresql://other_user@127.0.0.1:%s/app -X -tAc 'SELECT 1'",
                     PASSWORDS["other_user"], str(POOLER))
    assert other.rc != 0, other.stdout


def test_the_auth_file_holds_the_servers_scram_secret_and_no_password(host):
    userlist = host.file("/etc/pgbouncer/userlist.txt")
    assert (userlist.user, userlist.group, userlist.mode) == ("root", "postgres", 0o640)
    content = userlist.content_string
    stored = host.check_output("runuser -u postgres -- psql -p %s -XAtc %s postgres", str(PORT),
                               "SELECT rolpassword FROM pg_authid WHERE rolname = 'app_rw'")
    assert stored.startswith("SCRAM-SHA-256$4096:") and f'"app_rw" "{stored}"' in content
    for password in PASSWORDS.values():
        assert password not in content


def test_listens_on_loopback_only_and_scores_below_2(host):
    listeners = [line.split()[3] for line in host.check_output("ss -Hltn").splitlines()]
    pooled = [address for address in listeners if address.endswith(f":{POOLER}")]
    assert pooled == [f"127.0.0.1:{POOLER}"], listeners
    assert host.socket(f"unix:///run/postgresql/.s.PGSQL.{POOLER}").is_listening
    score = host.check_output("systemd-analyze security pgbouncer.service | tail -n 1")
    print(score)
    assert float(score.split("pgbouncer.service: ")[1].split()[0]) <= 2.0, score


def test_a_query_during_a_pause_waits_out_a_server_restart(host):
    """Paused, the pooler holds new queries and has closed its server
    connections: the server restarts under it and the query, sent during
    the pause, is answered by the restarted server after the resume."""
    started = host.check_output("runuser -u postgres -- psql -p %s -XAtc 'SELECT pg_postmaster_start_time()' postgres",
                                str(PORT))
    rc, paused = ctl(host, "pause")
    assert rc == 0 and paused["paused"] == ["app"], paused  # the session-mode alias is left alone
    try:
        host.check_output("rm -f /tmp/held.out; (PGPASSWORD=%s PGCONNECT_TIMEOUT=3 psql postgresql://app_rw@127.0.0.1:%s/app "
                          "-XAtc 'SELECT pg_postmaster_start_time()' > /tmp/held.out 2>&1; echo rc=$? >> /tmp/held.out) "
                          ">/dev/null 2>&1 &", PASSWORDS["app_rw"], str(POOLER))
        time.sleep(1)
        pools = ctl(host, "show", "pools")[1]["pools"]
        waiting = sum(int(p["cl_waiting"]) for p in pools if p["database"] == "app")
        assert waiting == 1, pools
        host.check_output("systemctl restart %s", SERVICE[host.system_info.release.split(".")[0]])
        host.check_output("for i in $(seq 50); do pg_isready -q -h /run/postgresql -p %s && exit 0; sleep 0.2; done; exit 1",
                          str(PORT))
        assert "rc=" not in host.file("/tmp/held.out").content_string  # still held
    finally:
        rc, resumed = ctl(host, "resume")
    assert rc == 0, resumed
    for _ in range(50):
        out = host.file("/tmp/held.out").content_string
        if "rc=" in out:
            break
        time.sleep(0.1)
    lines = out.split()
    print("held query:", out)
    assert lines[-1] == "rc=0", out
    assert out.split("\n")[0] != started  # answered by the restarted server


def test_a_pause_that_cannot_complete_is_undone(host):
    """A transaction left open holds its server connection: the pause gives
    up after its timeout, resumes, and says so (exit status 3)."""
    host.check_output("systemd-run --unit=open-transaction --collect sh -c %s",
                      f"PGPASSWORD={PASSWORDS['app_rw']} psql postgresql://app_rw@127.0.0.1:{POOLER}/app -Xc "
                      "'BEGIN; SELECT pg_sleep(20)'")
    try:
        time.sleep(1)
        rc, out = ctl(host, "pause", "--timeout", "2")
        assert rc == 3 and "still running transactions after 2 s" in out["error"], out
        databases = ctl(host, "show", "databases")[1]["databases"]
        assert {d["name"]: d["paused"] for d in databases}["app"] == "0", databases
        assert through_pooler(host, "SELECT 1").rc == 0
    finally:
        host.run("systemctl stop open-transaction")


def test_bad_input_fails_naming_the_variable_before_anything_changes(host, playbook):
    ini = sha256(host, "/etc/pgbouncer/pgbouncer.ini")
    for extra, message in (
            ({"pgbouncer_pool_mode": "transactions"}, "pgbouncer_pool_mode"),
            ({"pgbouncer_listen_address": "203.0.113.7"}, "pgbouncer_listen_address: 203.0.113.7 must be a loopback"),
            ({"pgbouncer_auth_users": [{"name": "app_rw", "secret": PASSWORDS["app_rw"]}]},
             "pgbouncer_auth_users[0].secret: the secret of app_rw must be a SCRAM-SHA-256 secret"),
            ({"pgbouncer_default_pool_size": 50}, "in that order of size")):
        rc, out = playbook("-e", json.dumps(extra))
        assert rc != 0 and message in out, (extra, out[-2500:])
        assert recap(out) == (0, 1), (extra, out[-1500:])
        assert PASSWORDS["app_rw"] not in out
    assert sha256(host, "/etc/pgbouncer/pgbouncer.ini") == ini


def test_a_value_pgbouncer_refuses_never_goes_live(host, playbook):
    ini = sha256(host, "/etc/pgbouncer/pgbouncer.ini")
    rc, out = playbook("--tags", "pgbouncer", "-e", json.dumps({"pgbouncer_settings": {"server_idle_timeout": "soon"}}))
    assert rc != 0
    assert "failed to validate" in out and "for parameter server_idle_timeout" in out, out[-3000:]
    assert sha256(host, "/etc/pgbouncer/pgbouncer.ini") == ini
    assert through_pooler(host, "SELECT 1").rc == 0


def test_a_port_taken_at_restart_puts_the_known_good_configuration_back(host, playbook):
    """pgbouncer-check binds no TCP port and no socket of the live ones, so
    a port another process holds (here PostgreSQL's, on the same host) only
    fails at the restart: the known-good files go back, PgBouncer runs on
    them, and the run fails naming the variable and PgBouncer's words."""
    good = sha256(host, "/etc/pgbouncer/known-good/pgbouncer.ini")
    rc, out = playbook("--tags", "pgbouncer", "-e", f"pgbouncer_port={PORT}")
    print(out[out.find("PgBouncer did not"):][:800])
    assert rc != 0, out[-3000:]
    assert "PgBouncer did not restart with the new configuration" in out, out[-3000:]
    assert "Changed since the known-good configuration: pgbouncer_port" in out, out[-3000:]
    assert "unix socket is in use" in out, out[-3000:]
    assert sha256(host, "/etc/pgbouncer/pgbouncer.ini") == good
    assert through_pooler(host, "SELECT 1").rc == 0
    rc, out = playbook()
    assert rc == 0 and recap(out) == (0, 0), out[-3000:]


def test_a_stopped_pooler_with_a_hand_broken_file_is_healed_by_a_plain_converge(host, playbook):
    host.check_output("systemctl stop pgbouncer && echo 'pool_mode = nonsense' >> /etc/pgbouncer/pgbouncer.ini")
    assert host.run("systemctl start pgbouncer").rc != 0
    rc, out = playbook()
    assert rc == 0, out[-3000:]
    assert recap(out)[1] == 0
    assert host.service("pgbouncer").is_running
    assert through_pooler(host, "SELECT 1").rc == 0
    assert sha256(host, "/etc/pgbouncer/pgbouncer.ini") == sha256(host, "/etc/pgbouncer/known-good/pgbouncer.ini")
