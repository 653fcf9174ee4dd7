"""Filters for the postgresql role: pg_hba validation and rendering, memory
tuning from the host's RAM, and connection URLs.

The FilterModule at the bottom is a thin map from filter names to the plain
functions above it; tests in tests/unit call the functions directly.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - only without ansible installed
    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        """Stand-in when ansible is not importable."""


# --------------------------------------------------------------------------
# pg_hba.conf
# --------------------------------------------------------------------------

HBA_TYPES = ("local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc")
# Authentication methods PostgreSQL 13+ accepts in pg_hba.conf.
HBA_METHODS = (
    "trust", "reject", "scram-sha-256", "md5", "password", "gss", "sspi",
    "ident", "peer", "ldap", "radius", "cert", "pam", "bsd",
)
# Methods that send or accept no real credential over the network.
HBA_INSECURE_NETWORK_METHODS = ("trust", "password")
HBA_KEYS = ("type", "database", "user", "address", "method", "options", "comment")
HBA_SPECIAL_ADDRESSES = ("all", "samehost", "samenet")
_HOSTNAME_RE = re.compile(
    r"^\.?(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_NAME_RE = re.compile(r'^(\+|@)?([A-Za-z0-9_][A-Za-z0-9_$.-]*|"[^"\n]+")$')
_OPTION_KEY_RE = re.compile(r"^[a-z_][a-z0-9_]*$")


def _fail(var: str, msg: str) -> None:
    raise AnsibleFilterError(f"{var}: {msg}")


def _as_names(value: Any, where: str, field: str) -> list[str]:
    """Normalise a database/user field (string, comma list or list) to names."""
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, Sequence):
        items = [str(v).strip() for v in value]
    else:
        _fail(where, f"'{field}' must be a string or a list of names, got {type(value).__name__}")
    if not items or any(not i for i in items):
        _fail(where, f"'{field}' must not be empty or contain empty names")
    for item in items:
        if not _NAME_RE.match(item):
            _fail(where, f"'{field}' has an invalid name {item!r}")
    return items


def _normalise_address(address: Any, where: str) -> str:
    if not isinstance(address, str) or not address.strip():
        _fail(where, "'address' is required for host* lines (CIDR like 10.0.0.0/24, 'samenet', 'all' or a host name)")
    address = address.strip()
    if address in HBA_SPECIAL_ADDRESSES:
        return address
    looks_ip = bool(re.match(r"^[0-9.]+(/\d+)?$", address)) or ":" in address
    if looks_ip:
        try:
            if "/" in address:
                net = ipaddress.ip_network(address, strict=True)
            else:
                ip = ipaddress.ip_address(address)
                net = ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")
        except ValueError as exc:
            _fail(where, f"'address' {address!r} is not a valid IP address or CIDR network ({exc})")
        return str(net)
    if _HOSTNAME_RE.match(address):
        return address
    _fail(where, f"'address' {address!r} is neither a CIDR network, a special keyword nor a host name")
    return ""  # unreachable


def _render_options(options: Any, where: str) -> str:
    if options in (None, "", {}):
        return ""
    if isinstance(options, str):
        if "\n" in options or "#" in options:
            _fail(where, "'options' must be a single line without '#'")
        return options.strip()
    if isinstance(options, Mapping):
        parts = []
        for key, val in options.items():
            if not _OPTION_KEY_RE.match(str(key)):
                _fail(where, f"'options' has an invalid key {key!r}")
            sval = str(val)
            if any(c in sval for c in "\n#"):
                _fail(where, f"'options.{key}' must be a single line without '#'")
            if " " in sval or "," in sval:
                sval = '"' + sval.replace('"', '\\"') + '"'
            parts.append(f"{key}={sval}")
        return " ".join(parts)
    _fail(where, "'options' must be a string or a mapping")
    return ""  # unreachable


def hba_validate(entries: Any, allow_insecure: bool = False,
                 var: str = "postgresql_hba_entries") -> list[dict[str, Any]]:
    """Validate pg_hba entries and return them normalised.

    Each entry is a mapping with keys type, database, user, address (host*
    lines only), method, options and comment. Raises AnsibleFilterError naming
    ``var[index]`` and the problem for the first bad entry. ``trust`` and
    ``password`` are refused on network lines unless ``allow_insecure``.
    """
    if entries is None:
        return []
    if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence):
        _fail(var, f"must be a list of entries, got {type(entries).__name__}")
    result = []
    for index, entry in enumerate(entries):
        where = f"{var}[{index}]"
        if not isinstance(entry, Mapping):
            _fail(where, f"must be a mapping, got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(HBA_KEYS))
        if unknown:
            _fail(where, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(HBA_KEYS)}")
        etype = entry.get("type", "host")
        if etype not in HBA_TYPES:
            _fail(where, f"'type' {etype!r} is not one of {', '.join(HBA_TYPES)}")
        method = entry.get("method")
        if method not in HBA_METHODS:
            _fail(where, f"'method' {method!r} is not one of {', '.join(HBA_METHODS)}")
        if etype != "local" and method in HBA_INSECURE_NETWORK_METHODS and not allow_insecure:
            _fail(where, f"method '{method}' on a network line is refused; use scram-sha-256, "
                         "or set postgresql_hba_allow_insecure_methods: true if you really mean it")
        if etype == "local" and method in ("ident",):
            _fail(where, "method 'ident' is for network lines; use 'peer' on local lines")
        if etype == "local" and entry.get("address") not in (None, ""):
            _fail(where, "'address' must be empty for type 'local'")
        for field in ("database", "user"):
            if field not in entry:
                _fail(where, f"'{field}' is required")
        norm = {
            "type": etype,
            "database": ",".join(_as_names(entry["database"], where, "database")),
            "user": ",".join(_as_names(entry["user"], where, "user")),
            "address": "" if etype == "local" else _normalise_address(entry.get("address"), where),
            "method": method,
            "options": _render_options(entry.get("options"), where),
            "comment": "",
        }
        comment = entry.get("comment")
        if comment not in (None, ""):
            if not isinstance(comment, str) or "\n" in comment:
                _fail(where, "'comment' must be a single line of text")
            norm["comment"] = comment.strip()
        result.append(norm)
    return result


def hba_render(entries: Any, allow_insecure: bool = False, superuser: str = "postgres",
               var: str = "postgresql_hba_entries") -> str:
    """Render a whole pg_hba.conf body from entries (validated first).

    The postgres superuser's local peer line always comes first so the role
    (and an operator with sudo) can never lock itself out.
    """
    rules = [{"type": "local", "database": "all", "user": superuser, "address": "",
              "method": "peer", "options": "", "comment": "Superuser over the unix socket, OS user must match"}]
    rules += hba_validate(entries, allow_insecure=allow_insecure, var=var)
    widths = {
        key: max(len(r[key]) for r in rules) for key in ("type", "database", "user", "address")
    }
    lines = []
    for rule in rules:
        if rule["comment"]:
            lines.append(f"# {rule['comment']}")
        cols = [rule["type"].ljust(widths["type"]), rule["database"].ljust(widths["database"]),
                rule["user"].ljust(widths["user"]), rule["address"].ljust(widths["address"]),
                rule["method"]]
        if rule["options"]:
            cols.append(rule["options"])
        lines.append("  ".join(cols).rstrip())
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# Memory tuning
# --------------------------------------------------------------------------

def _mb(value: int) -> str:
    return f"{int(value)}MB"


def memory_tuning(total_mb: Any, max_connections: Any = 100) -> dict[str, str]:
    """PostgreSQL memory settings sized from the host's RAM in MiB.

    shared_buffers about 25% of RAM (capped at 16 GiB), effective_cache_size
    about 75%, maintenance_work_mem RAM/16 (64 MiB..2 GiB) and work_mem such
    that max_connections sorts of a few nodes each fit beside the buffers
    (4 MiB..64 MiB).
    """
    try:
        total = int(total_mb)
        conns = int(max_connections)
    except (TypeError, ValueError):
        raise AnsibleFilterError(
            f"postgresql memory tuning: total_mb ({total_mb!r}) and max_connections "
            f"({max_connections!r}) must be integers") from None
    if total < 256:
        raise AnsibleFilterError(f"postgresql memory tuning: total_mb must be at least 256, got {total}")
    if conns < 1:
        raise AnsibleFilterError(f"postgresql memory tuning: max_connections must be positive, got {conns}")
    shared = min(total // 4, 16384)
    effective = total * 3 // 4
    maintenance = max(64, min(total // 16, 2048))
    work = (total - shared) // (conns * 3)
    work = max(4, min(work, 64))
    return {
        "shared_buffers": _mb(shared),
        "effective_cache_size": _mb(effective),
        "maintenance_work_mem": _mb(maintenance),
        "work_mem": _mb(work),
    }


# --------------------------------------------------------------------------
# Checks before the host is touched: listen addresses, memory
# --------------------------------------------------------------------------

_LOOPBACK_NETS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_WILDCARDS = ("*", "0.0.0.0", "::")


def listen_addresses_check(value: Any, host_addresses: Any = None,
                           var: str = "postgresql_listen_addresses") -> str:
    """Check listen_addresses before PostgreSQL sees it; return it normalised.

    ``value`` is a comma-separated string or a list of ``*``, ``localhost``,
    IP addresses and host names. IP addresses must be addresses of this host
    (``host_addresses``, from its facts; loopback and the wildcards always
    are): PostgreSQL refuses to start when it cannot bind any of them, and a
    reload does not tell. Host names are checked for their form only.
    """
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, Sequence):
        items = [str(v).strip() for v in value]
    else:
        _fail(var, f"must be a comma-separated string or a list, got {type(value).__name__}")
    if not items or any(not i for i in items):
        _fail(var, f"{value!r} has an empty entry")
    own = set()
    for address in host_addresses or []:
        try:
            own.add(ipaddress.ip_address(str(address).split("%")[0]))
        except ValueError:
            continue
    for item in items:
        if item in _WILDCARDS or item == "localhost":
            continue
        try:
            ip = ipaddress.ip_address(item)
        except ValueError:
            if not _HOSTNAME_RE.match(item) or item.startswith(".") or re.match(r"^[0-9.]+$", item):
                _fail(var, f"{item!r} is neither '*', 'localhost', an IP address nor a host name")
            continue
        if host_addresses is not None and ip not in own and not any(ip in net for net in _LOOPBACK_NETS):
            _fail(var, f"{item} is not an address of this host (its addresses: "
                       f"{', '.join(sorted(str(a) for a in own)) or 'none known'}); PostgreSQL could not bind it")
    return ",".join(items)


_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|kB|MB|GB|TB)?\s*$")
_SIZE_KB = {"B": 1 / 1024, "kB": 1, "MB": 1024, "GB": 1024 ** 2, "TB": 1024 ** 3}


def memory_to_mb(value: Any, unit_kb: int = 8, var: str = "postgresql_config") -> float:
    """A PostgreSQL memory setting in MiB. A bare number counts in the
    parameter's own unit (``unit_kb`` kB: 8 for shared_buffers)."""
    if isinstance(value, bool):
        _fail(var, f"{value!r} is not a memory size")
    if isinstance(value, (int, float)):
        return float(value) * unit_kb / 1024
    match = _SIZE_RE.match(str(value))
    if not match:
        _fail(var, f"{value!r} is not a memory size (a number with kB, MB, GB or TB)")
    number, unit = int(match.group(1)), match.group(2)
    return number * (_SIZE_KB[unit] if unit else unit_kb) / 1024


