"""Unit tests for filter_plugins/caddy.py (the caddy_sites model) and for the
Caddyfile template that writes it out (rendered as the template module does)."""

from __future__ import annotations

import base64
import copy
import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "filter_plugins"))

import caddy  # noqa: E402  (filter_plugins is not a package)
from caddy import (  # noqa: E402
    AnsibleFilterError, caddy_admin_validate, caddy_check_site, caddy_error_lines,
    caddy_listen_check, caddy_quote,
)
from caddyfile import site_options, sites_text, spec_errors  # noqa: E402


def caddy_sites_validate(sites, var="caddy_sites", **role_vars):
    """The filter with the role's defaults (vars/main.yml's __caddy_site_options)."""
    return caddy.caddy_sites_validate(sites, site_options(**role_vars), var)

PROXY_SITE = {
    "address": "api.example.com",
    "routes": [
        {"path": "/static/*", "file_server": {"root": "/srv/app/static",
                                              "cache_control": "public, max-age=31536000, immutable"}},
        {"reverse_proxy": {"upstreams": ["127.0.0.1:9999"]}},
    ],
}
SPLIT_SITE = {
    "address": "example.com",
    "routes": [
        {"path": "/api/*", "reverse_proxy": {"upstreams": ["127.0.0.1:9999"]}},
        {"reverse_proxy": {"upstreams": ["127.0.0.1:3000"]}},
    ],
}
BLUE_GREEN = {
    "address": "app.example.com",
    "routes": [{"reverse_proxy": {
        "upstreams": ["127.0.0.1:8001", "127.0.0.1:8002"],
        "health_uri": "/health", "health_interval": "2s",
        "lb_try_duration": "5s", "lb_try_interval": "250ms",
    }}],
}


def site(**changes):
    result = copy.deepcopy(PROXY_SITE)
    result.update(changes)
    return result


def route_site(route):
    return {"address": "example.com", "routes": [route]}


# ---------------------------------------------------------------- good input

def test_layout_api_with_static_files():
    text = sites_text([PROXY_SITE])
    assert text.startswith("api.example.com {\n")
    assert "\thandle /static/* {\n" in text
    assert '\t\t\theader Cache-Control "public, max-age=31536000, immutable"\n' in text
    assert "\t\t\troot * /srv/app/static\n\t\t\tfile_server\n" in text
    assert "\t\thandle {\n\t\t\treverse_proxy 127.0.0.1:9999\n" in text
    # Routes keep their order inside one route block.
    assert text.index("handle /static/*") < text.index("handle {")
    assert "\troute {\n" in text


def test_layout_api_and_frontend_split():
    text = sites_text([SPLIT_SITE])
    assert "handle /api/* {\n\t\t\treverse_proxy 127.0.0.1:9999\n" in text
    assert "handle {\n\t\t\treverse_proxy 127.0.0.1:3000\n" in text


def test_blue_green_health_and_retries():
    text = sites_text([BLUE_GREEN])
    assert "reverse_proxy 127.0.0.1:8001 127.0.0.1:8002 {\n" in text
    for line in ("lb_policy round_robin", "lb_try_duration 5s", "lb_try_interval 250ms",
                 "health_uri /health", "health_interval 2s"):
        assert f"\t\t\t\t{line}\n" in text


def test_security_headers_hsts_and_no_server_header_by_default():
    text = sites_text([PROXY_SITE])
    for line in ("-Server", "X-Content-Type-Options nosniff", "X-Frame-Options DENY",
                 "Referrer-Policy strict-origin-when-cross-origin",
                 'Strict-Transport-Security "max-age=31536000; includeSubDomains"'):
        assert f"\t\t{line}\n" in text
    assert "\tencode zstd gzip\n" in text


def test_no_hsts_without_tls_and_plain_http_address():
    [norm] = caddy_sites_validate([site(address=":8080")])
    assert norm["tls"] == "off" and norm["labels"] == [":8080"]
    assert "Strict-Transport-Security" not in norm["headers"]
    [norm] = caddy_sites_validate([site(tls="off")])
    assert norm["labels"] == ["http://api.example.com"]
    # YAML 1.1 reads an unquoted `off` as false.
    [norm] = caddy_sites_validate([site(tls=False)])
    assert norm["tls"] == "off"


