"""Unit tests for filter_plugins/stack.py: stack_apps (several apps behind
one site), the Caddy routes made from them, maintenance, and the respond
route of filter_plugins/caddy.py that maintenance uses."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "filter_plugins"))

import caddy  # noqa: E402
import caddyfile  # noqa: E402  (tests/unit: the Caddyfile template rendered)
import stack  # noqa: E402
from stack import AnsibleFilterError  # noqa: E402

LEGACY = {"name": "demo", "ports": [8001, 8002], "health_path": "/health",
          "migrate_command": ["alembic", "upgrade", "head"]}
DEFAULTS = {"health_path": "/health", "egress": "open", "exec_wrapper": []}
SINGLE_GROUPS = {"all": ["vps"], "db": ["vps"], "app": ["vps"], "web": ["vps"]}
SINGLE_VARS = {"vps": {"ansible_facts": {"default_ipv4": {"address": "203.0.113.10"}}}}
FLEET_GROUPS = {"all": ["db1", "app1", "app2", "web1"], "db": ["db1"], "app": ["app1", "app2"], "web": ["web1"]}
FLEET_VARS = {h: {"stack_private_address": a} for h, a in
              (("db1", "10.0.0.21"), ("app1", "10.0.0.31"), ("app2", "10.0.0.32"), ("web1", "10.0.0.41"))}
TWO_APPS = [
    {"name": "web", "runtime": "node", "ports": [3001, 3002], "route": "/*", "health_path": "/healthz", "source_path": "/nonexistent/web",
     "web_command": ["npm", "start"], "database": False},
    {"name": "api", "ports": [8101, 8102], "route": "/api/*", "health_path": "/api/healthz",
     "source_path": "/nonexistent/api",
     "web_command": ["uvicorn", "shop.main:create_app", "--factory", "--host", "{host}", "--port", "{port}"],
     "db_url_env": "SHOP_DSN", "migrate_command": ["python", "-m", "shop.migrate"],
     "processes": [{"name": "worker", "command": ["python", "-m", "shop.worker"]}],
     "timers": [{"name": "nightly", "command": ["python", "-m", "shop.nightly"], "on_calendar": "daily"}]},
]


def plan(apps, legacy=LEGACY):
    return stack.apps_plan(apps, legacy, DEFAULTS)


def test_no_apps_is_the_one_legacy_app_with_alembic_commands():
    (app,) = plan([])
    assert app["legacy"] is True and app["name"] == "demo" and app["route"] == "/*"
    assert app["revision_command"] == ["alembic", "current"]
    assert app["schema_head_command"] == ["alembic", "heads"]
    assert app["egress"] == "open" and app["runtime"] == "python"


def test_an_app_without_alembic_gets_no_revision_commands():
    apps = plan(TWO_APPS)
    assert [a["name"] for a in apps] == ["web", "api"]
    assert all(a["legacy"] is False for a in apps)
    assert apps[1]["revision_command"] == [] and apps[1]["schema_head_command"] == []
    # Every key is filled in for every app, so no app inherits another's settings.
    assert set(apps[0]) == set(apps[1]) == set(stack.APP_DEFAULTS) | {"legacy"}
    assert apps[0]["processes"] == [] and apps[1]["processes"][0]["name"] == "worker"


@pytest.mark.parametrize("change, message", [
    ({"runtime": "ruby"}, r"stack_apps\[1\]\.runtime: must be one of python, node"),
    ({"route": "/*"}, r"stack_apps\[1\]\.route: '/\*' is claimed by stack_apps\[0\] \(web\)"),
    ({"ports": [3002, 8102]}, r"stack_apps\[1\]\.ports: \[3002\] already used by stack_apps\[0\]"),
    ({"ports": [8101, 8101]}, r"stack_apps\[1\]\.ports: must be two distinct ports"),
    ({"name": "web"}, r"stack_apps\[1\]\.name: 'web' is used by stack_apps\[0\]"),
    ({"processes": [{"name": "worker"}]}, r"stack_apps\[1\]\.processes\[0\]\.command: needs a command"),
    ({"timers": [{"name": "t", "command": ["x"]}]}, r"stack_apps\[1\]\.timers\[0\]\.on_calendar"),
    ({"route": "api"}, r"stack_apps\[1\]\.route: must be /\* or a prefix"),
    ({"health_path": "healthz"}, r"stack_apps\[1\]\.health_path: must be a path"),
    ({"colour": "blue"}, r"stack_apps\[1\]: unknown keys colour"),
    ({"db_pool_mode": "statement"}, r"stack_apps\[1\]\.db_pool_mode: must be one of transaction, session"),
])
def test_bad_apps_fail_naming_the_key(change, message):
    apps = [dict(TWO_APPS[0]), {**TWO_APPS[1], **change}]
    with pytest.raises(AnsibleFilterError, match=message):
        plan(apps)


def test_routes_put_prefixes_before_the_catch_all_with_each_apps_health_path():
    routes = stack.app_routes(SINGLE_VARS, SINGLE_GROUPS, "vps", plan(TWO_APPS))
    assert [r.get("path") for r in routes] == ["/api/*", None]
    assert routes[0]["reverse_proxy"]["upstreams"] == ["127.0.0.1:8101", "127.0.0.1:8102"]
    assert routes[0]["reverse_proxy"]["health_uri"] == "/api/healthz"
    assert routes[1]["reverse_proxy"]["health_uri"] == "/healthz"


def test_routes_on_the_fleet_reach_every_app_host():
    for host in ("app1", "app2"):
        FLEET_VARS[host]["app_service_bind_address"] = FLEET_VARS[host]["stack_private_address"]
    routes = stack.app_routes(FLEET_VARS, FLEET_GROUPS, "web1", plan(TWO_APPS))
    assert routes[0]["reverse_proxy"]["upstreams"] == [
        "10.0.0.31:8101", "10.0.0.31:8102", "10.0.0.32:8101", "10.0.0.32:8102"]


def test_maintenance_keeps_only_the_health_paths_and_answers_503_elsewhere():
    routes = stack.app_routes(SINGLE_VARS, SINGLE_GROUPS, "vps", plan(TWO_APPS), True, 120, "<h1>back soon</h1>")
    assert [r.get("path") for r in routes] == [["/api/healthz"], ["/healthz"], None]
    respond = routes[-1]["respond"]
    assert respond["status"] == 503 and respond["headers"]["Retry-After"] == "120"
    text = caddyfile.sites_text([{"address": "example.com", "routes": routes}])
    assert "handle /api/healthz {" in text
    assert 'header Retry-After 120' in text
    assert 'respond * "<h1>back soon</h1>" 503' in text


def test_respond_route_refuses_bad_status_and_multiline_body():
    with pytest.raises(caddy.AnsibleFilterError, match="status"):
        caddyfile.sites_text([{"address": "example.com", "routes": [{"respond": {"status": 99}}]}])
    with pytest.raises(caddy.AnsibleFilterError, match="single-line"):
        caddyfile.sites_text([{"address": "example.com", "routes": [{"respond": {"body": "a\nb"}}]}])


def test_the_per_app_include_maps_every_key_of_the_plan():
    """roles/stack/tasks/app.yml turns each planned app into app_service's
    variables: a key of APP_DEFAULTS it forgets would silently fall back to
    the inventory's app_service_* value (another app's setting), and a key
    it reads that the plan lacks would fail only on a host."""
    import yaml
    path = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "stack", "tasks", "app.yml")
    with open(path, encoding="utf-8") as handle:
        tasks = yaml.safe_load(handle)
    mappings = [t["vars"] for t in tasks if t.get("ansible.builtin.include_role")]
    assert len(mappings) == 2 and mappings[0] == mappings[1]
    read = {value.split("__stack_app.")[1].split()[0] for value in mappings[0].values() if "__stack_app." in value}
    # Used by the stack role itself (routes, final health checks, monitoring), not app_service.
    stack_only = {"route", "deep_health_path", "metrics_path"}
    assert read - set(stack.APP_DEFAULTS) == set()
    assert set(stack.APP_DEFAULTS) - read - stack_only == set()
    # Each app_service variable is set once, from the key of the same name where one exists.
    assert all(key.startswith("app_service_") for key in mappings[0])


def test_an_app_with_a_metrics_path_is_scraped_on_both_colours_and_hidden_by_caddy():
    plan = stack.apps_plan([
        {"name": "api", "ports": [8101, 8102], "route": "/api/*", "source_path": "/srv/api", "metrics_path": "/metrics"},
        {"name": "web", "ports": [8201, 8202], "source_path": "/srv/web"},
    ], {}, {"health_path": "/health", "egress": "open", "exec_wrapper": []})
    hostvars = {"one": {}}
    groups = {"app": ["one"], "web": ["one"], "db": ["one"]}
    assert stack.app_metrics_targets(hostvars, groups, "one", plan) == [
        {"job": "app_api", "metrics_path": "/metrics", "targets": ["127.0.0.1:8101", "127.0.0.1:8102"]}]
    routes = stack.app_routes(hostvars, groups, "one", plan)
    assert routes[0] == {"path": "/metrics", "respond": {"status": 404, "body": "Not Found"}}
    assert all("respond" not in r for r in stack.app_routes(hostvars, groups, "one", plan, maintenance=True)[:-1])
    with pytest.raises(AnsibleFilterError, match=r"stack_apps\[0\].metrics_path: must be a path"):
        stack.apps_plan([{"name": "api", "ports": [1, 2], "source_path": "/s", "metrics_path": "metrics"}], {},
                        {"health_path": "/health", "egress": "open", "exec_wrapper": []})


def test_site_checks_ask_each_app_for_its_own_health_path():
    checks = stack.site_checks(plan(TWO_APPS), "https://shop.test:443")
    assert sorted((c["name"], c["url"]) for c in checks) == [
        ("site_api", "https://shop.test:443/api/healthz"), ("site_web", "https://shop.test:443/healthz")]
    assert all(c["check_cert"] is True and c["ca_file"] == "" for c in checks)
    one = stack.site_checks(plan([], dict(LEGACY, health_path="/up")), "https://x.test:8443",
                            ca_file="/etc/ca.crt", check_cert=False)
    assert one == [{"name": "site", "url": "https://x.test:8443/up", "ca_file": "/etc/ca.crt", "check_cert": False}]


def test_the_maintenance_records_name_is_not_an_apps():
    with pytest.raises(AnsibleFilterError, match=r"stack_apps\[0\]\.name: 'maintenance' is reserved"):
        plan([dict(TWO_APPS[1], name="maintenance")])
    with pytest.raises(AnsibleFilterError, match="is reserved"):
        plan([], dict(LEGACY, name="maintenance"))
