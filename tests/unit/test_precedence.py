"""Variable precedence of the stack, proven with the real playbook.

Runs playbooks/site.yml against a dummy inventory of one local host (in db,
app and web) with the real `stack` role and the real defaults, vars and
argument specs of every role. Only the roles' task bodies are replaced: each
role records the values its own tasks see (where its own defaults apply) to a
JSON file. No container is needed; each run takes a few seconds.

Precedence, from weakest: role defaults < stack wiring < inventory
group_vars/all < inventory group_vars/<group> < host_vars < -e. One test per
level proves that level wins over the one below it, for a variable of every
role.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = ["base", "postgresql", "pgbouncer", "app_service", "caddy", "backups"]
# Roles site.yml names that this inventory (no monitoring group) never runs.
OTHER_ROLES = ["monitoring"]
BIN = Path(sys.executable).parent

# What each role's tasks see, recorded as JSON: every variable named after the role.
RECORDER = """---
- name: Record what this role's tasks see
  ansible.builtin.copy:
    content: "{{ dict(__names | zip(__names | map('extract', __vals))) | to_json }}"
    dest: "{{ lookup('ansible.builtin.env', 'PRECEDENCE_OUT') }}/{{ role_name }}{{ '-' ~ __stack_app.name if __stack_app is defined else '' }}.json"
    mode: "0600"
  vars:
    __names: "{{ query('ansible.builtin.varnames', '^' ~ role_name ~ '_') }}"
    __vals: "{{ dict(__names | zip(query('ansible.builtin.vars', *__names))) }}"