def test_http_to_https_redirect_blocks():
    text = sites_text([site(aliases=["www.example.com:8443"])], caddy_https_port=443)
    assert "\nhttp://api.example.com {\n\theader -Server\n\tredir https://{host}{uri} permanent\n}\n" in text
    assert "\nhttp://www.example.com {\n\theader -Server\n\tredir https://{host}:8443{uri} permanent\n}\n" in text
    text = sites_text([site()], caddy_https_port=8443)
    assert "\tredir https://{host}:8443{uri} permanent\n" in text
    assert "http://" not in sites_text([site(tls="off")]).replace("http://api.example.com {", "")


def test_overrides_per_site():
    text = sites_text([site(encode=False, security_headers=False, access_log=False,
                                    headers={"X-Frame-Options": "SAMEORIGIN", "X-Powered-By": None})])
    assert "encode" not in text
    assert "nosniff" not in text and "Strict-Transport-Security" not in text
    assert "\t\tX-Frame-Options SAMEORIGIN\n" in text
    assert "\t\t-X-Powered-By\n" in text
    assert "\tlog {" not in text


def test_tls_modes():
    assert "\ttls internal\n" in sites_text([site(tls="internal")])
    text = sites_text([site(tls="files", tls_cert="/etc/ssl/a.pem", tls_key="/etc/ssl/a.key")])
    assert "\ttls /etc/ssl/a.pem /etc/ssl/a.key\n" in text
    assert "\ttls" not in sites_text([site(tls="acme")])
    [norm] = caddy_sites_validate([site()], caddy_tls_default="internal")
    assert norm["tls"] == "internal"


def test_access_log_with_rotation():
    text = sites_text([site(aliases=["*.example.org"])],
                      caddy_log_dir="/var/log/web/", caddy_access_log_roll_keep=5)
    assert "\t\toutput file /var/log/web/access-api.example.com.log {\n" in text
    assert "\t\t\troll_size 100MiB\n\t\t\troll_keep 5\n\t\t\troll_keep_for 720h\n" in text
    assert text.startswith("api.example.com, *.example.org {\n")


BCRYPT = "$2b$12$3qGgqVu7e80UNUGtXwqnJuFMpI1bhvaN45ZeoTutrXt.4vRkZM5Au"


def test_basic_auth_guards_a_route_and_refuses_a_plain_password():
    text = sites_text([{"address": "example.com", "routes": [
        {"path": "/status/*", "strip_prefix": True, "basic_auth": {"ops": BCRYPT},
         "file_server": {"root": "/var/lib/stack-status"}},
        {"reverse_proxy": {"upstreams": ["127.0.0.1:8001"]}},
    ]}])
    block = text.split("handle /status/* {")[1].split("\n\t\t}")[0]
    encoded = base64.b64encode(BCRYPT.encode()).decode()
    assert f"basicauth {{\n\t\t\t\tops {encoded}\n\t\t\t}}" in block
    assert block.index("basicauth") < block.index("file_server")
    assert "basicauth" not in text.split("handle /status/* {")[0]
    # `caddy hash-password` on Caddy 2.6 prints the hash base64-encoded: taken as the same hash.
    again = sites_text([{"address": "example.com", "routes": [
        {"path": "/status/*", "strip_prefix": True, "basic_auth": {"ops": encoded},
         "file_server": {"root": "/var/lib/stack-status"}},
        {"reverse_proxy": {"upstreams": ["127.0.0.1:8001"]}},
    ]}])
    assert again == text
    with pytest.raises(AnsibleFilterError, match="must be a bcrypt hash"):
        sites_text([{"address": "example.com", "routes": [
            {"path": "/s/*", "basic_auth": {"ops": "hunter2"}, "file_server": {"root": "/srv"}}]}])