def memory_check(config: Any, total_mb: Any, memory_mb: Any, overrides: Any = None,
                 max_share: float = 0.75) -> dict[str, Any]:
    """Check the memory PostgreSQL allocates at start against the host's RAM.

    ``config`` is the effective configuration, ``total_mb`` the host's RAM,
    ``memory_mb`` the RAM the settings were sized from
    (postgresql_memory_mb) and ``overrides`` postgresql_config. Fails naming
    the variable when postgresql_memory_mb exceeds the RAM, or when
    shared_buffers would take more than ``max_share`` of it (PostgreSQL
    cannot allocate it, or starves the OS). Returns ``config``.
    """
    try:
        total = int(total_mb)
        sized = int(memory_mb)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"postgresql_memory_mb: {memory_mb!r} is not a number of MiB") from None
    if sized > total:
        _fail("postgresql_memory_mb", f"{sized} MiB is more than this host's {total} MiB of RAM")
    overrides = overrides or {}
    where = "postgresql_config.shared_buffers" if "shared_buffers" in overrides else "postgresql_memory_mb"
    shared = memory_to_mb(config.get("shared_buffers", "128MB"), 8, where)
    if shared > total * max_share:
        _fail(where, f"shared_buffers {config.get('shared_buffers')} is {shared / total:.0%} of this host's "
                     f"{total} MiB of RAM; PostgreSQL would fail to allocate it or starve the system "
                     f"(at most {max_share:.0%})")
    return config


