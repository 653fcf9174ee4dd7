"""Filters for the stack role: the host topology of the whole stack.

Given the inventory's groups (db, app, web), the hosts' variables
(``hostvars``) and the host the wiring is computed for, these functions
derive what the roles need to talk to each other: the database address an
app host uses, the app's bind address and IPAddressAllow list, Caddy's
upstreams, the firewall rules, PostgreSQL's listen addresses and the pg_hba
lines for remote app hosts.

One host can be in every group (a single VPS, the sandbox) or each group can
have hosts of its own (the split fleet). A host's address is its
``stack_private_address`` when set (inventory or the stack role's pinned
value) and otherwise the default IPv4 address from its facts.

The FilterModule at the bottom is a thin map from filter names to the plain
functions above it; tests in tests/unit call the functions directly with
plain dicts for ``hostvars``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - only without ansible installed
    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        """Stand-in when ansible is not importable."""


LOOPBACK = "127.0.0.1"
_MISSING = object()


def _group(groups: Any, name: str) -> list[str]:
    if not isinstance(groups, Mapping):
        raise AnsibleFilterError(f"stack topology: groups must be a mapping, got {type(groups).__name__}")
    members = groups.get(name) or []
    if isinstance(members, str) or not isinstance(members, Sequence):
        raise AnsibleFilterError(f"stack topology: group {name!r} must be a list of host names")
    return [str(m) for m in members]


def _var(hostvars: Any, host: str, name: str) -> Any:
    """A variable of another host as Ansible sees it (inventory, facts, pinned
    wiring), or _MISSING when it is undefined or cannot be templated."""
    try:
        values = hostvars[host]
    except Exception:  # noqa: BLE001 - HostVars raises several kinds for unknown hosts
        return _MISSING
    try:
        if name not in values:
            return _MISSING
        value = values[name]
    except Exception:  # noqa: BLE001 - an undefined variable inside the value's template
        return _MISSING
    if value is None or type(value).__name__.endswith("Undefined"):
        return _MISSING
    return value


def host_address(hostvars: Any, host: str) -> str:
    """The address the other hosts of the stack use to reach ``host``."""
    value = _var(hostvars, host, "stack_private_address")
    if value is _MISSING or str(value).strip() == "":
        facts = _var(hostvars, host, "ansible_facts")
        try:
            value = facts["default_ipv4"]["address"]
        except (KeyError, TypeError):
            raise AnsibleFilterError(
                f"stack_private_address: the address of {host} is unknown: its facts were not gathered "
                f"(a run with --limit that leaves it out?) and its host_vars do not set stack_private_address. "
                f"Run without --limit, or set stack_private_address for {host} in the inventory.") from None
    address = str(value).strip()
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise AnsibleFilterError(
            f"stack_private_address: {address!r} (host {host}) is not an IP address; the firewall and "
            f"pg_hba need one") from None
    return address


def _cidr(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def _others(hosts: list[str], me: str) -> list[str]:
    return [h for h in hosts if h != me]


def _ports(value: Any, where: str) -> list[int]:
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise AnsibleFilterError(f"{where}: must be a list of ports, got {value!r}")
    try:
        ports = [int(p) for p in value]
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"{where}: ports must be integers, got {list(value)!r}") from None
    for port in ports:
        if not 1 <= port <= 65535:
            raise AnsibleFilterError(f"{where}: port {port} is outside 1-65535")
    return ports


def db_address(hostvars: Any, groups: Any, me: str) -> str:
    """The database address for ``me``: loopback on a database host, else the
    first database host's address."""
    dbs = _group(groups, "db")
    if me in dbs:
        return LOOPBACK
    if not dbs:
        raise AnsibleFilterError("stack topology: the inventory has no host in group 'db'")
    return host_address(hostvars, dbs[0])


def app_bind_address(hostvars: Any, groups: Any, me: str) -> str:
    """Where ``me``'s app instances listen: loopback when no other web host
    proxies to them, else the host's private address."""
    if not _others(_group(groups, "web"), me):
        return LOOPBACK
    return host_address(hostvars, me)


def _bind_of(hostvars: Any, groups: Any, host: str) -> str:
    value = _var(hostvars, host, "app_service_bind_address")
    if value is _MISSING or not str(value).strip():
        return app_bind_address(hostvars, groups, host)
    return str(value).strip()


def _ports_of(hostvars: Any, host: str, default_ports: Any) -> list[int]:
    for name in ("app_service_ports", "stack_app_ports"):
        value = _var(hostvars, host, name)
        if value is not _MISSING:
            return _ports(value, f"{name} of {host}")
    return _ports(default_ports, "stack_app_ports")