def test_redirect_strip_prefix_and_several_paths():
    text = sites_text([{"address": "example.com", "routes": [
        {"path": ["/old", "/older/*"], "redirect": {"to": "https://example.com/new{uri}", "code": "302"}},
        {"path": "/assets/*", "strip_prefix": True, "file_server": {"root": "/srv/assets", "browse": True}},
        {"reverse_proxy": {"upstreams": ["unix//run/app.sock", "https://[::1]:8443"], "transport_tls": True,
                           "headers_up": {"X-Real-IP": "{remote_host}"}}},
    ]}])
    assert "\t@route0 path /old /older/*\n" in text
    assert '\t\t\tredir * "https://example.com/new{uri}" 302\n' in text
    assert "\t\t\turi strip_prefix /assets\n" in text
    assert "\t\t\tfile_server browse\n" in text
    assert "reverse_proxy unix//run/app.sock https://[::1]:8443 {\n" in text
    assert '\t\t\t\theader_up X-Real-IP "{remote_host}"\n' in text
    assert "\t\t\t\ttransport http {\n\t\t\t\t\ttls\n\t\t\t\t}\n" in text


def test_raw_escape_hatch_and_quoting():
    text = sites_text([site(raw=["respond /ping 200", "basicauth /admin/* {\n\tbob hash\n}"])])
    assert "\trespond /ping 200\n\tbasicauth /admin/* {\n\t\tbob hash\n\t}\n}" in text
    assert caddy_quote("plain") == "plain"
    assert caddy_quote('a "b"') == '"a \\"b\\""'
    assert caddy_quote("") == '""'
    with pytest.raises(AnsibleFilterError):
        caddy_quote("two\nlines")


def test_empty_and_normalised():
    assert caddy_sites_validate(None) == []
    assert sites_text([]) == ""
    [norm] = caddy_sites_validate([BLUE_GREEN])
    assert norm["routes"][0]["proxy"]["settings"]["lb_policy"] == "round_robin"
    [norm] = caddy_sites_validate([SPLIT_SITE])
    assert norm["routes"][0]["proxy"]["settings"]["lb_policy"] is None


def test_admin_addresses():
    assert caddy_admin_validate("unix//run/caddy/admin.sock") == "unix//run/caddy/admin.sock"
    assert caddy_admin_validate("localhost:2019") == "localhost:2019"
    assert caddy_admin_validate("[::1]:2019") == "[::1]:2019"
    for bad in ("0.0.0.0:2019", ":2019", "example.com:2019", "off", "localhost", "unix//", "", None,
                "localhost:99999"):
        with pytest.raises(AnsibleFilterError, match="^caddy_admin"):
            caddy_admin_validate(bad)


def test_filter_map():
    names = set(caddy.FilterModule().filters())
    assert {"caddy_sites_validate", "caddy_check_site", "caddy_admin_validate", "caddy_quote"} <= names


# ----------------------------------------------------------------- bad input

@pytest.mark.parametrize(("sites", "message"), [
    ([site(address="exa mple.com")], r"^caddy_sites\[0\]: 'address' .* not a site address"),
    ([site(address="example.com/api")], r"^caddy_sites\[0\]: 'address' .* not a site address"),
    ([site(address="bad_host!.com")], r"^caddy_sites\[0\]: 'address' .* bad host name"),
    ([site(address="example.com:99999")], r"^caddy_sites\[0\]: 'address' .* bad port 99999"),
    ([site(address="example.com:http")], r"^caddy_sites\[0\]: 'address' .* bad port 'http'"),
    ([site(address=":0")], r"bad port 0"),
    ([site(address="https://")], r"needs a host name or a :port"),
    ([PROXY_SITE, site(address="API.example.com")], r"^caddy_sites\[1\]: address 'api.example.com' is already used by caddy_sites\[0\]"),
    ([site(tls="files")], r"tls 'files' needs 'tls_cert'"),
    ([site(tls_cert="/a.pem")], r"only used with tls: files"),
    ([site(address="http://example.com", tls="internal")], r"http:// address cannot use tls"),
    ([site(address=":8443", tls="internal")], r"needs a host name in the address"),
    ([site(routes=[])], r"^caddy_sites\[0\]: needs at least one route"),
    ([site(security_headers="yes")], r"'security_headers' must be true or false"),
    ([site(headers={"Bad Header": "x"})], r"bad header name"),
    ([site(headers={"X-A": "two\nlines"})], r"single line"),
])
def test_bad_sites(sites, message):
    with pytest.raises(AnsibleFilterError, match=message):
        caddy_sites_validate(sites)


