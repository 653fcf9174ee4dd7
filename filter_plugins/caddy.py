"""Filters for the caddy role: the site model behind the Caddyfile.

``caddy_sites_validate`` checks what ``meta/argument_specs.yml`` cannot (a
field against another, a value against its syntax, one site against the
others) and returns the sites normalised, every default filled in: the
Caddyfile template (templates/etc/caddy/Caddyfile.j2) turns that model into
site blocks with its macros. The shape (known keys, types, choices) is left to
argument_specs, which runs first. ``caddy_check_site`` names the site and CA
file a health check through Caddy uses; ``caddy_admin_validate`` checks the
admin API address; ``caddy_listen_check`` catches listener/admin port
collisions that ``caddy validate`` cannot see (it binds no port). Errors raise
AnsibleFilterError naming ``caddy_sites[i]`` (and the route) or the variable,
and the problem. ``caddy_error_lines`` picks Caddy's and systemd's error lines
out of a journal excerpt for a failed reload or restart.

The FilterModule at the bottom is a thin map from filter names to the plain
functions above it; tests in tests/unit call the functions directly and render
the template.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - only without ansible installed
    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        """Stand-in when ansible is not importable."""


# A bcrypt hash as Caddy's basic_auth takes it ($2a$, $2b$ or $2y$, cost, 53 characters).
_BCRYPT_RE = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
HANDLERS = ("reverse_proxy", "file_server", "redirect", "respond")
# The reverse_proxy settings, in the order the Caddyfile lists them.
PROXY_SETTINGS = ("lb_policy", "lb_try_duration", "lb_try_interval", "health_uri", "health_interval",
                  "health_timeout", "health_status", "fail_duration")

_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*\.?$")
_DURATION_RE = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h|d))+$")
_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
_PATH_RE = re.compile(r"^/[^\s\"{}]*$")


def _fail(where: str, msg: str) -> None:
    raise AnsibleFilterError(f"{where}: {msg}")


def caddy_quote(value: Any) -> str:
    """Return ``value`` as one Caddyfile token, double-quoted when needed."""
    text = str(value)
    if "\n" in text or "\r" in text:
        raise AnsibleFilterError(f"caddy: {text!r} must be a single line")
    if text and not re.search(r'[\s"\\#{}`]', text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _port(value: str, where: str, what: str) -> int:
    if not value.isdigit():
        _fail(where, f"{what} has a bad port {value!r} (must be a number 1-65535)")
    port = int(value)
    if not 1 <= port <= 65535:
        _fail(where, f"{what} has a bad port {port} (must be 1-65535)")
    return port


def _split_host_port(text: str, where: str, what: str) -> tuple[str, int | None]:
    """Split ``host``, ``host:port``, ``:port``, ``[v6]:port`` into (host, port)."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            _fail(where, f"{what} has an unclosed IPv6 bracket")
        host, rest = text[1:end], text[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            _fail(where, f"{what} has a bad IPv6 address")
        host = f"[{host}]"
        if rest == "":
            return host, None
        if not rest.startswith(":"):
            _fail(where, f"{what} is malformed")
        return host, _port(rest[1:], where, what)
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    elif sep and not port:
        _fail(where, f"{what} has an empty port")
    if host and not _is_host(host):
        _fail(where, f"{what} has a bad host name {host!r}")
    return host, (_port(port, where, what) if port else None)


def _is_host(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        pass
    return bool(_HOST_RE.match(host)) and len(host) <= 253 and not host.replace(".", "").isdigit()


def _address(value: Any, where: str, what: str = "'address'") -> dict[str, Any]:
    """Parse a site address: [http(s)://]host[:port] or :port."""
    if not isinstance(value, str) or not value.strip():
        _fail(where, f"{what} must be a non-empty string such as 'example.com' or ':8080'")
    text = value.strip()
    scheme = ""
    match = re.match(r"^(https?)://", text)
    if match:
        scheme = match.group(1)
        text = text[match.end():]
    if "/" in text or " " in text:
        _fail(where, f"{what} {value!r} is not a site address (no path or spaces; "
                     "use routes for paths)")
    host, port = _split_host_port(text, where, f"{what} {value!r}")
    host = host.lower()  # host names are case-insensitive (duplicate check)
    if not host and port is None:
        _fail(where, f"{what} {value!r} needs a host name or a :port")
    return {"scheme": scheme, "host": host, "port": port}


def _duration(value: Any, where: str, key: str) -> str | None:
    if value in (None, ""):
        return None
    text = str(value)
    if not _DURATION_RE.match(text):
        _fail(where, f"'{key}' {value!r} is not a duration such as 250ms, 5s or 1m")
    return text


def _str_list(value: Any, where: str, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence) and not isinstance(value, Mapping):
        if not all(isinstance(v, str) for v in value):
            _fail(where, f"'{key}' must be a string or a list of strings")
        return list(value)
    _fail(where, f"'{key}' must be a string or a list of strings")
    return []


def _headers(value: Any, where: str, key: str) -> dict[str, str | None]:
    if value in (None, {}):
        return {}
    if not isinstance(value, Mapping):
        _fail(where, f"'{key}' must be a mapping of header name to value (null removes it)")
    result: dict[str, str | None] = {}
    for name, val in value.items():
        if not isinstance(name, str) or not _HEADER_NAME_RE.match(name):
            _fail(where, f"'{key}' has a bad header name {name!r}")
        if val is None:
            result[name] = None
        else:
            caddy_quote(val)  # single line check
            result[name] = str(val)
    return result


def _upstream(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(where, "upstreams must be non-empty strings like 127.0.0.1:9999")
    text = value.strip()
    if text.startswith("unix//"):
        if len(text) <= len("unix//") or " " in text:
            _fail(where, f"upstream {value!r} is not a unix socket path")
        return text
    match = re.match(r"^(https?)://", text)
    rest = text[match.end():] if match else text
    host, port = _split_host_port(rest, where, f"upstream {value!r}")
    if not host or host == "*" or port is None:
        _fail(where, f"upstream {value!r} needs a host and a port, e.g. 127.0.0.1:9999")
    return text


def _bcrypt(hashed: Any) -> str:
    """The bcrypt hash itself, given as is or base64-encoded (what Caddy 2.6's
    `caddy hash-password` prints); "" when it is neither."""
    if not isinstance(hashed, str):
        return ""
    if _BCRYPT_RE.match(hashed):
        return hashed
    try:
        decoded = base64.b64decode(hashed, validate=True).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return ""
    return decoded if _BCRYPT_RE.match(decoded) else ""


def _basic_auth(users: Any, where: str) -> dict[str, str]:
    """{user: bcrypt hash}: the route answers 401 without one of them."""
    if users in (None, {}):
        return {}
    if not isinstance(users, Mapping):
        _fail(where, "'basic_auth' must map user names to bcrypt hashes")
    out = {}
    for user, hashed in users.items():
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", str(user)):
            _fail(where, f"basic_auth user {user!r} must be letters, digits, '.', '_' or '-'")
        out[str(user)] = _bcrypt(hashed)
        if not out[str(user)]:
            _fail(where, f"basic_auth password of {user!r} must be a bcrypt hash ($2b$..., or base64 of one "
                         "as `caddy hash-password` prints), not the password")
    return out


def _route(route: Mapping[str, Any], index: int, where: str) -> dict[str, Any]:
    paths = _str_list(route.get("path"), where, "path")
    for path in paths:
        if not _PATH_RE.match(path):
            _fail(where, f"'path' {path!r} must start with / and contain no spaces, quotes or braces")
    handlers = [h for h in HANDLERS if route.get(h) not in (None, {})]
    if len(handlers) != 1:
        _fail(where, f"needs exactly one handler of {', '.join(HANDLERS)}, got "
                     f"{', '.join(handlers) if handlers else 'none'}")
    kind = handlers[0]
    spec = route[kind]
    prefix = ""
    if route.get("strip_prefix", False):
        if len(paths) != 1 or not paths[0].endswith("/*") or len(paths[0]) < 3:
            _fail(where, "'strip_prefix' needs exactly one path of the form /prefix/*")
        prefix = paths[0][:-2]
    # Several paths need a named matcher (declared in the site, used by the handle).
    matcher = f"@route{index}" if len(paths) > 1 else "".join(paths)
    norm: dict[str, Any] = {"paths": paths, "matcher": matcher, "strip_prefix": prefix, "kind": kind,
                            "basic_auth": _basic_auth(route.get("basic_auth"), where)}
    if kind == "reverse_proxy":
        norm["proxy"] = _proxy(spec, where)
    elif kind == "file_server":
        root = spec.get("root")
        if not isinstance(root, str) or not root.startswith("/"):
            _fail(where, f"file_server 'root' must be an absolute path, got {root!r}")
        cache = spec.get("cache_control")
        norm["files"] = {
            "root": root.rstrip("/") or "/",
            "cache_control": str(cache) if cache not in (None, "") else None,
            "browse": bool(spec.get("browse", False)),
            "precompressed": bool(spec.get("precompressed", False)),
        }
        caddy_quote(norm["files"]["root"])
    elif kind == "respond":
        status = spec.get("status", 200)
        if not re.fullmatch(r"[1-5]\d\d", str(status)):
            _fail(where, f"respond 'status' {status!r} must be an HTTP status code like 503")
        body = spec.get("body", "")
        if not isinstance(body, str) or "\n" in body or "\r" in body:
            _fail(where, "respond 'body' must be a single-line string")
        norm["respond"] = {"status": int(status), "body": body,
                           "headers": _headers(spec.get("headers"), where, "respond.headers")}
    else:
        target = spec.get("to")
        if not isinstance(target, str) or not target.strip():
            _fail(where, "redirect needs 'to' (a URL or path; placeholders like {uri} allowed)")
        caddy_quote(target)
        norm["redirect"] = {"to": target.strip(), "code": str(spec.get("code", "permanent"))}
    return norm


def _proxy(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    upstreams = _str_list(spec.get("upstreams"), where, "reverse_proxy.upstreams")
    if not upstreams:
        _fail(where, "reverse_proxy needs at least one upstream in 'upstreams'")
    health_uri = spec.get("health_uri")
    if health_uri not in (None, "") and not _PATH_RE.match(str(health_uri).split("?")[0]):
        _fail(where, f"'health_uri' {health_uri!r} must be a path starting with /")
    health_status = spec.get("health_status")
    if health_status not in (None, "") and not re.fullmatch(r"[1-5](xx|\d\d)", str(health_status)):
        _fail(where, f"'health_status' {health_status!r} must be like 200 or 2xx")
    settings = {
        "lb_policy": spec.get("lb_policy") or ("round_robin" if len(upstreams) > 1 else None),
        "lb_try_duration": _duration(spec.get("lb_try_duration"), where, "lb_try_duration"),
        "lb_try_interval": _duration(spec.get("lb_try_interval"), where, "lb_try_interval"),
        "health_uri": health_uri or None,
        "health_interval": _duration(spec.get("health_interval"), where, "health_interval"),
        "health_timeout": _duration(spec.get("health_timeout"), where, "health_timeout"),
        "health_status": str(health_status) if health_status not in (None, "") else None,
        "fail_duration": _duration(spec.get("fail_duration"), where, "fail_duration"),
    }
    if settings["lb_try_interval"] and not settings["lb_try_duration"]:
        _fail(where, "'lb_try_interval' has no effect without 'lb_try_duration'")
    if not settings["health_uri"] and any(settings[k] for k in ("health_interval", "health_timeout", "health_status")):
        _fail(where, "health_interval/health_timeout/health_status need 'health_uri'")
    return {
        "upstreams": [_upstream(u, where) for u in upstreams],
        "settings": {key: settings[key] for key in PROXY_SETTINGS},
        "headers_up": _headers(spec.get("headers_up"), where, "headers_up"),
        "transport_tls": bool(spec.get("transport_tls", False)),
    }


def _shadowed(earlier: list[str], later: list[str]) -> bool:
    """True when every path of a later route is already matched by an earlier one."""
    if not earlier:
        return True
    if not later:
        return False

    def covered(path: str) -> bool:
        for pattern in earlier:
            if pattern == path:
                return True
            if pattern.endswith("*") and path.startswith(pattern[:-1]):
                return True
        return False
    return all(covered(p) for p in later)


def _site_label(addr: dict[str, Any], tls: str) -> str:
    host = addr["host"]
    port = addr["port"]
    scheme = "http://" if tls == "off" and (host or addr["scheme"]) else ""
    text = f"{host}:{port}" if port is not None else host
    if not host:
        text = f":{port}"
    return scheme + text


def _tls(site: Mapping[str, Any], addresses: list[dict[str, Any]], default: str, where: str) -> str:
    """The site's TLS mode, checked against its addresses and certificate files."""
    first = addresses[0]
    tls = site.get("tls")
    if tls is False:  # YAML 1.1 reads an unquoted off as false
        tls = "off"
    tls = tls or ("off" if first["scheme"] == "http" or not first["host"] else default)
    if tls != "off" and any(a["scheme"] == "http" for a in addresses):
        _fail(where, f"an http:// address cannot use tls '{tls}'; set tls: off")
    if tls != "off" and any(not a["host"] for a in addresses):
        _fail(where, f"tls '{tls}' needs a host name in the address (a bare :port serves plain HTTP)")
    if tls == "off" and any(a["scheme"] == "https" for a in addresses):
        _fail(where, "an https:// address cannot use tls off")
    if tls == "files":
        for key in ("tls_cert", "tls_key"):
            val = site.get(key)
            if not isinstance(val, str) or not val.startswith("/"):
                _fail(where, f"tls 'files' needs '{key}' as an absolute path")
    elif site.get("tls_cert") or site.get("tls_key"):
        _fail(where, "'tls_cert'/'tls_key' are only used with tls: files")
    return tls


def _redirects(labels: list[str], https_port: int) -> list[dict[str, Any]]:
    """The site's HTTP->HTTPS redirects, one per HTTPS port: a site on
    example.com:8443 redirects to :8443 (the template writes them out, since
    Caddy's automatic ones send a Server header)."""
    by_port: dict[int, list[str]] = {}
    for label in labels:
        match = re.match(r"^(?:https://)?(\[[^\]]+\]|[^:]+)(?::(\d+))?$", label)
        host, port = match.group(1), int(match.group(2) or https_port)
        by_port.setdefault(port, []).append(f"http://{host}")
    return [{"labels": hosts, "port": "" if port == 443 else f":{port}"} for port, hosts in by_port.items()]


def caddy_sites_validate(sites: Any, options: Mapping[str, Any],
                         var: str = "caddy_sites") -> list[dict[str, Any]]:
    """Check ``caddy_sites`` and return it normalised for the Caddyfile template.

    Each site is a mapping (its shape is in meta/argument_specs.yml):
    ``address`` (``example.com``, ``example.com:8443``, ``http://example.com``,
    ``:8080``), optional ``aliases``, ``tls``, ``encode``, ``security_headers``,
    ``hsts``, ``headers``, ``access_log``, ordered ``routes`` (an optional
    ``path`` matcher and exactly one handler) and ``raw`` lines. ``options``
    carries the role-wide defaults (``__caddy_site_options`` in vars/main.yml).
    """
    result: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for index, site in enumerate(sites or []):
        where = f"{var}[{index}]"
        addresses = [_address(site.get("address"), where)]
        addresses += [_address(a, where, "'aliases' entry") for a in _str_list(site.get("aliases"), where, "aliases")]
        tls = _tls(site, addresses, options["tls"], where)
        labels = [_site_label(a, tls) for a in addresses]
        for label in labels:
            key = label.removeprefix("http://")
            if key in seen:
                _fail(where, f"address {label!r} is already used by {var}[{seen[key]}]")
            seen[key] = index
        raw = _str_list(site.get("raw"), where, "raw")
        if not site.get("routes") and not raw:
            _fail(where, "needs at least one route (or raw lines)")
        routes = [_route(r, i, f"{where}.routes[{i}]") for i, r in enumerate(site.get("routes") or [])]
        for i, route in enumerate(routes):
            for j in range(i):
                if _shadowed(routes[j]["paths"], route["paths"]):
                    _fail(f"{where}.routes[{i}]", f"is unreachable: routes[{j}] already matches "
                                                  f"{', '.join(route['paths']) or 'every path'}; "
                                                  "the first matching route answers, so put specific paths before general ones")
        sec = site.get("security_headers", True)
        if not isinstance(sec, bool):
            _fail(where, "'security_headers' must be true or false")
        headers: dict[str, str | None] = {"Server": None}
        if sec:
            headers.update(_headers(options["security_headers"], where, "caddy_security_headers"))
            hsts = site.get("hsts", options["hsts"])
            if hsts is True:
                hsts = options["hsts"]
            if tls != "off" and hsts not in (None, False, ""):
                headers["Strict-Transport-Security"] = str(hsts)
        headers.update(_headers(site.get("headers"), where, "headers"))
        if any("\r" in line for line in raw):
            _fail(where, "'raw' lines must not contain carriage returns")
        result.append({
            "labels": labels,
            "tls": tls,
            "tls_cert": site.get("tls_cert"),
            "tls_key": site.get("tls_key"),
            "encode": bool(site.get("encode", options["encode"])),
            "headers": headers,
            "access_log": bool(site.get("access_log", options["access_log"])),
            "log_file": f"{options['log_dir'].rstrip('/')}/access-{_log_name(labels[0])}.log",
            "routes": routes,
            "raw": [line.rstrip() for chunk in raw for line in chunk.splitlines()],
            "redirects": _redirects(labels, int(options["https_port"])) if tls != "off" else [],
        })
    return result


def _log_name(label: str) -> str:
    name = re.sub(r"^https?://", "", label).replace("*", "wildcard")
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_") or "site"


def caddy_check_site(sites: Any, https_port: Any, internal_ca_file: str) -> dict[str, str]:
    """What a health check through Caddy on the web host needs: the first
    site's ``url`` (no path), the ``host`` and ``port`` to pin to 127.0.0.1
    (curl --resolve) and the ``ca_file`` to trust (Caddy's internal CA for tls
    internal, "" otherwise). ``sites`` is the normalised list; {} when empty."""
    if not sites:
        return {}
    site = sites[0]
    label = site["labels"][0].removeprefix("http://")
    host, _, port = label.rpartition(":") if re.search(r":\d+$", label) else (label, "", "")
    scheme = "http" if site["tls"] == "off" else "https"
    port = port or (str(int(https_port)) if scheme == "https" else "80")
    host = host or "localhost"
    return {"url": f"{scheme}://{host}:{port}", "host": host, "port": port,
            "ca_file": internal_ca_file if site["tls"] == "internal" else ""}


def caddy_admin_validate(address: Any, var: str = "caddy_admin") -> str:
    """Accept only a unix socket (``unix//path``) or a loopback ``host:port``."""
    if not isinstance(address, str) or not address.strip():
        _fail(var, "must be 'unix//run/caddy/admin.sock' or a loopback address like localhost:2019")
    text = address.strip()
    if text.startswith("unix//"):
        path = text[len("unix/"):]
        if len(path) < 2 or " " in path or not path.startswith("/"):
            _fail(var, f"{address!r} is not a unix socket path")
        return text
    host, sep, port = text.rpartition(":")
    if not sep:
        _fail(var, f"{address!r} needs a port, e.g. localhost:2019 (or use a unix socket)")
    _port(port, var, f"{address!r}")
    if host not in ("localhost", "127.0.0.1", "[::1]"):
        _fail(var, f"{address!r} must bind to localhost, 127.0.0.1 or [::1] (or a unix socket); "
                   "the admin API must never listen on a public address")
    return text


_PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))


def caddy_metrics_listen_validate(address: Any, var: str = "caddy_metrics_listen") -> list[str]:
    """``host:port`` of the metrics listener, as [host, port]: a loopback or
    private address only (Caddy's metrics are not for the internet)."""
    text = str(address or "").strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        _fail(var, f"{address!r} must be host:port, e.g. 127.0.0.1:2020")
    _port(port, var, f"{address!r}")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if bare != "localhost":
        try:
            ip = ipaddress.ip_address(bare)
        except ValueError:
            _fail(var, f"{address!r}: the host must be an IP address or localhost")
        if not (ip.is_loopback or any(ip in net for net in _PRIVATE_NETS if net.version == ip.version)):
            _fail(var, f"{address!r} must be a loopback or private address; Caddy's metrics are not for the internet")
    return [host, str(int(port))]


def caddy_listen_check(sites: Any, http_port: Any = 80, https_port: Any = 443,
                       admin: Any = "unix//run/caddy/admin.sock",
                       var: str = "caddy_sites") -> list[int]:
    """Return the TCP ports Caddy listens on, refusing collisions with the admin API.

    ``sites`` is the normalised list (``caddy_sites_validate``). The listeners are ``http_port``, ``https_port`` and every explicit port in
    the site addresses. A loopback admin address (``localhost:2019``) on one of
    those ports would only fail when Caddy binds it (at reload or start, never
    in ``caddy validate``), so it is refused here, naming both variables.
    """
    ports: dict[int, str] = {}
    for port, name in ((http_port, "caddy_http_port"), (https_port, "caddy_https_port")):
        if isinstance(port, bool) or not str(port).strip().isdigit() or not 1 <= int(port) <= 65535:
            _fail(name, f"{port!r} is not a port between 1 and 65535")
        ports.setdefault(int(port), name)
    for index, site in enumerate(sites):
        for label in site["labels"]:
            _, _, tail = label.removeprefix("http://").rpartition(":")
            if tail.isdigit():
                ports.setdefault(int(tail), f"{var}[{index}] address {label!r}")
    admin_text = caddy_admin_validate(admin)
    if not admin_text.startswith("unix//"):
        admin_port = int(admin_text.rpartition(":")[2])
        if admin_port in ports:
            _fail("caddy_admin", f"{admin_text!r} uses port {admin_port}, which Caddy also listens on "
                                 f"for {ports[admin_port]}; pick another admin port or a unix socket")
    return sorted(ports)


_SYSTEMD_ERROR_RE = re.compile(r"(Failed|failed|exited, code=|status=\d|timed out|Killing)")


def caddy_error_lines(text: Any, limit: int = 8) -> list[str]:
    """The lines that explain a failed Caddy reload or start, oldest first.

    ``text`` is command output or ``journalctl -o cat`` output, or a list of
    such texts (read in order, e.g. a command's stderr then the journal): Caddy's JSON
    log lines (kept when their level is error, fatal or panic, as
    ``msg: error``), the CLI's ``Error: ...`` lines and systemd's lines about
    the unit failing. Repeats are dropped; at most the last ``limit`` lines are
    returned.
    """
    if text is None:
        return []
    if not isinstance(text, str) and isinstance(text, Sequence):
        text = "\n".join("" if part is None else str(part) for part in text)
    if not isinstance(text, str):
        raise AnsibleFilterError(f"caddy_error_lines: expects text or a list of texts, got {type(text).__name__}")
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        picked = None
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", "panic"):
                picked = str(entry.get("msg", "")).strip()
                if entry.get("error"):
                    picked = f"{picked}: {entry['error']}" if picked else str(entry["error"])
        elif line.startswith("Error:") or _SYSTEMD_ERROR_RE.search(line):
            picked = line
        if picked and picked not in out:
            out.append(picked)
    return out[-max(1, int(limit)):]


class FilterModule:
    """Ansible filter map for the caddy role."""

    def filters(self) -> dict[str, Any]:
        return {
            "caddy_sites_validate": caddy_sites_validate,
            "caddy_check_site": caddy_check_site,
            "caddy_admin_validate": caddy_admin_validate,
            "caddy_metrics_listen_validate": caddy_metrics_listen_validate,
            "caddy_quote": caddy_quote,
            "caddy_listen_check": caddy_listen_check,
            "caddy_error_lines": caddy_error_lines,
        }