def caddy_upstreams(hostvars: Any, groups: Any, me: str, default_ports: Any) -> list[str]:
    """Every instance of every app host, as Caddy on ``me`` reaches it.

    ``default_ports`` is used for app hosts whose variables set neither
    app_service_ports nor stack_app_ports (normally the web host's own
    effective stack_app_ports).
    """
    out = []
    for host in _group(groups, "app"):
        bind = _bind_of(hostvars, groups, host)
        if host != me and bind == LOOPBACK:
            raise AnsibleFilterError(
                f"app_service_bind_address: the app on {host} listens on loopback only, so Caddy on {me} "
                f"cannot reach it; bind it to {host}'s private address")
        for port in _ports_of(hostvars, host, default_ports):
            address = f"[{bind}]" if ":" in bind else bind
            out.append(f"{address}:{port}")
    return out


def app_ip_allow(hostvars: Any, groups: Any, me: str, bind_address: str) -> list[str]:
    """The app unit's IPAddressAllow besides localhost: a remote database, the
    remote web hosts, and the host's own address when the app binds to it
    (the health gate asks from the host itself)."""
    addresses = []
    database = db_address(hostvars, groups, me)
    if database != LOOPBACK:
        addresses.append(database)
    addresses += [host_address(hostvars, h) for h in _others(_group(groups, "web"), me)]
    if str(bind_address) not in (LOOPBACK, "::1", "localhost"):
        addresses.append(str(bind_address))
    return list(dict.fromkeys(_cidr(a) for a in addresses))


def listen_addresses(hostvars: Any, groups: Any, me: str) -> str:
    """PostgreSQL's listen_addresses on ``me``: localhost, plus the private
    address when app hosts elsewhere connect."""
    if not _others(_group(groups, "app"), me):
        return "localhost"
    return "localhost," + host_address(hostvars, me)


def hba_entries(hostvars: Any, groups: Any, me: str, database: str, owner: str, app_user: str,
                readonly_user: str) -> list[dict[str, Any]]:
    """pg_hba entries for the stack's database on ``me``: peer for local OS
    users, the app's roles from this host, and the owner and app roles from
    each remote app host's address (the read-only role stays local)."""
    entries: list[dict[str, Any]] = [
        {"type": "local", "database": "all", "user": "all", "method": "peer"},
        {"type": "host", "database": database, "user": [owner, app_user, readonly_user],
         "address": f"{LOOPBACK}/32", "method": "scram-sha-256", "comment": "the app on this host"},
    ]
    for host in _others(_group(groups, "app"), me):
        entries.append({"type": "host", "database": database, "user": [owner, app_user],
                        "address": _cidr(host_address(hostvars, host)), "method": "scram-sha-256",
                        "comment": f"the app on {host}"})
    return entries


def firewall_rules(hostvars: Any, groups: Any, me: str, db_port: Any, app_ports: Any,
                   http_port: Any, https_port: Any) -> list[dict[str, Any]]:
    """ufw rules for ``me`` beyond SSH/HTTP/HTTPS: the database port from the
    remote app hosts, the app ports from the remote web hosts, and Caddy's
    non-standard ports from anywhere (base_firewall_rules format)."""
    rules: list[dict[str, Any]] = []
    if me in _group(groups, "db"):
        apps = _others(_group(groups, "app"), me)
        if apps:
            rules.append({"port": int(db_port), "proto": "tcp",
                          "from": [host_address(hostvars, h) for h in apps],
                          "comment": "PostgreSQL from the app hosts"})
    if me in _group(groups, "app"):
        webs = _others(_group(groups, "web"), me)
        if webs:
            sources = [host_address(hostvars, h) for h in webs]
            for port in _ports(app_ports, "app_service_ports"):
                rules.append({"port": port, "proto": "tcp", "from": sources,
                              "comment": "app instance from the web hosts"})
    if me in _group(groups, "web"):
        for port in (int(http_port), int(https_port)):
            if port not in (80, 443):
                rules.append({"port": port, "proto": "tcp", "comment": "Caddy on a non-standard port"})
    return rules


class FilterModule:
    """Stack topology filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "stack_host_address": host_address,
            "stack_db_address": db_address,
            "stack_app_bind_address": app_bind_address,
            "stack_caddy_upstreams": caddy_upstreams,
            "stack_app_ip_allow": app_ip_allow,
            "stack_listen_addresses": listen_addresses,
            "stack_hba_entries": hba_entries,
            "stack_firewall_rules": firewall_rules,
        }