@pytest.mark.parametrize(("route", "message"), [
    ({"path": "/x"}, r"needs exactly one handler .* got none"),
    ({"reverse_proxy": {"upstreams": ["127.0.0.1:1"]}, "redirect": {"to": "/"}},
     r"needs exactly one handler .* got reverse_proxy, redirect"),
    ({"reverse_proxy": {}}, r"needs exactly one handler"),
    ({"reverse_proxy": {"upstreams": []}}, r"needs at least one upstream"),
    ({"reverse_proxy": {"lb_policy": "first"}}, r"needs at least one upstream"),
    ({"reverse_proxy": {"upstreams": ["127.0.0.1"]}}, r"upstream '127.0.0.1' needs a host and a port"),
    ({"reverse_proxy": {"upstreams": ["127.0.0.1:70000"]}}, r"bad port 70000"),
    ({"reverse_proxy": {"upstreams": ["127.0.0.1:99a"]}}, r"bad port '99a'"),
    ({"reverse_proxy": {"upstreams": ["[::1:80"]}}, r"unclosed IPv6 bracket"),
    ({"reverse_proxy": {"upstreams": ["127.0.0.1:1"], "lb_try_duration": "5 seconds"}}, r"not a duration"),
    ({"reverse_proxy": {"upstreams": ["127.0.0.1:1"], "lb_try_interval": "1s"}}, r"no effect without"),
    ({"reverse_proxy": {"upstreams": ["127.0.0.1:1"], "health_interval": "1s"}}, r"need 'health_uri'"),
    ({"reverse_proxy": {"upstreams": ["127.0.0.1:1"], "health_uri": "health"}}, r"must be a path"),
    ({"reverse_proxy": {"upstreams": ["127.0.0.1:1"], "health_uri": "/h", "health_status": "ok"}},
     r"'health_status'"),
    ({"file_server": {"root": "static"}}, r"'root' must be an absolute path"),
    ({"redirect": {"code": "301"}}, r"redirect needs 'to'"),
    ({"path": "api/*", "redirect": {"to": "/"}}, r"'path' 'api/\*' must start with /"),
    ({"path": "/*", "strip_prefix": True, "file_server": {"root": "/srv"}}, r"'strip_prefix' needs"),
])
def test_bad_routes(route, message):
    with pytest.raises(AnsibleFilterError, match=r"^caddy_sites\[0\]\.routes\[0\](\.reverse_proxy)?: (.* )?" + message):
        caddy_sites_validate([route_site(route)])


# The shape of the input (known keys, types, choices, required keys) is
# meta/argument_specs.yml's job: Ansible checks it before the role runs, so the
# filter does not repeat it. These cases prove the spec refuses them.
@pytest.mark.parametrize(("sites", "message"), [
    ("api.example.com", r"unable to convert to dict"),
    ([{"routes": []}], r"missing required arguments: address found in caddy_sites"),
    ([site(colour="blue")], r"caddy_sites\.colour\. Supported parameters include"),
    ([site(tls="letsencrypt")], r"value of tls must be one of: acme, internal, files, off, got: letsencrypt"),
    ([site(routes={"path": "/"})], r"routes"),
    ([route_site({"reverse_proxy": {"upstreams": ["127.0.0.1:1"], "lb_policy": "fastest"}})],
     r"value of lb_policy must be one of: .* got: fastest"),
    ([route_site({"reverse_proxy": {"upstreams": ["127.0.0.1:1"], "retries": 3}})],
     r"caddy_sites\.routes\.reverse_proxy\.retries\. Supported parameters include"),
    ([route_site({"redirect": {"to": "/", "code": "304"}})], r"value of code must be one of: .* got: 304"),
    ([route_site({"file_server": {"browse": True}})], r"missing required arguments: root"),
])
def test_argument_specs_refuse_the_shape(sites, message):
    errors = spec_errors(caddy_sites=sites)
    assert any(re.search(message, error) for error in errors), errors


def test_argument_specs_take_the_good_sites():
    assert spec_errors(caddy_sites=[PROXY_SITE, SPLIT_SITE, BLUE_GREEN]) == []


