"""The two apps through the stack's playbooks: a redeploy of both under load,
a one-off command (run.yml), the maintenance switch, bad stack_apps refused
before any change, and strict egress."""

import json
import shutil

from conftest import API_SRC, SCENARIO_DIR, current_release, egress_host, http, playbook, report, serving_port, site

from stacktest import assert_redeploy_loses_no_request, recap

testinfra_hosts = ["ansible://apps-host"]
SECRETS = ("shop-owner-Secret-42", "shop-rw-Secret-42", "shop-ro-Secret-42")


def _push_frontend_commit(marker: str) -> str:
    """A new commit on the frontend's repository on apps-egress; returns its id."""
    egress = egress_host()
    egress.check_output(
        # root works in the git user's repository: trust it (this test container only).
        "git config --global --add safe.directory '*'"
        " && rm -rf /tmp/web-work && git clone -q /srv/git/web.git /tmp/web-work && cd /tmp/web-work"
        f" && echo {marker} > VERSION && git add VERSION"
        f" && git -c user.email=t@example.test -c user.name=test commit -qm {marker}"
        " && git push -q origin HEAD:main && chown -R git:git /srv/git/web.git")
    return egress.check_output("git --git-dir=/srv/git/web.git rev-parse main")[:12]


def test_redeploy_of_both_apps_loses_no_request(host, tmp_path):
    source = tmp_path / "shopapi-v3"
    shutil.copytree(API_SRC, source)
    (source / "shopapi" / "CHANGES").write_text("v3\n")
    commit = _push_frontend_commit("v3")
    outputs = []

    def redeploy(*extra):
        rc, out = playbook(*extra)
        outputs.append(out)
        return rc, out

    before, after = assert_redeploy_loses_no_request(
        host, lambda: {app: current_release(host, app) for app in ("api", "web")},
        {"apps-api": "/api/healthz", "apps-web": "/healthz"},
        "-e", json.dumps({"apps_api_source": str(source)}), redeploy=redeploy)
    out = outputs[0]
    assert after["web"] == commit, (before, after)
    # The web release (same package-lock.json) took the current release's
    # node_modules instead of npm ci, and its build counted on from the
    # build cache carried over (.next/cache).
    npm_ci = out.split("Install the release's node_modules from package-lock.json (npm ci)]", 1)[1]
    assert npm_ci.split("\n", 3)[2].startswith("skipping:"), npm_ci[:400]
    builds = [int(host.check_output(f"cat /srv/web/releases/{release}/.next/cache/builds")) for release in
              (before["web"], after["web"])]
    assert builds[1] == builds[0] + 1, builds
    record = json.loads(host.check_output(f"cat /srv/web/releases/{after['web']}/.app_service_node_modules"))
    assert record["lock"] and record["node"].startswith("v"), record
    # The pre-migration backup of the run, tagged so retention keeps it apart.
    status = json.loads(host.check_output("cat /var/lib/backups/status.json"))
    report(f"redeploy of both apps: {before} -> {after}; backup {status['last_run']['set']}")
    assert status["last_run"]["set"].endswith("-premigration") and status["last_run"]["result"] == "ok"


def test_lock_playbook_shows_every_app_of_stack_apps(host):
    """playbooks/lock.yml on the stack_apps route: one line per app, after the
    redeploy above released both locks; a lock left by another controller on
    one app is shown and released."""
    rc, out = playbook(name="playbooks/lock.yml")
    assert rc == 0 and "api: not locked" in out and "web: not locked" in out, out[-3000:]
    holder = {"id": "elsewhere:7:1", "user": "carol", "controller": "elsewhere", "pid": 7, "pid_start": "1",
              "playbook": "playbooks/redeploy.yml", "phase": "locked", "since": 1796000000}
    host.check_output("install -d -m 0700 /run/lock/app_service-web.lock && echo %s > "
                      "/run/lock/app_service-web.lock/holder.json", json.dumps(holder))
    rc, out = playbook("-e", "lock_release=true", "-e", "app_name=web", name="playbooks/lock.yml")
    assert rc == 0 and "web: released the lock of carol@elsewhere" in out, out[-3000:]
    assert "api: not locked" not in out and "api: locked" not in out, out[-3000:]
    assert not host.file("/run/lock/app_service-web.lock").exists