# --------------------------------------------------------------------------
# Connection URLs
# --------------------------------------------------------------------------

URL_DRIVERS = (
    "postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2",
    "postgresql+asyncpg", "postgresql+pg8000",
)


def connection_url(user: Any, password: Any = None, host: Any = "127.0.0.1", port: Any = 5432,
                   database: Any = None, driver: str = "postgresql",
                   params: Mapping[str, Any] | None = None) -> str:
    """Build ``driver://user:password@host:port/database?params``.

    User, password and database are percent-encoded so any character is
    safe; IPv6 hosts are bracketed; a unix socket directory (a host starting
    with '/') moves into the ``host`` query parameter as libpq expects.
    """
    if driver not in URL_DRIVERS:
        raise AnsibleFilterError(f"connection URL: driver {driver!r} is not one of {', '.join(URL_DRIVERS)}")
    if not isinstance(user, str) or not user:
        raise AnsibleFilterError("connection URL: user must be a non-empty string")
    try:
        port_num = int(port)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"connection URL: port {port!r} is not a number") from None
    if not 1 <= port_num <= 65535:
        raise AnsibleFilterError(f"connection URL: port {port_num} is out of range 1-65535")
    query: dict[str, str] = {str(k): str(v) for k, v in (params or {}).items()}
    host = "" if host is None else str(host)
    if host.startswith("/"):
        query = {"host": host, **query}
        netloc_host = ""
    elif ":" in host and not host.startswith("["):
        netloc_host = f"[{host}]"
    else:
        netloc_host = host
    auth = quote(user, safe="")
    if password not in (None, ""):
        auth += ":" + quote(str(password), safe="")
    url = f"{driver}://{auth}@{netloc_host}:{port_num}"
    if database not in (None, ""):
        url += "/" + quote(str(database), safe="")
    if query:
        url += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='/')}" for k, v in query.items())
    return url