def test_unreachable_routes_are_refused():
    catch_all = {"reverse_proxy": {"upstreams": ["127.0.0.1:1"]}}
    api = {"path": "/api/*", "reverse_proxy": {"upstreams": ["127.0.0.1:2"]}}
    api_v2 = {"path": "/api/v2/*", "reverse_proxy": {"upstreams": ["127.0.0.1:3"]}}
    with pytest.raises(AnsibleFilterError, match=r"^caddy_sites\[0\]\.routes\[1\]: is unreachable: routes\[0\]"):
        caddy_sites_validate([{"address": "a.example", "routes": [catch_all, api]}])
    with pytest.raises(AnsibleFilterError, match=r"routes\[1\]: is unreachable"):
        caddy_sites_validate([{"address": "a.example", "routes": [api, api_v2]}])
    # Specific first is fine.
    assert len(caddy_sites_validate([{"address": "a.example", "routes": [api_v2, api, catch_all]}])[0]["routes"]) == 3


def test_error_names_the_right_site():
    bad = copy.deepcopy(SPLIT_SITE)
    bad["routes"][1]["reverse_proxy"]["upstreams"] = ["localhost:0"]
    with pytest.raises(AnsibleFilterError, match=r"^caddy_sites\[1\]\.routes\[1\]: upstream 'localhost:0' has a bad port 0"):
        caddy_sites_validate([PROXY_SITE, bad])
    with pytest.raises(AnsibleFilterError, match=r"^web_sites\[0\]"):
        caddy_sites_validate([{"address": "x.example"}], "web_sites")


# ---------------------------------------------------------------- listener ports vs the admin API

def test_listen_ports_are_the_global_and_explicit_site_ports():
    sites = [PROXY_SITE, {"address": ":8080", "routes": [{"redirect": {"to": "/"}}]},
             {"address": "b.example", "aliases": ["c.example:8443"], "routes": [{"redirect": {"to": "/"}}]}]
    assert caddy_listen_check(caddy_sites_validate(sites), 80, 443, "unix//run/caddy/admin.sock") == [80, 443, 8080, 8443]
    assert caddy_listen_check([], "8080", "8443", "localhost:2019") == [8080, 8443]


@pytest.mark.parametrize("admin, http_port, https_port, sites, message", [
    ("localhost:443", 80, 443, [], r"^caddy_admin: 'localhost:443' uses port 443, .* for caddy_https_port"),
    ("127.0.0.1:8080", 8080, 8443, [], r"^caddy_admin: .* port 8080, .* for caddy_http_port"),
    ("[::1]:2019", 80, 443, [{"address": ":2019", "routes": [{"redirect": {"to": "/"}}]}],
     r"^caddy_admin: .* port 2019, .* for caddy_sites\[0\] address ':2019'"),
    ("unix//run/caddy/admin.sock", 0, 443, [], r"^caddy_http_port: 0 is not a port"),
    ("unix//run/caddy/admin.sock", 80, "x", [], r"^caddy_https_port: 'x' is not a port"),
    ("0.0.0.0:2019", 80, 443, [], r"^caddy_admin: .* must bind to localhost"),
])
def test_listen_check_refuses_collisions_and_bad_ports(admin, http_port, https_port, sites, message):
    with pytest.raises(AnsibleFilterError, match=message):
        caddy_listen_check(caddy_sites_validate(sites), http_port, https_port, admin)


def test_listen_check_names_the_bad_site():
    with pytest.raises(AnsibleFilterError, match=r"^caddy_sites\[0\]"):
        caddy_listen_check(caddy_sites_validate([{"address": "x.example"}]), 80, 443, "unix//run/caddy/admin.sock")


# ---------------------------------------------------------------- Caddy's error lines