def test_run_playbook_runs_a_command_in_the_current_release(host):
    runs = "sudo -u postgres psql -p 9992 -d shop -Atc \"SELECT count(*) FROM runs WHERE kind = 'nightly'\""
    before = int(host.check_output(runs))
    rc, out = playbook("-e", json.dumps({"app_command": ["python", "-m", "shopapi.nightly"], "app_name": "api"}),
                       name="playbooks/run.yml")
    assert rc == 0, out[-4000:]
    assert "nightly run" in out
    assert int(host.check_output(runs)) == before + 1
    assert not any(secret in out for secret in SECRETS)


def test_maintenance_switch_serves_503_keeps_the_health_paths_and_is_recorded(host):
    host.run("rm -f /var/log/maintenance-deploy.log")
    rc, out = playbook("--tags", "maintenance", "-e", "maintenance=on", "-e", 'deploy_message="db move"',
                       name="playbooks/site.yml")
    assert rc == 0, out[-4000:]
    status, body, headers = site(host, "/", headers=True)
    report(f"maintenance on: / -> {status}, Retry-After {headers.get('Retry-After')}")
    assert status == 503 and headers.get("Retry-After") == "300" and "maintenance" in body.lower()
    assert site(host, "/api/items")[0] == 503
    assert site(host, "/api/healthz")[0] == 200 and site(host, "/healthz")[0] == 200
    assert host.file("/etc/caddy/stack-maintenance").exists
    rc, out = playbook("--tags", "maintenance", "-e", "maintenance=off", name="playbooks/site.yml")
    assert rc == 0, out[-4000:]
    assert site(host, "/")[0] == 200 and site(host, "/api/items")[0] == 200
    assert not host.file("/etc/caddy/stack-maintenance").exists
    # Each switch is in the deploy record (the apps' format), with who and the message.
    lines = host.file("/var/log/maintenance-deploy.log").content_string.splitlines()
    report(f"maintenance record: {lines}")
    assert len(lines) == 2, lines
    assert " app=maintenance action=maintenance-on result=ok by=" in lines[0] and 'message="db move"' in lines[0]
    assert " action=maintenance-off result=ok " in lines[1] and " playbook=site.yml " in lines[1], lines


def _inventory_apps() -> list[dict]:
    import yaml
    with open(SCENARIO_DIR / "inventory" / "group_vars" / "all.yml", encoding="utf-8") as handle:
        return yaml.safe_load(handle)["stack_apps"]


BAD_APPS = [
    ("an unknown runtime", 1, {"runtime": "ruby"}, "stack_apps[1].runtime: must be one of python, node"),
    ("a process without a command", 1, {"processes": [{"name": "worker"}]},
     "stack_apps[1].processes[0].command: needs a command"),
    ("two apps on one port", 1, {"ports": [3002, 8102]}, "stack_apps[1].ports: [3002] already used by stack_apps[0]"),
    ("a route claimed by two apps", 1, {"route": "/*"}, "stack_apps[1].route: '/*' is claimed by stack_apps[0] (web)"),
]


def test_bad_input_fails_before_any_host_changes(host):
    """site.yml with each bad stack_apps: the run fails in the stack's
    preflight with a message naming the key, and no task changed anything
    (the apps keep serving the same releases)."""
    before = {app: current_release(host, app) for app in ("api", "web")}
    for what, index, change, message in BAD_APPS:
        apps = _inventory_apps()
        apps[index] = {**apps[index], **change}
        rc, out = playbook("-e", json.dumps({"stack_apps": apps}), name="playbooks/site.yml")
        counters = recap(out)
        report(f"bad input, {what}: rc={rc}, recap {counters}")
        assert rc != 0, f"{what}: site.yml must fail"
        assert message in out, f"{what}: no message naming the key in\n{out[-3000:]}"
        assert counters and all(c.get("changed", 0) == 0 for c in counters.values()), counters
        assert "TASK [app_service" not in out and "TASK [postgresql" not in out, f"{what}: a role ran"
    assert {app: current_release(host, app) for app in ("api", "web")} == before


def _egress(host) -> dict:
    port = serving_port(host, "api")
    status, body = http(host, f"http://127.0.0.1:{port}/api/egress?url=http://apps-egress:8000/")
    assert status == 200, body
    return json.loads(body)


def test_strict_egress_refuses_the_outbound_call_the_default_allows(host):
    """Last test of the scenario: it leaves the apps in strict egress (a run
    to put them back would prove nothing the converge did not)."""
    assert _egress(host).get("status") == 200
    rc, out = playbook("--tags", "app_service", "-e", "app_service_egress=localhost", name="playbooks/site.yml")
    assert rc == 0, out[-4000:]
    refused = _egress(host)
    report(f"egress localhost: /api/egress -> {refused}")
    assert refused.get("status") != 200 and refused.get("error")
