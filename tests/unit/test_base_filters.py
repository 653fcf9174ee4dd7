"""Unit tests for filter_plugins/base.py (firewall rule validation and planning)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "filter_plugins"))

from ansible.errors import AnsibleFilterError  # noqa: E402

import base  # noqa: E402

# What `ufw show added` printed on Debian 12 (ufw 0.36.2) for rules the ufw
# module and the role added: the plan's `added` lines must match it exactly.
SHOW_ADDED = """Added user rules (see 'ufw status' for running firewall):
ufw allow 22/tcp comment 'base: ssh'
ufw allow 80/tcp comment 'base: http'
ufw allow 443/tcp comment 'base: https'
ufw allow 443/udp comment 'base: http3'
ufw allow from 172.17.0.11 to any port 9991 proto tcp comment 'postgresql from app hosts'
ufw allow from 192.0.2.0/24 to any port 9991 proto tcp comment 'postgresql from app hosts'
"""

RULES = [{"port": 9991, "proto": "tcp", "from": ["172.17.0.11/32", "192.0.2.0/24"],
          "comment": "postgresql from app hosts"}]


# ------------------------------------------------------------ validation

def test_rule_defaults_and_normalisation():
    rules = base.validate_rules([
        {"port": "5432"},
        {"port": "8000:8010", "proto": "udp", "from": "10.1.0.0/16"},
        {"port": 53, "proto": "any", "from": ["2001:DB8:0:0::1/128", "10.0.0.5/32", "10.0.0.5"]},
    ])
    assert rules == [
        {"port": "5432", "proto": "tcp", "from": ["any"], "comment": ""},
        {"port": "8000:8010", "proto": "udp", "from": ["10.1.0.0/16"], "comment": ""},
        {"port": "53", "proto": "any", "from": ["2001:db8::1", "10.0.0.5"], "comment": ""},
    ]
    assert base.validate_rules(None) == []


@pytest.mark.parametrize("rules, message", [
    ([{"port": 22}, {"port": 70000}], "base_firewall_rules[1]: 'port' 70000 is outside 1-65535"),
    ([{"port": 0}], "base_firewall_rules[0]: 'port' 0 is outside 1-65535"),
    ([{"port": "http"}], "base_firewall_rules[0]: 'port' must be a number or a range"),
    ([{"port": True}], "base_firewall_rules[0]: 'port' must be a number"),
    ([{"port": "9000:8000"}], "must go from a lower to a higher port"),
    ([{"port": "1:70000"}], "is outside 1-65535"),
    ([{"port": "8000:8010", "proto": "any"}], "a port range needs 'proto' tcp or udp"),
    ([{"port": 22, "proto": "icmp"}], "base_firewall_rules[0]: 'proto' 'icmp' is not one of tcp, udp, any"),
    ([{"port": 22, "from": ["10.0.0.300/8"]}],
     "base_firewall_rules[0].from[0]: '10.0.0.300/8' is not a valid IP address or CIDR network"),
    ([{"port": 22, "from": ["10.0.0.0/8", "10.0.0.1/8"]}],
     "base_firewall_rules[0].from[1]: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?"),
    ([{"port": 22, "from": ["10.0.0.0/33"]}], "is not a valid IP address or CIDR network"),
    ([{"port": 22, "from": ["db.example.com"]}], "is not a valid IP address or CIDR network"),
    ([{"port": 22, "from": []}], "base_firewall_rules[0].from: must list at least one source"),
    ([{"port": 22, "from": ["any", "10.0.0.0/8"]}], "'any' cannot be combined with other sources"),
    ([{"port": 22, "from": {"a": 1}}], "must be a list of IP addresses"),
    ([{"port": 22, "comment": "it's"}], "base_firewall_rules[0]: 'comment'"),
    ([{"port": 22, "comment": "x" * 81}], "'comment'"),
    ([{"port": 22, "source": "10.0.0.0/8"}], "unknown key(s) source"),
    ([{"proto": "tcp"}], "base_firewall_rules[0]: 'port' is required"),
    (["22/tcp"], "base_firewall_rules[0]: must be a mapping"),
    ({"port": 22}, "base_firewall_rules: must be a list of rules"),
])
def test_bad_rules_name_the_variable_and_index(rules, message):
    with pytest.raises(AnsibleFilterError) as err:
        base.validate_rules(rules)
    assert message in str(err.value)


# ------------------------------------------------------------------ plan

def test_plan_orders_ssh_first_and_matches_ufw_show_added():
    plan = base.firewall_plan(RULES, ssh_port=22, web=True)
    assert [p["added"] for p in plan] == [
        line[len("ufw "):] for line in SHOW_ADDED.splitlines() if line.startswith("ufw ")]
    assert plan[0]["port"] == "22" and plan[0]["comment"] == "base: ssh"


def test_plan_without_web_and_with_restricted_limited_ssh():
    plan = base.firewall_plan([], ssh_port="2222", ssh_sources=["203.0.113.0/24", "2001:db8::/32"],
                              ssh_limit=True, web=False)
    assert [p["added"] for p in plan] == [
        "limit from 203.0.113.0/24 to any port 2222 proto tcp comment 'base: ssh'",
        "limit from 2001:db8::/32 to any port 2222 proto tcp comment 'base: ssh'",
    ]


def test_plan_web_without_http3_and_duplicates_collapse():
    plan = base.firewall_plan([{"port": 80}, {"port": 53, "proto": "any", "from": ["10.0.0.0/8"]}],
                              web=True, web_http3=False)
    assert [p["added"] for p in plan] == [
        "allow 22/tcp comment 'base: ssh'",
        "allow 80/tcp comment 'base: http'",
        "allow 443/tcp comment 'base: https'",
        "allow from 10.0.0.0/8 to any port 53",
    ]


@pytest.mark.parametrize("kwargs, message", [
    ({"ssh_port": 70000}, "base_firewall_ssh_port: 'port' 70000 is outside 1-65535"),
    ({"ssh_port": "22:23"}, "base_firewall_ssh_port: must be a single port"),
    ({"ssh_sources": ["10.0.0.300"]}, "base_firewall_ssh_sources[0]: '10.0.0.300' is not a valid"),
])
def test_plan_validates_ssh_settings(kwargs, message):
    with pytest.raises(AnsibleFilterError) as err:
        base.firewall_plan([], **kwargs)
    assert message in str(err.value)


# --------------------------------------------------------------- changes

def test_no_changes_when_ufw_has_the_plan():
    plan = base.firewall_plan(RULES, web=True)
    assert base.firewall_changes(SHOW_ADDED, plan) == {"add": [], "delete": []}


def test_changes_on_a_fresh_host_add_everything_in_order():
    plan = base.firewall_plan(RULES, web=True)
    changes = base.firewall_changes("Added user rules (see 'ufw status' for running firewall):\n(None)\n", plan)
    assert changes["delete"] == []
    assert changes["add"][0] == ["allow", "22/tcp", "comment", "base: ssh"]
    assert changes["add"][-1] == ["allow", "from", "192.0.2.0/24", "to", "any", "port", "9991", "proto", "tcp",
                                  "comment", "postgresql from app hosts"]
    assert len(changes["add"]) == 6


def test_stale_rules_are_deleted_and_changed_ones_updated_in_place():
    current = SHOW_ADDED + (
        "ufw allow 12345/tcp\n"
        "ufw route allow from 1.2.3.4\n"
        "ufw allow from 10.9.0.0/16 to any port 9991 proto tcp comment 'old app network'\n")
    plan = base.firewall_plan([{"port": 9991, "from": ["172.17.0.11", "192.0.2.0/24"], "comment": "renamed"}],
                              web=True, ssh_limit=True)
    changes = base.firewall_changes(current, plan)
    # Same port/proto/source with another action or comment: ufw updates it.
    assert ["limit", "22/tcp", "comment", "base: ssh"] in changes["add"]
    assert len(changes["add"]) == 3
    assert changes["delete"] == [
        ["delete", "allow", "12345/tcp"],
        ["route", "delete", "allow", "from", "1.2.3.4"],
        ["delete", "allow", "from", "10.9.0.0/16", "to", "any", "port", "9991", "proto", "tcp",
         "comment", "old app network"],
    ]
    assert base.firewall_changes(current, plan, purge=False)["delete"] == []


def test_changes_refuse_non_text():
    with pytest.raises(AnsibleFilterError):
        base.firewall_changes(None, [])


# -------------------------------------------------------------- lockout

@pytest.mark.parametrize("address, sources, expected", [
    ("203.0.113.7", [], True),
    ("203.0.113.7", ["any"], True),
    ("203.0.113.7", ["203.0.113.0/24"], True),
    ("203.0.113.7", ["198.51.100.0/24", "203.0.113.7"], True),
    ("203.0.113.7", ["198.51.100.0/24"], False),
    ("2001:db8::5", ["2001:db8::/32"], True),
    ("not-an-ip", ["10.0.0.0/8"], False),
])
def test_address_in(address, sources, expected):
    assert base.address_in(address, sources) is expected


def test_filter_module_exports():
    names = base.FilterModule().filters()
    assert set(names) == {"base_firewall_rules_validate", "base_firewall_plan", "base_firewall_changes",
                          "base_address_in", "base_hold_patterns"}


# ------------------------------------------------------------ hold list

def test_hold_patterns_returns_valid_entries():
    entries = ["postgresql-[0-9]+$", "pgbouncer$", "caddy$", r"foo\.bar"]
    assert base.hold_patterns(entries) == entries


@pytest.mark.parametrize("entries, message", [
    ("caddy$", "base_unattended_upgrades_hold: must be a list of regular expressions, got 'caddy$'"),
    (["caddy$", ""], "base_unattended_upgrades_hold[1]: must be a non-empty regular expression, got ''"),
    (["caddy$", 15], "base_unattended_upgrades_hold[1]: must be a non-empty regular expression, got 15"),
    (["postgresql-[0-9+$"], "base_unattended_upgrades_hold[0]: 'postgresql-[0-9+$' is not a regular expression "
                            "(unterminated character set at position 11)"),
    (['caddy"$'], "base_unattended_upgrades_hold[0]: 'caddy\"$' cannot contain a double quote or a line break"),
    (["caddy\n"], "base_unattended_upgrades_hold[0]: 'caddy\\n' cannot contain a double quote or a line break"),
])
def test_hold_patterns_refuses_entries_unattended_upgrades_or_apt_cannot_use(entries, message):
    with pytest.raises(AnsibleFilterError) as err:
        base.hold_patterns(entries)
    assert str(err.value).startswith(message), str(err.value)
