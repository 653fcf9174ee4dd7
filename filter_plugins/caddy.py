"""Filters for the caddy role: the site model behind the Caddyfile.

``caddy_sites_validate`` checks a ``caddy_sites`` list and returns it
normalised (every default filled in); ``caddy_sites_render`` turns it into the
site blocks of a Caddyfile; ``caddy_admin_validate`` checks the admin API
address; ``caddy_listen_check`` catches listener/admin port collisions that
``caddy validate`` cannot see (it binds no port). Errors raise
AnsibleFilterError naming ``caddy_sites[i]`` (and the route) or the variable,
and the problem. ``caddy_error_lines`` picks Caddy's and systemd's error lines
out of a journal excerpt for a failed reload or restart.

The FilterModule at the bottom is a thin map from filter names to the plain
functions above it; tests in tests/unit call the functions directly.
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


SITE_KEYS = ("address", "aliases", "tls", "tls_cert", "tls_key", "encode", "security_headers",
             "hsts", "headers", "access_log", "routes", "raw")
ROUTE_KEYS = ("path", "strip_prefix", "basic_auth", "reverse_proxy", "file_server", "redirect", "respond")
# A bcrypt hash as Caddy's basic_auth takes it ($2a$, $2b$ or $2y$, cost, 53 characters).
_BCRYPT_RE = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
HANDLERS = ("reverse_proxy", "file_server", "redirect", "respond")
PROXY_KEYS = ("upstreams", "lb_policy", "lb_try_duration", "lb_try_interval", "health_uri",
              "health_interval", "health_timeout", "health_status", "fail_duration",
              "headers_up", "transport_tls")
FILE_SERVER_KEYS = ("root", "cache_control", "browse", "precompressed")
REDIRECT_KEYS = ("to", "code")
RESPOND_KEYS = ("status", "body", "headers")
TLS_MODES = ("acme", "internal", "files", "off")
LB_POLICIES = ("random", "round_robin", "least_conn", "first", "ip_hash", "uri_hash",
               "client_ip_hash")
REDIRECT_CODES = ("permanent", "temporary", "html", "301", "302", "303", "307", "308")

DEFAULT_OPTIONS: dict[str, Any] = {
    "tls": "acme",
    "encode": True,
    "security_headers": {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "strict-origin-when-cross-origin",
    },
    "hsts": "max-age=31536000; includeSubDomains",
    "access_log": True,
    "log_dir": "/var/log/caddy",
    "log_roll_size": "100MiB",
    "log_roll_keep": 10,
    "log_roll_keep_for": "720h",
    "https_port": 443,
}

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


def _check_keys(item: Any, allowed: Sequence[str], where: str) -> None:
    if not isinstance(item, Mapping):
        _fail(where, f"must be a mapping, got {type(item).__name__}")
    unknown = sorted(set(item) - set(allowed))
    if unknown:
        _fail(where, f"unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}")


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


def _route(route: Any, where: str) -> dict[str, Any]:
    _check_keys(route, ROUTE_KEYS, where)
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
    strip_prefix = bool(route.get("strip_prefix", False))
    prefix = ""
    if strip_prefix:
        if len(paths) != 1 or not paths[0].endswith("/*") or len(paths[0]) < 3:
            _fail(where, "'strip_prefix' needs exactly one path of the form /prefix/*")
        prefix = paths[0][:-2]
    norm: dict[str, Any] = {"paths": paths, "strip_prefix": prefix, "kind": kind,
                            "basic_auth": _basic_auth(route.get("basic_auth"), where)}
    if kind == "reverse_proxy":
        _check_keys(spec, PROXY_KEYS, f"{where}.reverse_proxy")
        upstreams = _str_list(spec.get("upstreams"), where, "reverse_proxy.upstreams")
        if not upstreams:
            _fail(where, "reverse_proxy needs at least one upstream in 'upstreams'")
        policy = spec.get("lb_policy") or ("round_robin" if len(upstreams) > 1 else None)
        if policy is not None and policy not in LB_POLICIES:
            _fail(where, f"'lb_policy' {policy!r} is not one of {', '.join(LB_POLICIES)}")
        health_uri = spec.get("health_uri")
        if health_uri not in (None, "") and not _PATH_RE.match(str(health_uri).split("?")[0]):
            _fail(where, f"'health_uri' {health_uri!r} must be a path starting with /")
        health_status = spec.get("health_status")
        if health_status not in (None, "") and not re.fullmatch(r"[1-5](xx|\d\d)", str(health_status)):
            _fail(where, f"'health_status' {health_status!r} must be like 200 or 2xx")
        norm["proxy"] = {
            "upstreams": [_upstream(u, where) for u in upstreams],
            "lb_policy": policy,
            "lb_try_duration": _duration(spec.get("lb_try_duration"), where, "lb_try_duration"),
            "lb_try_interval": _duration(spec.get("lb_try_interval"), where, "lb_try_interval"),
            "health_uri": health_uri or None,
            "health_interval": _duration(spec.get("health_interval"), where, "health_interval"),
            "health_timeout": _duration(spec.get("health_timeout"), where, "health_timeout"),
            "health_status": str(health_status) if health_status not in (None, "") else None,
            "fail_duration": _duration(spec.get("fail_duration"), where, "fail_duration"),
            "headers_up": _headers(spec.get("headers_up"), where, "headers_up"),
            "transport_tls": bool(spec.get("transport_tls", False)),
        }
        if norm["proxy"]["lb_try_interval"] and not norm["proxy"]["lb_try_duration"]:
            _fail(where, "'lb_try_interval' has no effect without 'lb_try_duration'")
        health_opts = ("health_interval", "health_timeout", "health_status")
        if not norm["proxy"]["health_uri"] and any(norm["proxy"][k] for k in health_opts):
            _fail(where, "health_interval/health_timeout/health_status need 'health_uri'")
    elif kind == "file_server":
        _check_keys(spec, FILE_SERVER_KEYS, f"{where}.file_server")
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
        _check_keys(spec, RESPOND_KEYS, f"{where}.respond")
        status = spec.get("status", 200)
        if not re.fullmatch(r"[1-5]\d\d", str(status)):
            _fail(where, f"respond 'status' {status!r} must be an HTTP status code like 503")
        body = spec.get("body", "")
        if not isinstance(body, str) or "\n" in body or "\r" in body:
            _fail(where, "respond 'body' must be a single-line string")
        norm["respond"] = {"status": int(status), "body": body,
                           "headers": _headers(spec.get("headers"), where, "respond.headers")}
        if body:
            caddy_quote(body)
    else:
        _check_keys(spec, REDIRECT_KEYS, f"{where}.redirect")
        target = spec.get("to")
        if not isinstance(target, str) or not target.strip():
            _fail(where, "redirect needs 'to' (a URL or path; placeholders like {uri} allowed)")
        code = str(spec.get("code", "permanent"))
        if code not in REDIRECT_CODES:
            _fail(where, f"redirect 'code' {code!r} is not one of {', '.join(REDIRECT_CODES)}")
        caddy_quote(target)
        norm["redirect"] = {"to": target.strip(), "code": code}
    return norm


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


def caddy_sites_validate(sites: Any, options: Mapping[str, Any] | None = None,
                         var: str = "caddy_sites") -> list[dict[str, Any]]:
    """Validate ``caddy_sites`` and return it normalised.

    Each site is a mapping: ``address`` (``example.com``, ``example.com:8443``,
    ``http://example.com``, ``:8080``), optional ``aliases``, ``tls`` (acme,
    internal, files with ``tls_cert``/``tls_key``, off), ``encode``,
    ``security_headers``, ``hsts``, ``headers``, ``access_log``, ordered
    ``routes`` (an optional ``path`` matcher and exactly one handler:
    ``reverse_proxy``, ``file_server`` or ``redirect``) and ``raw`` lines.
    ``options`` carries the role-wide defaults (see DEFAULT_OPTIONS).
    """
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    if sites is None:
        return []
    if isinstance(sites, (str, Mapping)) or not isinstance(sites, Sequence):
        _fail(var, f"must be a list of sites, got {type(sites).__name__}")
    result: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for index, site in enumerate(sites):
        where = f"{var}[{index}]"
        _check_keys(site, SITE_KEYS, where)
        if "address" not in site:
            _fail(where, "'address' is required (e.g. 'example.com' or ':8080')")
        addresses = [_address(site["address"], where)]
        addresses += [_address(a, where, "'aliases' entry") for a in _str_list(site.get("aliases"), where, "aliases")]
        first = addresses[0]
        tls_default = "off" if first["scheme"] == "http" or not first["host"] else opts["tls"]
        tls = site.get("tls")
        if tls is False:  # YAML 1.1 reads an unquoted off as false
            tls = "off"
        tls = tls or tls_default
        if tls not in TLS_MODES:
            _fail(where, f"'tls' {tls!r} is not one of {', '.join(TLS_MODES)}")
        if tls != "off" and any(a["scheme"] == "http" for a in addresses):
            _fail(where, f"an http:// address cannot use tls '{tls}'; set tls: off")
        if tls in ("acme", "internal", "files") and any(not a["host"] for a in addresses):
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
        labels = [_site_label(a, tls) for a in addresses]
        for label in labels:
            key = label.removeprefix("http://")
            if key in seen:
                _fail(where, f"address {label!r} is already used by {var}[{seen[key]}]")
            seen[key] = index
        routes_in = site.get("routes") or []
        if isinstance(routes_in, (str, Mapping)) or not isinstance(routes_in, Sequence):
            _fail(where, "'routes' must be a list")
        raw = _str_list(site.get("raw"), where, "raw")
        if not routes_in and not raw:
            _fail(where, "needs at least one route (or raw lines)")
        routes = [_route(r, f"{where}.routes[{i}]") for i, r in enumerate(routes_in)]
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
            headers.update(_headers(opts["security_headers"], where, "caddy_security_headers"))
            hsts = site.get("hsts", opts["hsts"])
            if hsts is True:
                hsts = opts["hsts"]
            if tls != "off" and hsts not in (None, False, ""):
                headers["Strict-Transport-Security"] = str(hsts)
        headers.update(_headers(site.get("headers"), where, "headers"))
        for line in raw:
            if "\r" in line:
                _fail(where, "'raw' lines must not contain carriage returns")
        result.append({
            "labels": labels,
            "tls": tls,
            "tls_cert": site.get("tls_cert"),
            "tls_key": site.get("tls_key"),
            "encode": bool(site.get("encode", opts["encode"])),
            "headers": headers,
            "access_log": bool(site.get("access_log", opts["access_log"])),
            "log_file": f"{opts['log_dir'].rstrip('/')}/access-{_log_name(labels[0])}.log",
            "routes": routes,
            "raw": raw,
        })
    return result


def _log_name(label: str) -> str:
    name = re.sub(r"^https?://", "", label).replace("*", "wildcard")
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_") or "site"


def _block(lines: list[str], name: str, body: list[str]) -> None:
    lines.append(f"{name} {{")
    lines.extend("\t" + b for b in body)
    lines.append("}")


def _render_route(route: dict[str, Any], index: int, matchers: list[str]) -> list[str]:
    """Render one route as a handle block; several paths need a named matcher."""
    matcher = route["paths"]
    if len(matcher) > 1:
        matchers.append(f"@route{index} path " + " ".join(matcher))
        matcher = [f"@route{index}"]
    body: list[str] = []
    if route["basic_auth"]:
        # `basicauth` and base64-encoded hashes: what Caddy 2.6 (Debian 12 and 13) parses; later
        # releases still accept both (basic_auth and a plain $2b$ hash are 2.8+ only).
        _block(body, "basicauth", [f"{user} {base64.b64encode(hashed.encode()).decode()}"
                                   for user, hashed in sorted(route["basic_auth"].items())])
    if route["strip_prefix"]:
        body.append(f"uri strip_prefix {caddy_quote(route['strip_prefix'])}")
    if route["kind"] == "reverse_proxy":
        proxy = route["proxy"]
        sub: list[str] = []
        for key in ("lb_policy", "lb_try_duration", "lb_try_interval", "health_uri",
                    "health_interval", "health_timeout", "health_status", "fail_duration"):
            if proxy[key]:
                sub.append(f"{key} {caddy_quote(proxy[key])}")
        for name, val in proxy["headers_up"].items():
            sub.append(f"header_up -{name}" if val is None else f"header_up {name} {caddy_quote(val)}")
        if proxy["transport_tls"]:
            sub.append("transport http {")
            sub.append("\ttls")
            sub.append("}")
        head = "reverse_proxy " + " ".join(caddy_quote(u) for u in proxy["upstreams"])
        if sub:
            _block(body, head, sub)
        else:
            body.append(head)
    elif route["kind"] == "file_server":
        files = route["files"]
        if files["cache_control"]:
            body.append(f"header Cache-Control {caddy_quote(files['cache_control'])}")
        body.append(f"root * {caddy_quote(files['root'])}")
        flags = [f for f in ("browse", "precompressed") if files[f]]
        body.append(" ".join(["file_server", *flags]))
    elif route["kind"] == "respond":
        respond = route["respond"]
        for name, val in respond["headers"].items():
            body.append(f"header -{name}" if val is None else f"header {name} {caddy_quote(val)}")
        text = f" {caddy_quote(respond['body'])}" if respond["body"] else ""
        body.append(f"respond *{text} {respond['status']}")
    else:
        redirect = route["redirect"]
        body.append(f"redir * {caddy_quote(redirect['to'])} {redirect['code']}")
    lines: list[str] = []
    _block(lines, " ".join(["handle", *matcher]), body)
    return lines


def _http_redirect(site: dict[str, Any], https_port: int) -> list[str]:
    """Explicit HTTP->HTTPS redirect blocks (Caddy's automatic ones send a Server header).

    One block per HTTPS port: a site on example.com:8443 redirects to :8443.
    """
    by_port: dict[int, list[str]] = {}
    for label in site["labels"]:
        match = re.match(r"^(?:https://)?(\[[^\]]+\]|[^:]+)(?::(\d+))?$", label)
        host, port = match.group(1), int(match.group(2) or https_port)
        by_port.setdefault(port, []).append(f"http://{host}")
    lines: list[str] = []
    for port, labels in by_port.items():
        suffix = "" if port == 443 else f":{port}"
        if lines:
            lines.append("")
        _block(lines, ", ".join(labels), ["header -Server", f"redir https://{{host}}{suffix}{{uri}} permanent"])
    return lines


def caddy_sites_render(sites: Any, options: Mapping[str, Any] | None = None,
                       var: str = "caddy_sites") -> str:
    """Render the site blocks of a Caddyfile from ``caddy_sites`` (validated first).

    Routes go into one ``route`` block, so they match in the order given and
    the first match answers.
    """
    opts = {**DEFAULT_OPTIONS, **(options or {})}
    out: list[str] = []
    for site in caddy_sites_validate(sites, opts, var):
        body: list[str] = []
        if site["tls"] == "internal":
            body.append("tls internal")
        elif site["tls"] == "files":
            body.append(f"tls {caddy_quote(site['tls_cert'])} {caddy_quote(site['tls_key'])}")
        if site["encode"]:
            body.append("encode zstd gzip")
        header_lines = [f"-{name}" if val is None else f"{name} {caddy_quote(val)}"
                        for name, val in site["headers"].items()]
        _block(body, "header", header_lines)
        if site["access_log"]:
            log_body: list[str] = []
            _block(log_body, f"output file {caddy_quote(site['log_file'])}", [
                f"roll_size {caddy_quote(opts['log_roll_size'])}",
                f"roll_keep {int(opts['log_roll_keep'])}",
                f"roll_keep_for {caddy_quote(opts['log_roll_keep_for'])}",
            ])
            log_body.append("format json")
            _block(body, "log", log_body)
        if site["routes"]:
            route_body: list[str] = []
            matchers: list[str] = []
            for index, route in enumerate(site["routes"]):
                route_body.extend(_render_route(route, index, matchers))
            body.extend(matchers)
            _block(body, "route", route_body)
        for chunk in site["raw"]:
            body.extend(line.rstrip() for line in chunk.splitlines())
        if out:
            out.append("")
        _block(out, ", ".join(site["labels"]), body)
        if site["tls"] != "off":
            out.append("")
            out.extend(_http_redirect(site, int(opts["https_port"])))
    return "\n".join(out) + ("\n" if out else "")


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

    The listeners are ``http_port``, ``https_port`` and every explicit port in
    the site addresses. A loopback admin address (``localhost:2019``) on one of
    those ports would only fail when Caddy binds it (at reload or start, never
    in ``caddy validate``), so it is refused here, naming both variables.
    """
    ports: dict[int, str] = {}
    for port, name in ((http_port, "caddy_http_port"), (https_port, "caddy_https_port")):
        if isinstance(port, bool) or not str(port).strip().isdigit() or not 1 <= int(port) <= 65535:
            _fail(name, f"{port!r} is not a port between 1 and 65535")
        ports.setdefault(int(port), name)
    for index, site in enumerate(caddy_sites_validate(sites, var=var)):
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


def caddy_changed_files(checksum_lines: Any, files: Any) -> list[str]:
    """Names of the files whose live copy differs from the known-good copy.

    ``checksum_lines`` is ``sha256sum`` output (``<hex>  <path>`` per line;
    files it could not read are absent); ``files`` is a list of mappings with
    ``name``, ``live`` and ``good`` paths. A missing live file or a missing
    known-good copy counts as a difference. The order of ``files`` is kept.
    """
    if isinstance(checksum_lines, str):
        checksum_lines = checksum_lines.splitlines()
    if not isinstance(checksum_lines, Sequence):
        raise AnsibleFilterError(
            f"caddy_changed_files: expects sha256sum output lines, got {type(checksum_lines).__name__}")
    sums: dict[str, str] = {}
    for line in checksum_lines:
        digest, sep, path = str(line).partition("  ")
        if sep and digest:
            sums[path.strip()] = digest
    if isinstance(files, (str, Mapping)) or not isinstance(files, Sequence):
        raise AnsibleFilterError("caddy_changed_files: expects a list of {name, live, good} mappings")
    out = []
    for item in files:
        if not isinstance(item, Mapping) or not all(k in item for k in ("name", "live", "good")):
            raise AnsibleFilterError(f"caddy_changed_files: {item!r} needs name, live and good")
        if sums.get(str(item["live"]), "no live file") != sums.get(str(item["good"]), "no known-good copy"):
            out.append(str(item["name"]))
    return out


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
            "caddy_sites_render": caddy_sites_render,
            "caddy_admin_validate": caddy_admin_validate,
            "caddy_metrics_listen_validate": caddy_metrics_listen_validate,
            "caddy_quote": caddy_quote,
            "caddy_listen_check": caddy_listen_check,
            "caddy_error_lines": caddy_error_lines,
            "caddy_changed_files": caddy_changed_files,
        }
