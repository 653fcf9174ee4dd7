"""Unit tests for filter_plugins/stack.py: the stack's host topology."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "filter_plugins"))

import stack  # noqa: E402
from stack import AnsibleFilterError  # noqa: E402


def facts(address):
    return {"ansible_facts": {"default_ipv4": {"address": address}}}


# One host in every group (a single VPS, the sandbox).
SINGLE_GROUPS = {"all": ["vps"], "db": ["vps"], "app": ["vps"], "web": ["vps"]}
SINGLE_VARS = {"vps": facts("203.0.113.10")}

# The split fleet: private addresses set in the inventory for all but app2,
# whose address comes from its facts.
FLEET_GROUPS = {"all": ["db1", "app1", "app2", "web1"], "db": ["db1"], "app": ["app1", "app2"], "web": ["web1"]}
FLEET_VARS = {
    "db1": {"stack_private_address": "10.0.0.21", **facts("203.0.113.21")},
    "app1": {"stack_private_address": "10.0.0.31", **facts("203.0.113.31")},
    "app2": facts("10.0.0.32"),
    "web1": {"stack_private_address": "10.0.0.41", **facts("203.0.113.41")},
}


# --- one host ---------------------------------------------------------------

def test_single_host_everything_is_local():
    assert stack.db_address(SINGLE_VARS, SINGLE_GROUPS, "vps") == "127.0.0.1"
    assert stack.app_bind_address(SINGLE_VARS, SINGLE_GROUPS, "vps") == "127.0.0.1"
    assert stack.listen_addresses(SINGLE_VARS, SINGLE_GROUPS, "vps") == "localhost"
    assert stack.app_ip_allow(SINGLE_VARS, SINGLE_GROUPS, "vps", "127.0.0.1") == []
    assert stack.caddy_upstreams(SINGLE_VARS, SINGLE_GROUPS, "vps", [8001, 8002]) == [
        "127.0.0.1:8001", "127.0.0.1:8002"]


def test_single_host_hba_has_only_local_lines():
    entries = stack.hba_entries(SINGLE_VARS, SINGLE_GROUPS, "vps", "api", "api_owner", "api_app", "api_ro")
    assert [e["type"] for e in entries] == ["local", "host"]
    assert entries[1]["address"] == "127.0.0.1/32"
    assert entries[1]["user"] == ["api_owner", "api_app", "api_ro"]


def test_single_host_firewall_opens_only_non_standard_caddy_ports():
    assert stack.firewall_rules(SINGLE_VARS, SINGLE_GROUPS, "vps", 9991, [8001, 8002], 80, 443) == []
    rules = stack.firewall_rules(SINGLE_VARS, SINGLE_GROUPS, "vps", 9991, [8001, 8002], 8080, 8443)
    assert [(r["port"], "from" in r) for r in rules] == [(8080, False), (8443, False)]


# --- the split fleet ---------------------------------------------------------

def test_fleet_addresses_come_from_the_inventory_or_the_facts():
    assert stack.host_address(FLEET_VARS, "db1") == "10.0.0.21"  # inventory wins over facts
    assert stack.host_address(FLEET_VARS, "app2") == "10.0.0.32"  # facts


def test_fleet_app_hosts_reach_the_database_host():
    assert stack.db_address(FLEET_VARS, FLEET_GROUPS, "app1") == "10.0.0.21"
    assert stack.db_address(FLEET_VARS, FLEET_GROUPS, "db1") == "127.0.0.1"


def test_fleet_app_binds_its_private_address_and_allows_db_and_web():
    assert stack.app_bind_address(FLEET_VARS, FLEET_GROUPS, "app1") == "10.0.0.31"
    allow = stack.app_ip_allow(FLEET_VARS, FLEET_GROUPS, "app1", "10.0.0.31")
    assert allow == ["10.0.0.21/32", "10.0.0.41/32", "10.0.0.31/32"]


def test_fleet_postgresql_listens_privately_and_admits_each_app_host():
    assert stack.listen_addresses(FLEET_VARS, FLEET_GROUPS, "db1") == "localhost,10.0.0.21"
    entries = stack.hba_entries(FLEET_VARS, FLEET_GROUPS, "db1", "api", "api_owner", "api_app", "api_ro")
    remote = [e for e in entries if e.get("address") not in (None, "127.0.0.1/32")]
    assert [e["address"] for e in remote] == ["10.0.0.31/32", "10.0.0.32/32"]
    # The read-only role stays local.
    assert all(e["user"] == ["api_owner", "api_app"] and e["method"] == "scram-sha-256" for e in remote)


def test_fleet_tls_makes_the_remote_lines_hostssl_and_names_the_db_host():
    entries = stack.hba_entries(FLEET_VARS, FLEET_GROUPS, "db1", "api", "api_owner", "api_app", "api_ro", tls=True)
    by_address = {e.get("address"): e["type"] for e in entries}
    assert by_address == {None: "local", "127.0.0.1/32": "host", "10.0.0.31/32": "hostssl", "10.0.0.32/32": "hostssl"}
    assert stack.db_tls_names(FLEET_VARS, "db1") == ["db1", "10.0.0.21", "localhost", "127.0.0.1"]
    assert stack.db_remote(FLEET_GROUPS, "app1") and not stack.db_remote(FLEET_GROUPS, "db1")
    # One host in every group: the app talks to 127.0.0.1, no remote line at all.
    single = stack.hba_entries(SINGLE_VARS, SINGLE_GROUPS, "vps", "api", "api_owner", "api_app", "api_ro", tls=True)
    assert [e["type"] for e in single] == ["local", "host"]
    assert not stack.db_remote(SINGLE_GROUPS, "vps")


def test_fleet_caddy_reaches_every_instance_of_every_app_host():
    assert stack.caddy_upstreams(FLEET_VARS, FLEET_GROUPS, "web1", [8001, 8002]) == [
        "10.0.0.31:8001", "10.0.0.31:8002", "10.0.0.32:8001", "10.0.0.32:8002"]


def test_fleet_upstreams_follow_an_app_hosts_own_ports_and_bind_address():
    hostvars = {**FLEET_VARS,
                "app1": {**FLEET_VARS["app1"], "stack_app_ports": [9001, 9002]},
                "app2": {**FLEET_VARS["app2"], "app_service_ports": [7001, 7002],
                         "app_service_bind_address": "10.9.9.9"}}
    assert stack.caddy_upstreams(hostvars, FLEET_GROUPS, "web1", [8001, 8002]) == [
        "10.0.0.31:9001", "10.0.0.31:9002", "10.9.9.9:7001", "10.9.9.9:7002"]


def test_fleet_firewall_rules_per_host():
    db = stack.firewall_rules(FLEET_VARS, FLEET_GROUPS, "db1", 9991, [8001, 8002], 80, 443)
    assert db == [{"port": 9991, "proto": "tcp", "from": ["10.0.0.31", "10.0.0.32"],
                   "comment": "PostgreSQL from the app hosts"}]
    app = stack.firewall_rules(FLEET_VARS, FLEET_GROUPS, "app1", 9991, [8001, 8002], 80, 443)
    assert [(r["port"], r["from"]) for r in app] == [(8001, ["10.0.0.41"]), (8002, ["10.0.0.41"])]
    assert stack.firewall_rules(FLEET_VARS, FLEET_GROUPS, "web1", 9991, [8001, 8002], 80, 443) == []


def test_app_and_web_on_one_host_with_a_second_web_host_bind_privately():
    groups = {"db": ["db1"], "app": ["aw1"], "web": ["aw1", "web2"]}
    hostvars = {"db1": facts("10.0.0.1"), "aw1": facts("10.0.0.2"), "web2": facts("10.0.0.3")}
    assert stack.app_bind_address(hostvars, groups, "aw1") == "10.0.0.2"
    # Both web hosts reach it on its private address, itself included.
    assert stack.caddy_upstreams(hostvars, groups, "aw1", [8001, 8002]) == ["10.0.0.2:8001", "10.0.0.2:8002"]
    assert stack.caddy_upstreams(hostvars, groups, "web2", [8001, 8002]) == ["10.0.0.2:8001", "10.0.0.2:8002"]


def test_ipv6_private_addresses():
    groups = {"db": ["db1"], "app": ["app1"], "web": ["web1"]}
    hostvars = {"db1": {"stack_private_address": "fd00::21"}, "app1": {"stack_private_address": "fd00::31"},
                "web1": {"stack_private_address": "fd00::41"}}
    assert stack.caddy_upstreams(hostvars, groups, "web1", [8001, 8002]) == ["[fd00::31]:8001", "[fd00::31]:8002"]
    assert stack.app_ip_allow(hostvars, groups, "app1", "fd00::31") == ["fd00::21/128", "fd00::41/128", "fd00::31/128"]


# --- errors that name the variable ---------------------------------------------

def test_unknown_address_names_the_host_and_the_variable():
    hostvars = {**FLEET_VARS, "app2": {}}  # facts not gathered (--limit) and no stack_private_address
    with pytest.raises(AnsibleFilterError, match=r"stack_private_address: the address of app2 is unknown"):
        stack.caddy_upstreams(hostvars, FLEET_GROUPS, "web1", [8001, 8002])


def test_a_private_address_that_is_not_an_ip_is_refused():
    hostvars = {**FLEET_VARS, "db1": {"stack_private_address": "db1.internal"}}
    with pytest.raises(AnsibleFilterError, match=r"stack_private_address: 'db1.internal' \(host db1\)"):
        stack.db_address(hostvars, FLEET_GROUPS, "app1")


def test_a_remote_app_bound_to_loopback_is_refused_for_caddy():
    hostvars = {**FLEET_VARS, "app1": {**FLEET_VARS["app1"], "app_service_bind_address": "127.0.0.1"}}
    with pytest.raises(AnsibleFilterError, match=r"app_service_bind_address: the app on app1 listens on loopback"):
        stack.caddy_upstreams(hostvars, FLEET_GROUPS, "web1", [8001, 8002])


def test_bad_ports_are_refused_naming_the_host():
    hostvars = {**FLEET_VARS, "app1": {**FLEET_VARS["app1"], "app_service_ports": [8001, 70000]}}
    with pytest.raises(AnsibleFilterError, match=r"app_service_ports of app1: port 70000 is outside 1-65535"):
        stack.caddy_upstreams(hostvars, FLEET_GROUPS, "web1", [8001, 8002])


def test_no_database_host():
    with pytest.raises(AnsibleFilterError, match="no host in group 'db'"):
        stack.db_address({}, {"db": [], "app": ["a"], "web": ["a"]}, "a")


def test_undefined_values_count_as_missing():
    class Undefined:  # stands in for Jinja's Undefined inside HostVars
        pass

    class Raising(dict):
        def __getitem__(self, key):
            raise RuntimeError("undefined variable in template")

    hostvars = {"a": {"stack_private_address": Undefined(), **facts("10.1.1.1")},
                "b": Raising(stack_private_address="x", ansible_facts={})}
    assert stack.host_address(hostvars, "a") == "10.1.1.1"
    with pytest.raises(AnsibleFilterError, match="address of b is unknown"):
        stack.host_address(hostvars, "b")


# --- a streaming standby (db_replica) ----------------------------------------

STANDBY_GROUPS = {**FLEET_GROUPS, "all": FLEET_GROUPS["all"] + ["db2"], "db_replica": ["db2"]}
STANDBY_VARS = {**FLEET_VARS, "db2": {"stack_private_address": "10.0.0.22", **facts("203.0.113.22")}}
ROLES = ("app", "app_owner", "app_rw", "app_ro")


def test_standby_replication_line_on_the_primary_for_its_address_only():
    entries = stack.hba_entries(STANDBY_VARS, STANDBY_GROUPS, "db1", *ROLES, tls=True, replication_user="replicator")
    replication = [e for e in entries if e["database"] == "replication"]
    assert replication == [{"type": "hostssl", "database": "replication", "user": "replicator",
                            "address": "10.0.0.22/32", "method": "scram-sha-256",
                            "comment": "streaming replication to the standby db2"}]
    # Without a replication user (or without standbys) there is no such line.
    assert not [e for e in stack.hba_entries(STANDBY_VARS, STANDBY_GROUPS, "db1", *ROLES, tls=True)
                if e["database"] == "replication"]
    assert not [e for e in stack.hba_entries(FLEET_VARS, FLEET_GROUPS, "db1", *ROLES, tls=True,
                                             replication_user="replicator") if e["database"] == "replication"]


def test_standby_gets_the_primarys_app_lines_and_no_line_for_itself():
    primary = stack.hba_entries(STANDBY_VARS, STANDBY_GROUPS, "db1", *ROLES, tls=True, replication_user="replicator")
    standby = stack.hba_entries(STANDBY_VARS, STANDBY_GROUPS, "db2", *ROLES, tls=True, replication_user="replicator")
    assert standby == [e for e in primary if e["database"] != "replication"]


def test_standby_and_primary_listen_privately():
    assert stack.listen_addresses(STANDBY_VARS, STANDBY_GROUPS, "db1") == "localhost,10.0.0.21"
    assert stack.listen_addresses(STANDBY_VARS, STANDBY_GROUPS, "db2") == "localhost,10.0.0.22"
    # A single host with a standby: the primary listens for it.
    groups = {"db": ["vps"], "app": ["vps"], "web": ["vps"], "db_replica": ["db2"]}
    assert stack.listen_addresses({**SINGLE_VARS, **STANDBY_VARS}, groups, "vps") == "localhost,203.0.113.10"


def test_standby_firewall_primary_opens_to_apps_and_standby_standby_to_apps():
    rules = stack.firewall_rules(STANDBY_VARS, STANDBY_GROUPS, "db1", 9991, [8001, 8002], 80, 443)
    assert rules == [{"port": 9991, "proto": "tcp", "from": ["10.0.0.31", "10.0.0.32", "10.0.0.22"],
                      "comment": "PostgreSQL from the app hosts and the standbys"}]
    rules = stack.firewall_rules(STANDBY_VARS, STANDBY_GROUPS, "db2", 9991, [8001, 8002], 80, 443)
    assert rules == [{"port": 9991, "proto": "tcp", "from": ["10.0.0.31", "10.0.0.32"],
                      "comment": "PostgreSQL from the app hosts"}]
    # The web host opens nothing to the standby.
    assert stack.firewall_rules(STANDBY_VARS, STANDBY_GROUPS, "web1", 9991, [8001, 8002], 80, 443) == []


def test_promoted_standby_becomes_the_apps_database():
    assert stack.db_address(STANDBY_VARS, STANDBY_GROUPS, "app1") == "10.0.0.21"
    assert stack.db_address(STANDBY_VARS, STANDBY_GROUPS, "app1", "db1") == "10.0.0.21"
    assert stack.db_address(STANDBY_VARS, STANDBY_GROUPS, "app1", "db2") == "10.0.0.22"
    assert stack.db_address(STANDBY_VARS, STANDBY_GROUPS, "db2", "db2") == "127.0.0.1"
    assert stack.app_ip_allow(STANDBY_VARS, STANDBY_GROUPS, "app1", "10.0.0.31", "db2") == [
        "10.0.0.22/32", "10.0.0.41/32", "10.0.0.31/32"]
    with pytest.raises(AnsibleFilterError, match="stack_db_primary: 'web1' is in neither group db nor db_replica"):
        stack.db_address(STANDBY_VARS, STANDBY_GROUPS, "app1", "web1")


@pytest.mark.parametrize("host, slot", [("fleet-db2", "fleet_db2"), ("DB2.example.com", "db2_example_com"),
                                        ("x" * 70, "x" * 63)])
def test_replication_slot_names(host, slot):
    assert stack.replication_slot(host) == slot


def test_replication_slot_needs_a_usable_name():
    with pytest.raises(AnsibleFilterError, match="no replication slot name"):
        stack.replication_slot("--")


# --- monitoring ---------------------------------------------------------------

MONITORED = dict(FLEET_GROUPS, db_replica=["db2"], monitoring=["web1"])
MONITORED_VARS = dict(FLEET_VARS, db2={"stack_private_address": "10.0.0.22"})
PORTS = {"node": 9100, "postgres": 9187, "caddy": 2020}


def test_one_host_monitoring_stays_on_loopback():
    groups = dict(SINGLE_GROUPS, monitoring=["vps"])
    assert stack.monitoring_address(SINGLE_VARS, groups, "vps") == "127.0.0.1"
    assert stack.monitoring_targets(SINGLE_VARS, groups) == [{"host": "vps", "address": "127.0.0.1", "postgres": True, "pgbouncer": False}]
    assert stack.caddy_metrics_targets(SINGLE_VARS, groups, 2020) == ["127.0.0.1:2020"]
    # Nothing to open: the scraper is the host itself.
    assert stack.firewall_rules(SINGLE_VARS, groups, "vps", 9991, [8001, 8002], 80, 443, PORTS) == []


def test_a_monitoring_host_scrapes_every_host_on_its_private_address():
    assert stack.monitoring_targets(MONITORED_VARS, MONITORED) == [
        {"host": "db1", "address": "10.0.0.21", "postgres": True, "pgbouncer": False},
        {"host": "db2", "address": "10.0.0.22", "postgres": True, "pgbouncer": False},
        {"host": "app1", "address": "10.0.0.31", "postgres": False, "pgbouncer": False},
        {"host": "app2", "address": "10.0.0.32", "postgres": False, "pgbouncer": False},
        {"host": "web1", "address": "10.0.0.41", "postgres": False, "pgbouncer": False}]
    assert stack.monitoring_address(MONITORED_VARS, MONITORED, "web1") == "10.0.0.41"
    assert stack.caddy_metrics_targets(MONITORED_VARS, MONITORED, 2020) == ["10.0.0.41:2020"]
    assert stack.caddy_metrics_targets(MONITORED_VARS, MONITORED, 2020, ["web1"]) == ["10.0.0.41:2020"]


def test_a_host_without_a_known_address_is_left_for_the_monitoring_role_to_refuse():
    hostvars = dict(MONITORED_VARS, app2={})  # no facts, no stack_private_address (promote.yml, --limit)
    targets = stack.monitoring_targets(hostvars, MONITORED)
    assert {"host": "app2", "address": "", "postgres": False, "pgbouncer": False} in targets
    assert [t["address"] for t in targets if t["host"] != "app2"] == ["10.0.0.21", "10.0.0.22", "10.0.0.31", "10.0.0.41"]


def test_monitoring_opens_the_exporters_to_the_monitoring_hosts_only():
    def opened(host):
        rules = stack.firewall_rules(MONITORED_VARS, MONITORED, host, 9991, [8001, 8002], 80, 443, PORTS)
        return {(r["port"], tuple(r["from"])) for r in rules if "monitoring" in r["comment"]}
    web = ("10.0.0.41",)
    assert opened("db1") == {(9100, web), (9187, web)}
    assert opened("db2") == {(9100, web), (9187, web)}
    # web1 reaches the app ports as the web host already: no second rule.
    assert opened("app1") == {(9100, web)}
    alone = dict(MONITORED, monitoring=["mon1"])
    alone_vars = dict(MONITORED_VARS, mon1={"stack_private_address": "10.0.0.51"})
    rules = stack.firewall_rules(alone_vars, alone, "app1", 9991, [8001, 8002], 80, 443, PORTS)
    assert {(r["port"], tuple(r["from"])) for r in rules if "monitoring" in r["comment"]} == {
        (9100, ("10.0.0.51",)), (8001, ("10.0.0.51",)), (8002, ("10.0.0.51",))}
    assert opened("web1") == set()  # the monitoring host scrapes itself
    # The app units admit the monitoring host (their /metrics).
    # The app units admit a monitoring host that is not a web host (their /metrics).
    groups = dict(MONITORED, web=["web9"])
    hostvars = dict(MONITORED_VARS, web9={"stack_private_address": "10.0.0.49"})
    assert stack.app_ip_allow(hostvars, groups, "app1", "10.0.0.31") == [
        "10.0.0.21/32", "10.0.0.49/32", "10.0.0.41/32", "10.0.0.31/32"]


# --- PgBouncer on the app hosts ------------------------------------------------

def debian(major, address):
    return {"ansible_facts": {"default_ipv4": {"address": address}, "distribution": "Debian",
                              "distribution_major_version": str(major)}}


def test_pgbouncer_on_one_host_pools_the_database_over_loopback():
    plan = [{"name": "demo", "database": True, "db_pool_mode": "transaction"}]
    assert stack.pgbouncer_databases(SINGLE_VARS, SINGLE_GROUPS, "vps", plan, "demo", 9991) == [
        {"name": "demo", "host": "127.0.0.1", "port": 9991, "dbname": "demo"}]
    # Every server connection but the reserve, on the one app host.
    assert stack.pgbouncer_pool_size(SINGLE_GROUPS, 100, 20) == 80


def test_pgbouncer_on_the_fleet_reaches_the_primary_and_adds_a_session_alias_when_asked():
    plan = [{"name": "web", "database": False, "db_pool_mode": "session"},
            {"name": "api", "database": True, "db_pool_mode": "session"}]
    assert stack.pgbouncer_databases(FLEET_VARS, FLEET_GROUPS, "app1", plan, "shop", "9991") == [
        {"name": "shop", "host": "10.0.0.21", "port": 9991, "dbname": "shop"},
        {"name": "shop_session", "host": "10.0.0.21", "port": 9991, "dbname": "shop", "pool_mode": "session"}]
    # An app without a database asks for nothing.
    assert len(stack.pgbouncer_databases(FLEET_VARS, FLEET_GROUPS, "app1", plan[:1], "shop", 9991)) == 1
    # After a switchover the pools point at the promoted standby.
    groups = dict(FLEET_GROUPS, db_replica=["db2"])
    hostvars = dict(FLEET_VARS, db2={"stack_private_address": "10.0.0.22"})
    assert stack.pgbouncer_databases(hostvars, groups, "app1", plan[1:], "shop", 9991, "db2")[0]["host"] == "10.0.0.22"
    # Two app hosts share what the server leaves.
    assert stack.pgbouncer_pool_size(FLEET_GROUPS, 100, 20) == 40
    assert stack.pgbouncer_pool_size(FLEET_GROUPS, 10, 20) == 1
    with pytest.raises(AnsibleFilterError, match="stack_db_max_connections"):
        stack.pgbouncer_pool_size(FLEET_GROUPS, "many", 20)


def test_pgbouncer_pools_read_each_app_hosts_own_size():
    hostvars = dict(FLEET_VARS, app1=dict(FLEET_VARS["app1"], pgbouncer_max_db_connections=30))
    assert stack.pgbouncer_pools(hostvars, FLEET_GROUPS, 40) == {"app1": 30, "app2": 40}


def test_the_pgbouncer_exporter_is_scraped_and_opened_where_it_runs():
    """Debian 13's exporter on each app host; Debian 12's does not work with
    its PgBouncer (node exporter carries the pools there)."""
    hostvars = dict(MONITORED_VARS, app1=debian(13, "10.0.0.31"), app2=debian(12, "10.0.0.32"))
    targets = {t["host"]: t["pgbouncer"] for t in stack.monitoring_targets(hostvars, MONITORED, True)}
    assert targets == {"db1": False, "db2": False, "app1": True, "app2": False, "web1": False}
    assert not any(stack.monitoring_targets(hostvars, MONITORED, False)[i]["pgbouncer"] for i in range(5))
    ports = dict(PORTS, pgbouncer=9127)

    def opened(host):
        rules = stack.firewall_rules(hostvars, MONITORED, host, 9991, [8001, 8002], 80, 443, ports)
        return {r["port"] for r in rules if "monitoring" in r["comment"]}
    assert opened("app1") == {9100, 9127}
    assert opened("app2") == {9100}
    assert opened("db1") == {9100, 9187}


def test_the_role_plays_leave_out_only_the_hosts_grouped_unchanged():
    groups = {"db": ["db1", "db2"], "app": ["app1", "db1"], "web": ["web1"], "stack_unchanged": ["db2", "web1"]}
    assert stack.to_converge("db:app:web", groups) == ["db1", "app1"]
    assert stack.to_converge("db_replica:web", groups) == []
    # No host unchanged (the group does not exist): every host of the pattern.
    assert stack.to_converge("db:app", {"db": ["db1"], "app": ["app1"]}) == ["db1", "app1"]