RELOAD_STDERR = (
    '{"level":"info","ts":1.5,"msg":"using provided configuration","config_file":"/etc/caddy/Caddyfile"}\n'
    'Error: sending configuration to instance: caddy responded with error: HTTP 400: '
    '{"error":"loading config: loading new config: http app module: start: listening on :9443: '
    'listen tcp :9443: bind: address already in use"}\n'
)
JOURNAL = (
    '{"level":"info","ts":1.6,"logger":"admin.api","msg":"received request","uri":"/load"}\n'
    '{"level":"warn","ts":1.7,"logger":"tls","msg":"stapling OCSP","error":"no OCSP server"}\n'
    '{"level":"error","ts":1.8,"logger":"admin.api","msg":"request error",'
    '"error":"loading config: bind: address already in use","status_code":400}\n'
    "Stopping caddy.service - Caddy...\n"
    "caddy.service: Deactivated successfully.\n"
    "caddy.service: Failed to set up mount namespacing: /srv/missing: No such file or directory\n"
    "caddy.service: Main process exited, code=exited, status=226/NAMESPACE\n"
    "caddy.service: Main process exited, code=exited, status=226/NAMESPACE\n"
)


def test_error_lines_keep_caddy_errors_and_systemd_failures_only():
    lines = caddy_error_lines([RELOAD_STDERR, JOURNAL], limit=10)
    assert lines == [
        'Error: sending configuration to instance: caddy responded with error: HTTP 400: '
        '{"error":"loading config: loading new config: http app module: start: listening on :9443: '
        'listen tcp :9443: bind: address already in use"}',
        "request error: loading config: bind: address already in use",
        "caddy.service: Failed to set up mount namespacing: /srv/missing: No such file or directory",
        "caddy.service: Main process exited, code=exited, status=226/NAMESPACE",
    ]


def test_error_lines_limit_keeps_the_latest():
    assert caddy_error_lines(JOURNAL, limit=1) == ["caddy.service: Main process exited, code=exited, status=226/NAMESPACE"]
    assert caddy_error_lines(None) == [] and caddy_error_lines("") == []
    assert caddy_error_lines(["all is well", None]) == []


def test_error_lines_bad_input():
    with pytest.raises(AnsibleFilterError, match="expects text"):
        caddy_error_lines(42)


@pytest.mark.parametrize("address,expected", [
    ("127.0.0.1:2020", ["127.0.0.1", "2020"]),
    ("localhost:2020", ["localhost", "2020"]),
    ("10.0.0.5:9180", ["10.0.0.5", "9180"]),
    ("[::1]:2020", ["[::1]", "2020"]),
])
def test_metrics_listen_takes_loopback_and_private_addresses(address, expected):
    assert caddy.caddy_metrics_listen_validate(address) == expected


@pytest.mark.parametrize("address,message", [
    ("0.0.0.0:2020", "loopback or private"),
    ("203.0.113.7:2020", "loopback or private"),
    ("example.com:2020", "IP address or localhost"),
    ("127.0.0.1", "must be host:port"),
    ("127.0.0.1:99999", "caddy_metrics_listen"),
])
def test_metrics_listen_refuses_public_or_malformed_addresses(address, message):
    with pytest.raises(AnsibleFilterError, match=message):
        caddy.caddy_metrics_listen_validate(address)


# ---------------------------------------------------------------- the site a health check uses

CA = "/var/lib/caddy/ca.crt"


@pytest.mark.parametrize(("sites", "role_vars", "expected"), [
    ([PROXY_SITE], {}, {"url": "https://api.example.com:443", "host": "api.example.com", "port": "443", "ca_file": ""}),
    ([site(tls="internal", address="a.example:9443"), SPLIT_SITE], {"caddy_https_port": 8443},
     {"url": "https://a.example:9443", "host": "a.example", "port": "9443", "ca_file": CA}),
    ([site()], {"caddy_https_port": 8443, "caddy_tls_default": "internal"},
     {"url": "https://api.example.com:8443", "host": "api.example.com", "port": "8443", "ca_file": CA}),
    ([site(address=":8080")], {}, {"url": "http://localhost:8080", "host": "localhost", "port": "8080", "ca_file": ""}),
    ([site(address="http://plain.example")], {}, {"url": "http://plain.example:80", "host": "plain.example", "port": "80",
                                                  "ca_file": ""}),
    ([], {}, {}),
])
def test_check_site_is_the_first_site(sites, role_vars, expected):
    https_port = role_vars.get("caddy_https_port", 443)
    assert caddy_check_site(caddy_sites_validate(sites, **role_vars), https_port, CA) == expected
