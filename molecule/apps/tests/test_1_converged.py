"""After converge and idempotence: both apps as deployed once, from outside."""

import json
import uuid

from conftest import (API_SRC, PSQL, current_release, deploy_key_sha256, egress_host, freeze, http, lock_pins, normalize,
                      playbook, report, serving_port, site)

from stacktest import recap

testinfra_hosts = ["ansible://apps-host"]


def test_both_apps_answer_their_health_paths(host):
    for app, path in (("api", "/api/healthz"), ("web", "/healthz")):
        port = serving_port(host, app)
        status, body = http(host, f"http://127.0.0.1:{port}{path}")
        report(f"{app}: {path} on {port} -> {status} {body}")
        assert status == 200
    status, body = http(host, f"http://127.0.0.1:{serving_port(host, 'api')}/api/healthz")
    assert json.loads(body)["release"] == current_release(host, "api")


def test_items_round_trip_through_the_database(host):
    port = serving_port(host, "api")
    name = f"widget-{uuid.uuid4().hex[:8]}"
    status, body = http(host, f"http://127.0.0.1:{port}/api/items", {"name": name})
    assert status == 201, body
    status, body = http(host, f"http://127.0.0.1:{port}/api/items")
    assert status == 200 and name in [item["name"] for item in json.loads(body)["items"]]


def test_migration_created_its_tables_without_alembic(host):
    owners = host.check_output(f"{PSQL} \"SELECT tablename || '=' || tableowner FROM pg_tables "
                               "WHERE schemaname = 'public' ORDER BY 1\"").splitlines()
    assert owners == ["items=shop_owner", "runs=shop_owner"]
    assert not host.file("/srv/api/current/.venv/bin/alembic").exists
    # The runtime role writes rows but cannot change the schema.
    ddl = host.run("PGPASSWORD=shop-rw-Secret-42 psql -h 127.0.0.1 -p 9992 -U shop_rw -d shop -c 'DROP TABLE items'")
    assert ddl.rc != 0 and "must be owner" in ddl.stderr


def test_api_virtualenv_is_exactly_the_lock(host):
    installed = sorted(freeze(host, "/srv/api/current"))
    report(f"api: pip freeze of release {current_release(host, 'api')}: {len(installed)} packages")
    assert sorted(normalize(line) for line in installed) == lock_pins(API_SRC / "requirements.lock")


def test_node_release_has_its_own_node_modules_and_build_root_owned(host):
    release = f"/srv/web/releases/{current_release(host, 'web')}"
    for path in (f"{release}/node_modules", f"{release}/build", f"{release}/build/index.html"):
        f = host.file(path)
        assert f.exists and f.user == "root" and f.group == "root" and not f.mode & 0o022, path
        assert host.run(f"runuser -u web -- test -w {path}").rc != 0, path
    assert host.run(f"runuser -u web -- touch {release}/build/x").rc != 0
    page = host.file(f"{release}/build/index.html").content_string
    assert current_release(host, "web") in page
    status, body = http(host, f"http://127.0.0.1:{serving_port(host, 'web')}/")
    assert status == 200 and current_release(host, "web") in body
    pid = host.check_output(f"systemctl show -p MainPID --value web@{serving_port(host, 'web')}")
    assert host.check_output(f"ps -o user=,comm= -p {pid}").split() == ["web", "node"]


def test_api_reaches_the_egress_host(host):
    status, body = http(host, f"http://127.0.0.1:{serving_port(host, 'api')}/api/egress?url=http://apps-egress:8000/")
    report(f"api: /api/egress to apps-egress -> {body}")
    assert status == 200 and json.loads(body).get("status") == 200


def test_both_apps_answer_through_caddy_on_their_routes(host):
    status, page = site(host, "/")
    assert status == 200 and current_release(host, "web") in page
    status, body = site(host, "/api/healthz")
    assert status == 200 and json.loads(body)["release"] == current_release(host, "api")
    status, body = site(host, "/healthz")
    assert status == 200 and json.loads(body)["release"] == current_release(host, "web")
    report(f"through Caddy: / and /healthz from web {current_release(host, 'web')}, "
           f"/api/healthz from api {current_release(host, 'api')}")


def test_worker_processes_the_rows_the_api_writes(host):
    """api-worker.service shares the API's release, environment and database role."""
    name = f"job-{uuid.uuid4().hex[:8]}"
    status, body = site(host, "/api/items", {"name": name})
    assert status == 201, body
    done = ""
    for _ in range(30):
        done = host.check_output(f"{PSQL} \"SELECT processed FROM items WHERE name = '{name}'\"")
        if done == "t":
            break
        host.check_output("sleep 1")
    assert done == "t", "api-worker did not process the row"
    unit = host.check_output("systemctl show -p User -p WorkingDirectory -p ActiveState api-worker.service")
    assert "User=api" in unit and "WorkingDirectory=/srv/api/current" in unit and "ActiveState=active" in unit


def test_nightly_timer_is_scheduled_and_its_job_runs_in_the_release(host):
    timers = host.check_output("systemctl list-timers --all --no-legend api-nightly.timer")
    assert "api-nightly.timer" in timers and "api-nightly.service" in timers
    before = int(host.check_output(f"{PSQL} \"SELECT count(*) FROM runs WHERE kind = 'nightly'\""))
    host.check_output("systemctl start api-nightly.service")
    after = int(host.check_output(f"{PSQL} \"SELECT count(*) FROM runs WHERE kind = 'nightly'\""))
    assert after == before + 1
    assert "nightly run" in host.check_output("journalctl -u api-nightly.service --no-pager -o cat")


def test_frontend_came_from_git_over_ssh_with_the_deploy_key_only(host):
    egress = egress_host()
    head = egress.check_output("git --git-dir=/srv/git/web.git rev-parse main")
    assert current_release(host, "web") == head[:12]
    key_dir, key = host.file("/srv/web/git"), host.file("/srv/web/git/deploy_key")
    assert key_dir.user == "root" and key_dir.mode == 0o700
    assert key.user == "root" and key.group == "root" and key.mode == 0o600
    assert key.sha256sum == deploy_key_sha256()
    # The git host's key was accepted on first use and pinned in the app's own file.
    pinned = host.check_output("ssh-keygen -F apps-egress -f /srv/web/git/known_hosts")
    assert egress.check_output("cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub") in pinned
    # sshd saw exactly this key (its fingerprint), for the git user.
    fingerprint = egress.check_output("ssh-keygen -lf /srv/git/.ssh/authorized_keys").split()[1]
    log = egress.check_output("journalctl -u ssh --no-pager -o cat")
    report(f"web: release {current_release(host, 'web')} is commit {head[:12]}; sshd accepted {fingerprint}")
    assert "Accepted publickey for git" in log and fingerprint in log


def test_check_mode_on_the_converged_host_reports_no_changes(host):
    """Before the later tests deploy other sources: the converged state."""
    rc, out = playbook("--check", "--diff", name="playbooks/site.yml")
    assert rc == 0, out[-4000:]
    changed = {name: counters.get("changed", 0) for name, counters in recap(out).items()}
    assert set(changed.values()) == {0}, (changed, out[-4000:])
