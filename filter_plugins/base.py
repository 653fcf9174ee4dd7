"""Filters for the base role: firewall rule validation and planning for ufw,
and the check of the unattended-upgrades hold list.

The role never hands a raw variable to ufw: ``base_firewall_plan`` validates
every rule (port range, protocol, source addresses) and raises an error
naming the variable and index before any task changes the host. The plan is
a flat list, one entry per ufw rule, each with the line ``ufw show added``
prints for it, so ``base_firewall_changes`` can compare the whole rule set
with one ``ufw show added`` and name only the ufw commands that are needed
(missing rules, and rules nobody asked for).

The FilterModule at the bottom is a thin map from filter names to the plain
functions above it; tests in tests/unit call the functions directly.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - only without ansible installed
    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        """Stand-in when ansible is not importable."""


PROTOS = ("tcp", "udp", "any")
RULE_KEYS = ("port", "proto", "from", "comment")
# ufw stores the comment in single quotes; keep it to characters that need
# no quoting anywhere (ufw status, iptables comments, shell).
_COMMENT_RE = re.compile(r"^[A-Za-z0-9 _.,:/()+@=-]{1,80}$")
_PORT_RANGE_RE = re.compile(r"^(\d{1,5}):(\d{1,5})$")
_ANY = ("any", "anywhere", "0.0.0.0/0", "::/0")


def _fail(where: str, msg: str) -> None:
    raise AnsibleFilterError(f"{where}: {msg}")


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, Mapping))


def normalise_port(port: Any, where: str = "port") -> str:
    """Return a port (1-65535) or a range ``low:high`` as ufw writes it."""
    if isinstance(port, bool):
        _fail(where, f"'port' must be a number or a range like 8000:8010, got {port!r}")
    if isinstance(port, int):
        number = port
    elif isinstance(port, str) and port.strip().isdigit():
        number = int(port.strip())
    elif isinstance(port, str) and _PORT_RANGE_RE.match(port.strip()):
        low, high = (int(p) for p in _PORT_RANGE_RE.match(port.strip()).groups())
        for value in (low, high):
            if not 1 <= value <= 65535:
                _fail(where, f"'port' range {port!r} is outside 1-65535")
        if low >= high:
            _fail(where, f"'port' range {port!r} must go from a lower to a higher port")
        return f"{low}:{high}"
    else:
        _fail(where, f"'port' must be a number or a range like 8000:8010, got {port!r}")
    if not 1 <= number <= 65535:
        _fail(where, f"'port' {number} is outside 1-65535")
    return str(number)


def normalise_source(source: Any, where: str) -> str:
    """Return ``any``, an address, or a CIDR network in ufw's canonical form.

    A network with host bits set (10.0.0.1/8) is refused rather than silently
    widened; a /32 (or /128) is written as the plain address, as ufw does.
    """
    if not isinstance(source, str) or not source.strip():
        _fail(where, f"must be an IP address or CIDR network, got {source!r}")
    source = source.strip()
    if source.lower() in _ANY:
        return "any"
    try:
        if "/" in source:
            net = ipaddress.ip_network(source, strict=False)
            if net.network_address != ipaddress.ip_interface(source).ip:
                _fail(where, f"{source!r} has host bits set; did you mean {net}?")
            if net.prefixlen == net.max_prefixlen:
                return str(net.network_address)
            return str(net)
        return str(ipaddress.ip_address(source))
    except ValueError as exc:
        _fail(where, f"{source!r} is not a valid IP address or CIDR network ({exc})")
    return ""  # unreachable


def normalise_sources(sources: Any, where: str) -> list[str]:
    """Validate a list of sources; an empty list is refused (use ['any'])."""
    if isinstance(sources, str):
        sources = [sources]
    if not _is_list(sources):
        _fail(where, f"must be a list of IP addresses or CIDR networks, got {type(sources).__name__}")
    if len(sources) == 0:
        _fail(where, "must list at least one source; use ['any'] to open the port to everyone")
    result: list[str] = []
    for index, source in enumerate(sources):
        norm = normalise_source(source, f"{where}[{index}]")
        if norm not in result:
            result.append(norm)
    if "any" in result and len(result) > 1:
        _fail(where, "'any' cannot be combined with other sources")
    return result


def _comment(comment: Any, where: str) -> str:
    if comment in (None, ""):
        return ""
    if not isinstance(comment, str) or not _COMMENT_RE.match(comment):
        _fail(where, f"'comment' {comment!r} must be 1-80 characters of letters, digits, "
                     "spaces and _.,:/()+@=-")
    return comment


def validate_rules(rules: Any, var: str = "base_firewall_rules") -> list[dict[str, Any]]:
    """Validate firewall rules and return them normalised.

    Each rule is a mapping ``{port, proto, from, comment}``: ``port`` a number
    or ``low:high`` range, ``proto`` tcp (default), udp or any (not with a
    range), ``from`` a list of addresses/CIDR networks (default ``['any']``).
    Raises AnsibleFilterError naming ``var[index]`` for the first bad rule.
    """
    if rules is None:
        return []
    if not _is_list(rules):
        _fail(var, f"must be a list of rules, got {type(rules).__name__}")
    result = []
    for index, rule in enumerate(rules):
        where = f"{var}[{index}]"
        if not isinstance(rule, Mapping):
            _fail(where, f"must be a mapping with keys {', '.join(RULE_KEYS)}, got {type(rule).__name__}")
        unknown = sorted(str(k) for k in set(rule) - set(RULE_KEYS))
        if unknown:
            _fail(where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(RULE_KEYS)}")
        if "port" not in rule:
            _fail(where, "'port' is required")
        port = normalise_port(rule["port"], where)
        proto = rule.get("proto", "tcp")
        if proto not in PROTOS:
            _fail(where, f"'proto' {proto!r} is not one of {', '.join(PROTOS)}")
        if ":" in port and proto == "any":
            _fail(where, "a port range needs 'proto' tcp or udp")
        sources = normalise_sources(rule.get("from", ["any"]), f"{where}.from")
        result.append({"port": port, "proto": proto, "from": sources,
                       "comment": _comment(rule.get("comment"), where)})
    return result


def added_line(action: str, port: str, proto: str, source: str, comment: str = "") -> str:
    """The line ``ufw show added`` prints for a rule (without the leading 'ufw ')."""
    if source == "any":
        parts = [action, port if proto == "any" else f"{port}/{proto}"]
    else:
        parts = [action, "from", source, "to", "any", "port", port]
        if proto != "any":
            parts += ["proto", proto]
    if comment:
        parts.append(f"comment '{comment}'")
    return " ".join(parts)


def firewall_plan(rules: Any, ssh_port: Any = 22, ssh_sources: Any = None, ssh_limit: bool = False,
                  web: bool = False, web_http3: bool = True) -> list[dict[str, str]]:
    """Every ufw rule the role manages, in the order they are added.

    SSH comes first (so it is allowed before the firewall is enabled), then
    HTTP/HTTPS (and 443/udp for HTTP/3) when ``web``, then ``rules``. Each
    entry has ``rule`` (allow or limit), ``port``, ``proto``, ``from``,
    ``comment`` and ``added`` (the canonical ``ufw show added`` line).
    """
    port = normalise_port(ssh_port, "base_firewall_ssh_port")
    if ":" in port:
        _fail("base_firewall_ssh_port", "must be a single port")
    wanted = [{"rule": "limit" if ssh_limit else "allow", "port": port, "proto": "tcp",
               "from": normalise_sources(ssh_sources if ssh_sources else ["any"], "base_firewall_ssh_sources"),
               "comment": "base: ssh"}]
    if web:
        wanted.append({"rule": "allow", "port": "80", "proto": "tcp", "from": ["any"], "comment": "base: http"})
        wanted.append({"rule": "allow", "port": "443", "proto": "tcp", "from": ["any"], "comment": "base: https"})
        if web_http3:
            wanted.append({"rule": "allow", "port": "443", "proto": "udp", "from": ["any"],
                           "comment": "base: http3"})
    wanted += [dict(r, rule="allow") for r in validate_rules(rules)]
    plan: list[dict[str, str]] = []
    seen: set[tuple[str, str, str]] = set()
    for entry in wanted:
        for source in entry["from"]:
            key = (entry["port"], entry["proto"], source)
            if key in seen:
                # ufw keeps one rule per port/proto/source: a second one would
                # only rewrite the comment on every run.
                continue
            seen.add(key)
            plan.append({
                "rule": entry["rule"], "port": entry["port"], "proto": entry["proto"], "from": source,
                "comment": entry["comment"],
                "added": added_line(entry["rule"], entry["port"], entry["proto"], source, entry["comment"]),
            })
    return plan


def _rule_key(args: list[str]) -> tuple[str, ...]:
    """What ufw keeps one rule per: the rule without its action and comment."""
    key = list(args)
    if "comment" in key:
        key = key[:key.index("comment")]
    offset = 1 if key and key[0] == "route" else 0
    del key[offset:offset + 1]  # allow | deny | reject | limit
    return tuple(key)


def firewall_changes(show_added: Any, plan: Any, purge: bool = True) -> dict[str, list[list[str]]]:
    """The ufw commands that turn the rules present into ``plan``.

    ``show_added`` is the output of ``ufw show added``, whose rule lines are
    ufw commands. Returns ``{'add': [...], 'delete': [...]}``, each a list of
    ufw argument lists: ``add`` for planned rules missing or differing in
    action or comment (ufw updates those in place), ``delete`` (only with
    ``purge``) for rules present that the plan does not describe at all.
    """
    if not isinstance(show_added, str):
        raise AnsibleFilterError("base_firewall_changes: expected the text of 'ufw show added'")
    present = [shlex.split(line.strip()[len("ufw "):]) for line in show_added.splitlines()
               if line.strip().startswith("ufw ")]
    present_set = {tuple(args) for args in present}
    wanted = [shlex.split(entry["added"]) for entry in plan or []]
    wanted_keys = {_rule_key(args) for args in wanted}
    add = [args for args in wanted if tuple(args) not in present_set]
    delete = []
    if purge:
        for args in present:
            if _rule_key(args) in wanted_keys:
                continue
            if args and args[0] == "route":
                delete.append(["route", "delete", *args[1:]])
            else:
                delete.append(["delete", *args])
    return {"add": add, "delete": delete}


def address_in(address: Any, sources: Any) -> bool:
    """True when ``address`` lies in one of ``sources`` (or sources allow any)."""
    if not sources:
        return True
    try:
        ip = ipaddress.ip_address(str(address).strip())
    except ValueError:
        return False
    for source in sources:
        norm = normalise_source(source, "base_firewall_ssh_sources")
        if norm == "any":
            return True
        if ip in ipaddress.ip_network(norm, strict=False):
            return True
    return False


def hold_patterns(patterns: Any, var: str = "base_unattended_upgrades_hold") -> list[str]:
    """Return ``patterns`` when each is one Unattended-Upgrade::Package-Blacklist
    entry: a non-empty Python regular expression (unattended-upgrades calls
    ``re.match`` with it, and stops with a traceback, upgrading nothing, on one
    that does not compile) that an apt configuration string can carry (no
    double quote, no line break). The error names the variable and index."""
    if not _is_list(patterns):
        _fail(var, f"must be a list of regular expressions, got {patterns!r}")
    checked = []
    for index, pattern in enumerate(patterns):
        where = f"{var}[{index}]"
        if not isinstance(pattern, str) or not pattern.strip():
            _fail(where, f"must be a non-empty regular expression, got {pattern!r}")
        if '"' in pattern or "\n" in pattern or "\r" in pattern:
            _fail(where, f"{pattern!r} cannot contain a double quote or a line break (apt configuration string)")
        try:
            re.compile(pattern)
        except re.error as exc:
            _fail(where, f"{pattern!r} is not a regular expression ({exc})")
        checked.append(str(pattern))
    return checked


class FilterModule:
    """Ansible filter map for the base role."""

    def filters(self) -> dict[str, Any]:
        return {
            "base_firewall_rules_validate": validate_rules,
            "base_firewall_plan": firewall_plan,
            "base_firewall_changes": firewall_changes,
            "base_address_in": address_in,
            "base_hold_patterns": hold_patterns,
        }
