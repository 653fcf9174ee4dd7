"""Filters for the stack role: the host topology of the whole stack.

Given the inventory's groups (db, app, web, and db_replica for streaming
standbys of the first db host), the hosts' variables
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
import re
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


def db_address(hostvars: Any, groups: Any, me: str, primary: Any = None) -> str:
    """The database address for ``me``: loopback on a database host, else the
    primary's address. ``primary`` (stack_db_primary) names the inventory host
    the apps use; empty or None means the first db host. playbooks/promote.yml
    sets it to the promoted standby."""
    dbs = _group(groups, "db")
    if primary not in (None, ""):
        primary = str(primary)
        if primary not in dbs + _group(groups, "db_replica"):
            raise AnsibleFilterError(
                f"stack_db_primary: {primary!r} is in neither group db nor db_replica")
        return LOOPBACK if me == primary else host_address(hostvars, primary)
    if me in dbs:
        return LOOPBACK
    if not dbs:
        raise AnsibleFilterError("stack topology: the inventory has no host in group 'db'")
    return host_address(hostvars, dbs[0])


def replication_slot(host: Any) -> str:
    """The physical replication slot of the standby ``host`` on the primary:
    its inventory name in lower case with every character outside [a-z0-9_]
    replaced by '_' (PostgreSQL's rule for slot names), at most 63 long."""
    name = re.sub(r"[^a-z0-9_]", "_", str(host).lower())[:63]
    if not name.strip("_"):
        raise AnsibleFilterError(f"stack topology: no replication slot name can be made from host {host!r}")
    return name


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


def caddy_upstreams(hostvars: Any, groups: Any, me: str, default_ports: Any, fixed: bool = False) -> list[str]:
    """Every instance of every app host, as Caddy on ``me`` reaches it.

    ``default_ports`` is used for app hosts whose variables set neither
    app_service_ports nor stack_app_ports (normally the web host's own
    effective stack_app_ports); with ``fixed`` (an app of stack_apps) it is
    used for every app host.
    """
    out = []
    for host in _group(groups, "app"):
        bind = _bind_of(hostvars, groups, host)
        if host != me and bind == LOOPBACK:
            raise AnsibleFilterError(
                f"app_service_bind_address: the app on {host} listens on loopback only, so Caddy on {me} "
                f"cannot reach it; bind it to {host}'s private address")
        ports = _ports(default_ports, "stack_apps ports") if fixed else _ports_of(hostvars, host, default_ports)
        for port in ports:
            address = f"[{bind}]" if ":" in bind else bind
            out.append(f"{address}:{port}")
    return out


def app_ip_allow(hostvars: Any, groups: Any, me: str, bind_address: str, primary: Any = None) -> list[str]:
    """The app unit's IPAddressAllow besides localhost: a remote database (the
    ``primary``, see db_address), the remote web hosts and monitoring hosts
    (the app's metrics), and the host's own address when the app binds to it
    (the health gate asks from the host itself)."""
    addresses = []
    database = db_address(hostvars, groups, me, primary)
    if database != LOOPBACK:
        addresses.append(database)
    addresses += [host_address(hostvars, h) for h in _others(_group(groups, "web") + _group(groups, "monitoring"), me)]
    if str(bind_address) not in (LOOPBACK, "::1", "localhost"):
        addresses.append(str(bind_address))
    return list(dict.fromkeys(_cidr(a) for a in addresses))


def listen_addresses(hostvars: Any, groups: Any, me: str) -> str:
    """PostgreSQL's listen_addresses on ``me``: localhost, plus the private
    address when app hosts or standbys elsewhere connect (a standby listens
    like its primary: the apps connect to it once it is promoted)."""
    if not _others(_group(groups, "app") + _group(groups, "db_replica"), me):
        return "localhost"
    return "localhost," + host_address(hostvars, me)


def hba_entries(hostvars: Any, groups: Any, me: str, database: str, owner: str, app_user: str,
                readonly_user: str, tls: bool = False, replication_user: Any = None) -> list[dict[str, Any]]:
    """pg_hba entries for the stack's database on ``me``: peer for local OS
    users, the app's roles from this host, and the owner and app roles from
    each remote app host's address (the read-only role stays local). With
    ``tls`` the remote lines are ``hostssl``: a plain-text connection from
    another host finds no line and is refused. With ``replication_user``, a
    ``replication`` line for that role from each standby (group db_replica)
    other than ``me``, for its address only. A standby gets the same lines as
    its primary, so the apps can connect once it is promoted."""
    remote_type = "hostssl" if tls else "host"
    entries: list[dict[str, Any]] = [
        {"type": "local", "database": "all", "user": "all", "method": "peer"},
        {"type": "host", "database": database, "user": [owner, app_user, readonly_user],
         "address": f"{LOOPBACK}/32", "method": "scram-sha-256", "comment": "the app on this host"},
    ]
    for host in _others(_group(groups, "app"), me):
        entries.append({"type": remote_type, "database": database, "user": [owner, app_user],
                        "address": _cidr(host_address(hostvars, host)), "method": "scram-sha-256",
                        "comment": f"the app on {host}"})
    if replication_user not in (None, ""):
        for host in _others(_group(groups, "db_replica"), me):
            entries.append({"type": remote_type, "database": "replication", "user": str(replication_user),
                            "address": _cidr(host_address(hostvars, host)), "method": "scram-sha-256",
                            "comment": f"streaming replication to the standby {host}"})
    return entries


def db_tls_names(hostvars: Any, me: str) -> list[str]:
    """The names in ``me``'s PostgreSQL server certificate: its inventory name,
    the address the other hosts reach it on, localhost and 127.0.0.1."""
    names = [me, host_address(hostvars, me), "localhost", LOOPBACK]
    return list(dict.fromkeys(n for n in names if n))


def db_remote(groups: Any, me: str) -> bool:
    """True when ``me`` reaches the stack's database on another host."""
    return me not in _group(groups, "db")


def firewall_rules(hostvars: Any, groups: Any, me: str, db_port: Any, app_ports: Any,
                   http_port: Any, https_port: Any, monitoring_ports: Any = None) -> list[dict[str, Any]]:
    """ufw rules for ``me`` beyond SSH/HTTP/HTTPS: the database port from the
    remote app hosts and standbys (on the primary and on each standby, which
    the apps use once it is promoted), the app ports from the remote web
    hosts, Caddy's non-standard ports from anywhere, and what the remote
    monitoring hosts scrape (``monitoring_ports``: node, postgres and caddy
    exporter ports; base_firewall_rules format)."""
    rules: list[dict[str, Any]] = []
    scrapers = _others(_group(groups, "monitoring"), me)
    if scrapers and monitoring_ports:
        sources = [host_address(hostvars, h) for h in scrapers]
        wanted = [("node", True, "node exporter"),
                  ("postgres", me in _group(groups, "db") + _group(groups, "db_replica"), "PostgreSQL exporter"),
                  ("pgbouncer", me in _group(groups, "app") and "pgbouncer" in monitoring_ports
                   and pgbouncer_exporter(hostvars, me), "PgBouncer exporter"),
                  ("caddy", me in _group(groups, "web"), "Caddy's metrics")]
        for key, applies, what in wanted:
            if applies:
                rules.append({"port": int(monitoring_ports[key]), "proto": "tcp", "from": sources,
                              "comment": f"{what} from the monitoring hosts"})
        # A monitoring host that is also a web host reaches the app ports already.
        others = [host_address(hostvars, h) for h in scrapers if h not in _group(groups, "web")]
        if me in _group(groups, "app") and others:
            for port in _ports(app_ports, "app_service_ports"):
                rules.append({"port": port, "proto": "tcp", "from": others,
                              "comment": "app metrics from the monitoring hosts"})
    if me in _group(groups, "db") + _group(groups, "db_replica"):
        apps = _others(_group(groups, "app"), me)
        standbys = _others(_group(groups, "db_replica"), me)
        sources = list(dict.fromkeys(host_address(hostvars, h) for h in apps + standbys))
        if sources:
            what = " and ".join(w for w, hosts in (("the app hosts", apps), ("the standbys", standbys)) if hosts)
            rules.append({"port": int(db_port), "proto": "tcp", "from": sources,
                          "comment": f"PostgreSQL from {what}"})
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


# ------------------------------------------------------------------ the apps

APP_RUNTIMES = ("python", "node")
APP_SOURCE_TYPES = ("dir", "archive", "git")
APP_EGRESS = ("open", "allowlist", "localhost")
APP_POOL_MODES = ("transaction", "session")
# Every key an app of stack_apps may set, with its default (None: required or
# taken from the stack-level defaults passed in).
APP_DEFAULTS: dict[str, Any] = {
    "name": None,
    "route": "/*",
    "ports": None,
    "runtime": "python",
    "health_path": None,
    "deep_health_path": "",
    "metrics_path": "",
    "source_type": "dir",
    "source_path": "",
    "git_repo": "",
    "git_ref": "main",
    "git_key": "",
    "git_known_hosts": "",
    "web_command": [],
    "asgi_app": "app.main:app",
    "processes": [],
    "timers": [],
    "environment": {},
    "database": True,
    "db_url_env": "DATABASE_URL",
    "db_driver": "postgresql+psycopg",
    # transaction or session: how the stack's PgBouncer pools this app's
    # runtime connections (stack_pgbouncer).
    "db_pool_mode": "transaction",
    "migrate_command": [],
    "revision_command": None,
    "schema_head_command": None,
    "hooks_before_switch": [],
    "hooks_after_switch": [],
    "require_lock": False,
    "egress": None,
    "exec_wrapper": None,
}
_APP_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")
# Names an app may not take: the maintenance switch keeps its deploy record
# in /var/log/maintenance-deploy.log, beside the apps' <name>-deploy.log.
RESERVED_APP_NAMES = ("maintenance",)
_ROUTE_RE = re.compile(r"^/([A-Za-z0-9._~-]+/)*\*$")


def _alembic_default(migrate: list[str], args: list[str]) -> list[str]:
    """The Alembic command for an app whose migration command is Alembic's, else none."""
    return list(args) if [str(a) for a in migrate[:1]] == ["alembic"] else []


def _command(value: Any, where: str, allow_empty: bool = True) -> list[str]:
    if value in (None, "") and not allow_empty:
        raise AnsibleFilterError(f"{where}: needs a command (a non-empty list of arguments)")
    if not isinstance(value, (list, tuple)) or isinstance(value, str):
        raise AnsibleFilterError(f"{where}: must be a list of arguments, got {value!r}")
    if not value and not allow_empty:
        raise AnsibleFilterError(f"{where}: needs a command (a non-empty list of arguments)")
    if any(isinstance(a, (Mapping, list, tuple)) or a is None or str(a) == "" for a in value):
        raise AnsibleFilterError(f"{where}: every argument must be a non-empty string, got {value!r}")
    return [str(a) for a in value]


def apps_plan(apps: Any, legacy: Mapping[str, Any], defaults: Mapping[str, Any] | None = None,
              var: str = "stack_apps") -> list[dict[str, Any]]:
    """The stack's apps, every key filled in and checked.

    ``apps`` is stack_apps (a list); empty means the one app of the
    stack_app_* inputs, given as ``legacy`` (marked ``legacy: true``: the
    playbooks deploy it with the wiring as before). ``defaults`` holds the
    stack-level defaults of health_path, egress and exec_wrapper.
    """
    defaults = dict(defaults or {})
    if apps in (None, "") or (isinstance(apps, (list, tuple)) and not apps):
        app = dict(legacy)
        app.setdefault("route", "/*")
        planned = _plan_app(app, defaults, "stack_app_*")
        planned["legacy"] = True
        return [planned]
    if not isinstance(apps, (list, tuple)):
        raise AnsibleFilterError(f"{var}: must be a list of apps, got {type(apps).__name__}")
    plan: list[dict[str, Any]] = []
    for index, app in enumerate(apps):
        where = f"{var}[{index}]"
        if not isinstance(app, Mapping):
            raise AnsibleFilterError(f"{where}: must be a mapping with at least name and ports")
        unknown = sorted(set(map(str, app)) - set(APP_DEFAULTS))
        if unknown:
            raise AnsibleFilterError(f"{where}: unknown keys {', '.join(unknown)} "
                                     f"(known: {', '.join(APP_DEFAULTS)})")
        planned = _plan_app(app, defaults, where)
        source_key = "git_repo" if planned["source_type"] == "git" else "source_path"
        if not planned[source_key]:
            raise AnsibleFilterError(f"{where}.{source_key}: needed for source_type {planned['source_type']!r}")
        for other_index, other in enumerate(plan):
            other_where = f"{var}[{other_index}] ({other['name']})"
            if other["name"] == planned["name"]:
                raise AnsibleFilterError(f"{where}.name: {planned['name']!r} is used by {other_where} too")
            if other["route"] == planned["route"]:
                raise AnsibleFilterError(
                    f"{where}.route: {planned['route']!r} is claimed by {other_where} too; "
                    "each app needs a route of its own (e.g. /api/* and /*)")
            shared = sorted(set(other["ports"]) & set(planned["ports"]))
            if shared:
                raise AnsibleFilterError(f"{where}.ports: {shared} already used by {other_where}")
        planned["legacy"] = False
        plan.append(planned)
    return plan


def _plan_app(app: Mapping[str, Any], defaults: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, default in APP_DEFAULTS.items():
        value = app.get(key)
        if value is None:
            value = defaults.get(key) if default is None else default
        out[key] = value
    name = out["name"]
    if not isinstance(name, str) or not _APP_NAME_RE.match(name):
        raise AnsibleFilterError(f"{where}.name: must match ^[a-z][a-z0-9_-]*$ (at most 31 characters), got {name!r}")
    if name in RESERVED_APP_NAMES:
        raise AnsibleFilterError(f"{where}.name: {name!r} is reserved (the maintenance switch's deploy record)")
    out["ports"] = _ports(out["ports"], f"{where}.ports")
    if len(out["ports"]) != 2 or len(set(out["ports"])) != 2:
        raise AnsibleFilterError(f"{where}.ports: must be two distinct ports (blue/green), got {out['ports']}")
    route = str(out["route"])
    if not _ROUTE_RE.match(route):
        raise AnsibleFilterError(f"{where}.route: must be /* or a prefix like /api/*, got {route!r}")
    out["route"] = route
    if out["runtime"] not in APP_RUNTIMES:
        raise AnsibleFilterError(f"{where}.runtime: must be one of {', '.join(APP_RUNTIMES)}, got {out['runtime']!r}")
    if out["source_type"] not in APP_SOURCE_TYPES:
        raise AnsibleFilterError(
            f"{where}.source_type: must be one of {', '.join(APP_SOURCE_TYPES)}, got {out['source_type']!r}")
    if out["egress"] not in APP_EGRESS:
        raise AnsibleFilterError(f"{where}.egress: must be one of {', '.join(APP_EGRESS)}, got {out['egress']!r}")
    for key in ("health_path", "deep_health_path", "metrics_path"):
        path = str(out[key] or "")
        if (path or key == "health_path") and not path.startswith("/"):
            raise AnsibleFilterError(f"{where}.{key}: must be a path starting with /, got {path!r}")
        out[key] = path
    for key in ("web_command", "migrate_command", "exec_wrapper"):
        out[key] = _command(out[key], f"{where}.{key}")
    for key, args in (("revision_command", ["alembic", "current"]), ("schema_head_command", ["alembic", "heads"])):
        value = app.get(key)
        out[key] = _alembic_default(out["migrate_command"], args) if value is None else _command(value, f"{where}.{key}")
    for key in ("hooks_before_switch", "hooks_after_switch"):
        if not isinstance(out[key], (list, tuple)):
            raise AnsibleFilterError(f"{where}.{key}: must be a list of commands")
        out[key] = [_command(c, f"{where}.{key}[{i}]", allow_empty=False) for i, c in enumerate(out[key])]
    for key in ("processes", "timers"):
        items = out[key]
        if not isinstance(items, (list, tuple)):
            raise AnsibleFilterError(f"{where}.{key}: must be a list")
        for i, item in enumerate(items):
            if not isinstance(item, Mapping) or not item.get("name"):
                raise AnsibleFilterError(f"{where}.{key}[{i}]: needs a name")
            _command(item.get("command"), f"{where}.{key}[{i}].command", allow_empty=False)
            if key == "timers" and not item.get("on_calendar"):
                raise AnsibleFilterError(f"{where}.{key}[{i}].on_calendar: needs a calendar event (e.g. daily)")
        names = [str(item["name"]) for item in items]
        if len(set(names)) != len(names):
            raise AnsibleFilterError(f"{where}.{key}: names must be unique, got {names}")
    if not isinstance(out["environment"], Mapping):
        raise AnsibleFilterError(f"{where}.environment: must be a mapping of NAME: value")
    if out["db_pool_mode"] not in APP_POOL_MODES:
        raise AnsibleFilterError(
            f"{where}.db_pool_mode: must be one of {', '.join(APP_POOL_MODES)}, got {out['db_pool_mode']!r}")
    out["database"] = bool(out["database"])
    out["require_lock"] = bool(out["require_lock"])
    return out


def pgbouncer_databases(hostvars: Any, groups: Any, me: str, plan: Any, database: str, port: Any,
                        primary: Any = None) -> list[dict[str, Any]]:
    """PgBouncer's [databases] on the app host ``me``: the stack's database on
    the primary (loopback when ``me`` is the primary), and ``<database>_session``
    pooled by session when an app of ``plan`` asks for it (db_pool_mode)."""
    host = db_address(hostvars, groups, me, primary)
    entries = [{"name": database, "host": host, "port": int(port), "dbname": database}]
    if any(app.get("database", True) and app.get("db_pool_mode") == "session" for app in plan or []):
        entries.append({"name": f"{database}_session", "host": host, "port": int(port), "dbname": database,
                        "pool_mode": "session"})
    return entries


def pgbouncer_pool_size(groups: Any, max_connections: Any, reserved: Any) -> int:
    """Server connections each app host's PgBouncer may open: what
    ``max_connections`` leaves once ``reserved`` are kept for the rest,
    shared evenly by the app hosts (at least 1)."""
    apps = _group(groups, "app")
    try:
        room = int(max_connections) - int(reserved)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"stack_db_max_connections ({max_connections!r}) and stack_db_reserved_connections "
                                 f"({reserved!r}) must be numbers") from None
    return max(1, room // max(1, len(apps)))


def pgbouncer_pools(hostvars: Any, groups: Any, default: Any) -> dict[str, int]:
    """{app host: its pgbouncer_max_db_connections} (``default`` where a host
    does not say), for the check that the pools fit the server."""
    out = {}
    for host in _group(groups, "app"):
        value = _var(hostvars, host, "pgbouncer_max_db_connections")
        out[host] = default if value is _MISSING else value
    return out


def _route_sort_key(app: Mapping[str, Any]) -> tuple[int, str]:
    """Longer prefixes first, the catch-all /* last (Caddy tries routes in order)."""
    return (-len(app["route"]), app["route"])


def app_routes(hostvars: Any, groups: Any, me: str, plan: Any, maintenance: Any = False,
               retry_after: Any = 300, page: str = "") -> list[dict[str, Any]]:
    """Caddy routes (caddy_sites[].routes format) for every app of ``plan``.

    Each app gets its route proxied to every instance of every app host, with
    Caddy's active health checks on the app's health path. In maintenance,
    only the apps' health paths are proxied and everything else answers 503
    with Retry-After and ``page``.
    """
    routes: list[dict[str, Any]] = []
    apps = sorted(plan, key=_route_sort_key)
    for app in apps:
        upstreams = caddy_upstreams(hostvars, groups, me, app["ports"], fixed=not app.get("legacy"))
        proxy = {"upstreams": upstreams, "health_uri": app["health_path"], "health_interval": "1s",
                 "health_timeout": "1s", "lb_try_duration": "10s", "lb_try_interval": "250ms"}
        if app["metrics_path"] and not maintenance:
            # The app's metrics are for Prometheus on the private side, not for the internet.
            routes.append({"path": app["metrics_path"], "respond": {"status": 404, "body": "Not Found"}})
        route: dict[str, Any] = {"reverse_proxy": proxy}
        if maintenance:
            route["path"] = sorted({app["health_path"]} | ({app["deep_health_path"]} - {""}))
        elif app["route"] != "/*":
            route["path"] = app["route"]
        routes.append(route)
    if maintenance:
        routes.append({"respond": {"status": 503, "body": page or "Down for maintenance",
                                   "headers": {"Retry-After": str(int(retry_after)),
                                               "Content-Type": "text/html; charset=utf-8",
                                               "Cache-Control": "no-store"}}})
    return routes


def _stack_hosts(groups: Any) -> list[str]:
    return list(dict.fromkeys(_group(groups, "db") + _group(groups, "db_replica") + _group(groups, "app")
                              + _group(groups, "web") + _group(groups, "monitoring")))


def monitoring_address(hostvars: Any, groups: Any, host: str) -> str:
    """Where the exporters of ``host`` listen: loopback when the whole stack
    is this one host, else its private address (a monitoring host scrapes it)."""
    return LOOPBACK if _stack_hosts(groups) == [host] else host_address(hostvars, host)


def pgbouncer_exporter(hostvars: Any, host: str) -> bool:
    """True when ``host`` runs Debian's PgBouncer exporter: every release but
    Debian 12, whose exporter does not work with its PgBouncer (the
    monitoring role exports the pools through node exporter there)."""
    facts = _var(hostvars, host, "ansible_facts")
    if facts is _MISSING or not isinstance(facts, Mapping):
        return True
    return not (facts.get("distribution") == "Debian" and str(facts.get("distribution_major_version")) == "12")


def monitoring_targets(hostvars: Any, groups: Any, pgbouncer: Any = False) -> list[dict[str, Any]]:
    """Every host of the stack for the monitoring hosts to scrape (the
    monitoring role's monitoring_targets): node exporter on each, the
    PostgreSQL exporter on the primary and the standbys, the PgBouncer
    exporter on the app hosts when ``pgbouncer`` (stack_pgbouncer). A host whose address
    is unknown here (a run that does not gather its facts: promote.yml
    leaves the old primary out, or --limit) gets address "": the monitoring
    role refuses to run with it, naming the host, and other plays need not."""
    databases = _group(groups, "db") + _group(groups, "db_replica")
    targets = []
    for host in _stack_hosts(groups):
        try:
            address = monitoring_address(hostvars, groups, host)
        except AnsibleFilterError:
            address = ""
        targets.append({"host": host, "address": address, "postgres": host in databases,
                        "pgbouncer": bool(pgbouncer) and host in _group(groups, "app")
                        and pgbouncer_exporter(hostvars, host)})
    return targets


def caddy_metrics_targets(hostvars: Any, groups: Any, port: Any, hosts: Any = None) -> list[str]:
    """host:port of Caddy's metrics listener on every web host (or on ``hosts``)."""
    out = []
    for host in _group(groups, "web") if hosts is None else list(hosts):
        address = monitoring_address(hostvars, groups, host)
        out.append(f"[{address}]:{int(port)}" if ":" in address else f"{address}:{int(port)}")
    return out


def app_metrics_targets(hostvars: Any, groups: Any, me: str, plan: Any) -> list[dict[str, Any]]:
    """Prometheus scrape configs ({job, metrics_path, targets}) for every app
    of ``plan`` with a metrics_path: each instance of each app host, as ``me``
    reaches it. Both colours are listed; the idle one does not answer (job
    app_<name>, whose StackTargetDown is left to the site's health check)."""
    return [{"job": f"app_{app['name']}", "metrics_path": app["metrics_path"],
             "targets": caddy_upstreams(hostvars, groups, me, app["ports"], fixed=not app.get("legacy"))}
            for app in plan if app.get("metrics_path")]


def site_checks(plan: Any, base_url: str, ca_file: str = "", check_cert: Any = True) -> list[dict[str, Any]]:
    """The monitoring hosts' HTTP checks through Caddy: each app's own
    health_path under ``base_url`` (https://domain:port). The one app of a
    stack is check ``site``; each app of several is ``site_<name>``."""
    return [{"name": "site" if len(plan) == 1 else f"site_{app['name']}",
             "url": f"{base_url}{app['health_path']}", "ca_file": ca_file, "check_cert": bool(check_cert)}
            for app in plan]


def to_converge(pattern: str, groups: dict) -> list[str]:
    """The hosts of a site.yml play: the union of the groups a
    colon-separated pattern names (db:app:web), in inventory order, without
    the hosts the stack role grouped as `stack_unchanged` (a full run on a
    host where every role it runs is unchanged since its last converge, so
    the role plays leave it out)."""
    unchanged = set(groups.get("stack_unchanged") or [])
    hosts: list[str] = []
    for name in str(pattern).split(":"):
        for host in groups.get(name.strip()) or []:
            if host not in unchanged and host not in hosts:
                hosts.append(host)
    return hosts


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
            "stack_db_tls_names": db_tls_names,
            "stack_db_remote": db_remote,
            "stack_replication_slot": replication_slot,
            "stack_firewall_rules": firewall_rules,
            "stack_apps_plan": apps_plan,
            "stack_app_routes": app_routes,
            "stack_app_metrics_targets": app_metrics_targets,
            "stack_site_checks": site_checks,
            "stack_monitoring_address": monitoring_address,
            "stack_monitoring_targets": monitoring_targets,
            "stack_pgbouncer_databases": pgbouncer_databases,
            "stack_pgbouncer_pool_size": pgbouncer_pool_size,
            "stack_pgbouncer_pools": pgbouncer_pools,
            "stack_caddy_metrics_targets": caddy_metrics_targets,
            "stack_to_converge": to_converge,
        }