# --------------------------------------------------------------------------
# TLS: the server certificate's subjectAltName
# --------------------------------------------------------------------------

def tls_sans(names: Any, var: str = "postgresql_tls_names") -> list[str]:
    """subjectAltName entries for a list of host names and IP addresses:
    ``IP:<address>`` (compressed form) for an address, ``DNS:<name>`` else."""
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise AnsibleFilterError(f"{var}: expects a non-empty list of host names and IP addresses, got {names!r}")
    out: list[str] = []
    for name in names:
        text = str(name).strip()
        try:
            entry = f"IP:{ipaddress.ip_address(text)}"
        except ValueError:
            if not _HOSTNAME_RE.match(text.lstrip("*.")):
                raise AnsibleFilterError(f"{var}: {text!r} is neither a host name nor an IP address") from None
            entry = f"DNS:{text.lower()}"
        if entry not in out:
            out.append(entry)
    return out


def tls_sans_match(openssl_line: Any, names: Any, var: str = "postgresql_tls_names") -> bool:
    """True when ``openssl x509 -noout -ext subjectAltName``'s last line (e.g.
    ``DNS:db1, IP Address:10.0.0.5, IP Address:0:0:0:0:0:0:0:1``) names
    exactly ``names``; False for empty output (no valid certificate)."""
    text = str(openssl_line or "").strip()
    if not text:
        return False
    found = set()
    for item in text.split(","):
        kind, _, value = item.strip().partition(":")
        if kind == "IP Address":
            try:
                found.add(f"IP:{ipaddress.ip_address(value.strip())}")
            except ValueError:
                return False
        elif kind == "DNS":
            found.add(f"DNS:{value.strip().lower()}")
        else:
            return False
    return found == set(tls_sans(names, var))


def per_database(argv: Any, databases: Any) -> list[list[str]]:
    """``argv`` once per database, each with ``-d <database>`` appended (a
    database listed twice runs once)."""
    if isinstance(argv, str) or not isinstance(argv, Sequence):
        raise AnsibleFilterError("postgresql_per_database: argv must be a list")
    if isinstance(databases, str) or not isinstance(databases, Sequence):
        raise AnsibleFilterError("postgresql_per_database: databases must be a list of names")
    return [[str(a) for a in argv] + ["-d", str(db)] for db in dict.fromkeys(str(d) for d in databases)]


class FilterModule:
    """Ansible filter map for the postgresql role."""

    def filters(self) -> dict[str, Any]:
        return {
            "postgresql_hba_validate": hba_validate,
            "postgresql_hba_render": hba_render,
            "postgresql_memory_tuning": memory_tuning,
            "postgresql_url": connection_url,
            "postgresql_tls_sans": tls_sans,
            "postgresql_tls_sans_match": tls_sans_match,
            "postgresql_listen_addresses_check": listen_addresses_check,
            "postgresql_memory_check": memory_check,
            "postgresql_per_database": per_database,
        }