"""

STACK = {
    "stack_app_name": "demo",
    "stack_app_source_path": "/nonexistent/demo_app",
    "stack_domain": "example.test",
    "stack_https_port": 8443,
    "stack_http_port": 8080,
    "stack_db_port": 9991,
    "stack_db_name": "demo_db",
    "stack_db_owner": "demo_owner",
    "stack_db_app_user": "demo_app",
    "stack_db_readonly_user": "demo_ro",
    "stack_db_owner_password": "owner-pw",
    "stack_db_app_password": "app-pw",
    "stack_db_readonly_password": "ro-pw",
}

# Each level wins over the one below it, proven for one variable of every
# role per level. Level 1 runs without overrides; levels 2-5 come from one
# layered inventory, each with its own variables so that one run shows all.
WIRED = {  # level 1: the stack wiring's value; the role's own default differs
    "base": ("base_firewall_web", True, False),
    "postgresql": ("postgresql_port", 9991, 5432),
    # max_connections 100 less the 20 kept for the rest, on one app host.
    "pgbouncer": ("pgbouncer_max_db_connections", 80, 20),
    "app_service": ("app_service_name", "demo", "app"),
    "caddy": ("caddy_https_port", 8443, 443),
    "backups": ("backups_databases", ["demo_db"], []),
}
# role -> (variable, value below, value that must win); the value below sits
# one level down: the wiring for level 2, group_vars/all for 3, the group for 4,
# host_vars for 5.
LEVEL2 = {role: (var, wired, {"base_firewall_web": False, "postgresql_port": 7001, "app_service_name": "from-all",
                              "pgbouncer_max_db_connections": 70,
                              "caddy_https_port": 7441, "backups_databases": ["from_all"]}[var])
          for role, (var, wired, _) in WIRED.items()}
LEVEL3 = {
    "base": ("base_timezone", "Europe/Berlin", "Europe/Paris"),
    "postgresql": ("postgresql_listen_addresses", "*", "127.0.0.1"),
    "pgbouncer": ("pgbouncer_pause_timeout", 20, 25),
    "app_service": ("app_service_ports", [9001, 9002], [9101, 9102]),
    "caddy": ("caddy_http_port", 7080, 7081),
    "backups": ("backups_dir", "/srv/backups-all", "/srv/backups-db"),
}
LEVEL4 = {
    "base": ("base_journald_system_max_use", "100M", "300M"),
    "postgresql": ("postgresql_max_connections", 150, 160),
    "pgbouncer": ("pgbouncer_max_client_conn", 500, 600),
    "app_service": ("app_service_workers", 3, 4),
    "caddy": ("caddy_acme_email", "group@example.test", "host@example.test"),
    "backups": ("backups_jobs", 3, 4),
}
LEVEL5 = {
    "base": ("base_deploy_user", "hostuser", "extrauser"),
    "postgresql": ("postgresql_memory_mb", 512, 640),
    "pgbouncer": ("pgbouncer_query_wait_timeout", 100, 110),
    "app_service": ("app_service_health_path", "/from-host", "/from-extra"),
    "caddy": ("caddy_log_dir", "/var/log/caddy-host", "/var/log/caddy-extra"),
    "backups": ("backups_format", "directory", "custom"),
}
# The group that runs each role (where a group-level value goes).
GROUP = {"base": "web", "postgresql": "db", "pgbouncer": "app", "app_service": "app", "caddy": "web", "backups": "db"}


def _layers() -> tuple[dict[str, dict], dict]:
    """The layered inventory (levels 2-5) and the extra vars."""
    layers: dict[str, dict] = {"group_vars/all/stack.yml": {}, "host_vars/h1.yml": {}}
    extra = {}
    for role in ROLES:
        var, _, value = LEVEL2[role]
        layers["group_vars/all/stack.yml"][var] = value
        var, below, value = LEVEL3[role]
        layers["group_vars/all/stack.yml"][var] = below
        layers.setdefault(f"group_vars/{GROUP[role]}.yml", {})[var] = value
        var, below, value = LEVEL4[role]
        layers[f"group_vars/{GROUP[role]}.yml"][var] = below
        layers["host_vars/h1.yml"][var] = value
        var, below, value = LEVEL5[role]
        layers["host_vars/h1.yml"][var] = below
        extra[var] = value
    return layers, extra


def _roles_dir(tmp: Path) -> Path:
    """The real roles with their task bodies replaced by the recorder."""
    roles = tmp / "roles"
    roles.mkdir()
    # A role's stamp digests its code with the plugins beside roles/.
    for part in ("filter_plugins", "library"):
        (tmp / part).symlink_to(REPO / part)
    (roles / "stack").symlink_to(REPO / "roles" / "stack")
    for role in ROLES + OTHER_ROLES:
        src, dest = REPO / "roles" / role, roles / role
        (dest / "tasks").mkdir(parents=True)
        for part in ("defaults", "vars", "meta"):
            if (src / part).exists():
                (dest / part).symlink_to(src / part)
        (dest / "tasks" / "main.yml").write_text(RECORDER)
        # The stack's first play creates the database CA through this entry
        # point: here it only sets the fact the real one sets.
        if role == "postgresql":
            (dest / "tasks" / "ca.yml").write_text(
                "---\n- name: Stand in for the CA\n  ansible.builtin.set_fact:\n"
                "    postgresql_tls_ca_certificate: \"-----BEGIN CERTIFICATE-----\\nstub\\n\"\n")
        # The real validate entry points and input checks (and what they
        # include: app_service derives a dir source's release id), except
        # where the checks need a host tool (backups runs systemd-analyze)
        # that a CI machine may lack.
        for pattern in ("validate*.yml", "checks*.yml", "source_dir.yml"):
            for part in (src / "tasks").glob(pattern):
                if role == "backups" and part.name == "checks.yml":
                    (dest / "tasks" / part.name).write_text("---\n[]\n")
                elif part.name == "source_dir.yml":  # the inventory's source is not on disk
                    (dest / "tasks" / part.name).write_text(
                        "---\n- name: Stand in for the release id\n  ansible.builtin.set_fact:\n"
                        "    __app_service_release_id: stub\n")
                else:
                    (dest / "tasks" / part.name).symlink_to(part)
    return roles


def _inventory(tmp: Path, layers: dict[str, dict]) -> Path:
    inv = tmp / "inventory"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "host_vars").mkdir()
    host = {"ansible_connection": "local", "ansible_become": False,
            "ansible_python_interpreter": sys.executable}
    hosts = {"all": {"children": {g: {"hosts": {"h1": host}} for g in ("db", "app", "web")}}}
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (inv / "group_vars" / "all" / "stack.yml").write_text(yaml.safe_dump(STACK))
    for name, values in layers.items():
        path = inv / name
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = yaml.safe_load(path.read_text()) if path.exists() else {}
        path.write_text(yaml.safe_dump({**(existing or {}), **values}))
    return inv


def run_site(tmp: Path, layers: dict[str, dict], *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp / "out"
    out.mkdir()
    env = dict(os.environ,
               ANSIBLE_ROLES_PATH=str(_roles_dir(tmp)),
               ANSIBLE_FILTER_PLUGINS=str(REPO / "filter_plugins"),
               ANSIBLE_LIBRARY=str(REPO / "library"),
               ANSIBLE_LOOKUP_PLUGINS=str(REPO / "lookup_plugins"),
               ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_NOCOLOR="1",
               PRECEDENCE_OUT=str(out))
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(_inventory(tmp, layers)), str(REPO / "playbooks" / "site.yml"),
         *extra],
        capture_output=True, text=True, env=env, cwd=str(tmp), timeout=300, check=False)
    seen = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    return proc, seen


@pytest.fixture(scope="module")
def wired(tmp_path_factory):
    """What every role sees with no override in the inventory."""
    proc, seen = run_site(tmp_path_factory.mktemp("wired"), {})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return seen


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    """What every role sees with overrides at every inventory level and -e."""
    layers, extra = _layers()
    proc, seen = run_site(tmp_path_factory.mktemp("layered"), layers, "-e", json.dumps(extra))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return seen


def _check(seen: dict, table: dict) -> None:
    for role, (var, _, winner) in table.items():
        assert seen[role][var] == winner, (role, var, seen[role][var], winner)


def test_the_roles_own_defaults_differ_from_the_wiring():
    for role, (var, wired_value, default) in WIRED.items():
        assert yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())[var] == default
        assert wired_value != default


def test_stack_wiring_wins_over_role_defaults(wired):
    for role, (var, wired_value, _) in WIRED.items():
        assert wired[role][var] == wired_value, (role, var, wired[role][var], wired_value)
    # The topology of one host in every group.
    assert wired["postgresql"]["postgresql_listen_addresses"] == "localhost"
    assert wired["app_service"]["app_service_bind_address"] == "127.0.0.1"
    assert wired["app_service"]["app_service_db_host"] == "127.0.0.1"
    assert wired["app_service"]["app_service_ip_allow"] == []
    route = wired["caddy"]["caddy_sites"][0]["routes"][-1]["reverse_proxy"]
    assert route["upstreams"] == ["127.0.0.1:8001", "127.0.0.1:8002"]
    # Caddy on 8080/8443 opens those ports; nothing else is needed on one host.
    assert [r["port"] for r in wired["base"]["base_firewall_rules"]] == [8080, 8443]
    assert wired["backups"]["backups_postgresql_port"] == 9991


def test_inventory_group_vars_all_wins_over_the_wiring(layered):
    _check(layered, LEVEL2)


def test_inventory_group_vars_of_a_group_win_over_group_vars_all(layered):
    _check(layered, LEVEL3)
    # Derived values follow what the inventory overrides: Caddy's upstreams
    # follow the app group's ports, backups follow the database port.
    route = layered["caddy"]["caddy_sites"][0]["routes"][-1]["reverse_proxy"]
    assert route["upstreams"] == ["127.0.0.1:9101", "127.0.0.1:9102"]
    assert layered["backups"]["backups_postgresql_port"] == 7001


def test_host_vars_win_over_group_vars_of_a_group(layered):
    _check(layered, LEVEL4)


def test_extra_vars_win_over_host_vars(layered):
    _check(layered, LEVEL5)


@pytest.mark.parametrize("override, message", [
    ({"stack_db_port": 70000}, "stack_db_port (70000)"),
    ({"postgresql_port": 0}, "postgresql_port"),
    ({"app_service_ports": [8001, 8001]}, "app_service_ports"),
    ({"base_firewall_rules": [{"port": 99999}]}, "base_firewall_rules[0]"),
    ({"stack_deploy_webhook": "ftp://hooks.example.test/tok-9d2f"}, "app_service_deploy_webhook: must be an http"),
])
def test_bad_input_fails_before_any_role_runs(tmp_path, override, message):
    proc, seen = run_site(tmp_path, {"group_vars/all/stack.yml": override})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert message in output, output[-3000:]
    # Every role's body records what it sees: none ran.
    assert seen == {}, sorted(seen)


# --- stack_apps: several apps behind one site ---------------------------------

# The same two apps as the filter's unit tests (a Node frontend at /*, the API
# at /api/*), without the API's timer: app_service checks a timer's schedule
# with systemd-analyze on the host, which a CI machine may lack.
from test_stack_apps import TWO_APPS as _FILTER_APPS  # noqa: E402

TWO_APPS = [_FILTER_APPS[0], {k: v for k, v in _FILTER_APPS[1].items() if k != "timers"}]


@pytest.fixture(scope="module")
def two_apps(tmp_path_factory):
    """Two apps of stack_apps, an inventory value for every app, maintenance on."""
    tmp = tmp_path_factory.mktemp("apps")
    proc, seen = run_site(tmp,
                          {"group_vars/all/stack.yml": {"stack_apps": TWO_APPS,
                                                        "stack_maintenance_marker": str(tmp / "maintenance")},
                           "group_vars/app.yml": {"app_service_health_timeout": 99}},
                          "-e", "maintenance=on")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    # The switch is remembered for the next run without -e maintenance.
    assert (tmp / "maintenance").read_text() == "on\n"
    return seen


def test_each_app_of_stack_apps_gets_its_own_settings(two_apps):
    web, api = two_apps["app_service-web"], two_apps["app_service-api"]
    assert (web["app_service_name"], web["app_service_runtime"], web["app_service_ports"]) == ("web", "node", [3001, 3002])
    assert (api["app_service_name"], api["app_service_runtime"], api["app_service_ports"]) == ("api", "python", [8101, 8102])
    assert web["app_service_db_name"] == "" and api["app_service_db_name"] == "demo_db"
    assert api["app_service_db_url_env"] == "SHOP_DSN" and api["app_service_processes"][0]["name"] == "worker"
    assert web["app_service_processes"] == [] and web["app_service_web_command"] == ["npm", "start"]
    # Not Alembic: no revision or schema head command.
    assert api["app_service_revision_command"] == [] and api["app_service_schema_head_command"] == []
    # The inventory's app_service_* values apply to every app.
    assert web["app_service_health_timeout"] == api["app_service_health_timeout"] == 99
    assert "app_service" not in two_apps  # the single-app path did not run


def test_caddy_routes_each_app_and_maintenance_keeps_the_health_paths(two_apps):
    routes = two_apps["caddy"]["caddy_sites"][0]["routes"]
    assert [r.get("path") for r in routes] == [["/api/healthz"], ["/healthz"], None]
    assert routes[0]["reverse_proxy"]["upstreams"] == ["127.0.0.1:8101", "127.0.0.1:8102"]
    assert routes[-1]["respond"]["status"] == 503


@pytest.mark.parametrize("change, message", [
    ({"runtime": "ruby"}, "stack_apps[1].runtime"),
    ({"route": "/*"}, "stack_apps[1].route: '/*' is claimed by stack_apps[0] (web)"),
    ({"ports": [3001, 8102]}, "stack_apps[1].ports: [3001] already used"),
    ({"processes": [{"name": "worker"}]}, "stack_apps[1].processes[0].command"),
])
def test_bad_apps_fail_before_any_role_runs(tmp_path, change, message):
    apps = [TWO_APPS[0], {**TWO_APPS[1], **change}]
    proc, seen = run_site(tmp_path, {"group_vars/all/stack.yml": {"stack_apps": apps}})
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert message in output, output[-3000:]
    assert seen == {}, sorted(seen)


def test_pitr_wiring_follows_the_inventory_and_yields_to_it(wired, tmp_path):
    """backups_pitr_* in the inventory switch the server's WAL archiving on
    (the stack's wiring of postgresql_archive_*); the inventory's own
    postgresql_archive_timeout in group_vars/db wins over that wiring."""
    assert wired["postgresql"]["postgresql_archive_command"] == ""
    layers = {"group_vars/all/stack.yml": {"backups_pitr_enabled": True, "backups_pitr_stanza": "prod",
                                           "backups_pitr_rpo_seconds": 30},
              "group_vars/db.yml": {"postgresql_archive_timeout": 45}}
    proc, seen = run_site(tmp_path, layers)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert seen["postgresql"]["postgresql_archive_command"] == "pgbackrest --stanza=prod archive-push %p"
    assert int(seen["postgresql"]["postgresql_archive_timeout"]) == 45
    assert seen["backups"]["backups_pitr_enabled"] is True
    assert seen["backups"]["backups_pitr_stanza"] == "prod"
    # Without the override the timeout follows the RPO.
    (tmp_path / "rpo").mkdir()
    proc, seen = run_site(tmp_path / "rpo", {"group_vars/all/stack.yml": layers["group_vars/all/stack.yml"]})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert int(seen["postgresql"]["postgresql_archive_timeout"]) == 30


@pytest.mark.parametrize("port", [0, 65536])
def test_a_port_out_of_range_is_refused_before_any_role_runs(tmp_path, port):
    proc, seen = run_site(tmp_path, {}, "-e", json.dumps({"stack_db_port": port}))
    assert proc.returncode != 0
    assert f"stack_db_port ({port})" in proc.stdout, proc.stdout[-3000:]
    assert seen == {}, sorted(seen)


def test_the_stack_inputs_of_later_issues_reach_the_roles_and_yield_to_the_inventory(wired, tmp_path):
    """stack_acme_directory -> caddy_acme_ca; stack_db_readonly_user ->
    app_service_db_console_user (bin/console's psql role); and the role
    variable set in a group's vars wins over that wiring."""
    assert wired["app_service"]["app_service_db_console_user"] == "demo_ro"
    assert wired["caddy"]["caddy_acme_ca"] == ""
    layers = {"group_vars/all/stack.yml": {"stack_acme_directory": "https://acme.example.test/dir"},
              "group_vars/app.yml": {"app_service_db_console_user": "auditor"},
              "group_vars/web.yml": {"base_hardening_banner": "Authorised use only."}}
    proc, seen = run_site(tmp_path, layers)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert seen["caddy"]["caddy_acme_ca"] == "https://acme.example.test/dir"
    assert seen["app_service"]["app_service_db_console_user"] == "auditor"
    assert seen["base"]["base_hardening_banner"] == "Authorised use only."


def test_a_bad_node_build_cache_dir_is_refused_naming_the_variable_before_any_role_runs(tmp_path):
    proc, seen = run_site(tmp_path, {}, "-e", json.dumps({"app_service_node_build_cache_dirs": ["../../etc"]}))
    assert proc.returncode != 0
    assert "app_service_node_build_cache_dirs: each must be a directory relative to the release" in proc.stdout, \
        proc.stdout[-3000:]
    assert seen == {}, sorted(seen)
