"""ACME end to end: each host's site <host>.stack.test (tls acme) gets its
certificate from the scenario's ACME CA, Debian's Pebble on acme.stack.test
(prepare.yml), over HTTP-01 through port 80, trusting Pebble's HTTPS endpoint
through caddy_acme_ca_root; Caddy renews the short-lived certificates itself.

Everything is asked from the Caddy host over the Docker network, by name:
the way the ACME server and a client reach the site."""

import calendar
import json
import time

ACME = "acme.stack.test"
# caddy_acme_ca_root on the host (the CA of Pebble's own HTTPS endpoint).
ACME_CA_ROOT = "/etc/caddy/acme-ca-root.pem"
STORAGE = "/var/lib/caddy/.local/share/caddy/certificates/acme.stack.test-14000-dir"
# Pebble's root of the certificates it issues (management endpoint), kept here.
ISSUED_ROOT = "/tmp/pebble-issued-root.pem"
# Certificates live 120 s (vars/test.yml); Caddy checks every 15 s and renews
# with a third of the lifetime left: a renewal within about 100 s.
RENEWAL_WAIT = 150


def site(host):
    return f"{host.backend.hostname}.stack.test"


def caddy_log(host, name):
    """Caddy's JSON log lines about `name` (identifier or server name)."""
    out = host.check_output("journalctl -u caddy --no-pager -o cat")
    entries = []
    for line in out.splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if name in (entry.get("identifier"), entry.get("server_name")) or name in entry.get("identifiers", []):
            entries.append(entry)
    return entries


def issued_root(host):
    """Pebble's issuing root, over its management API (TLS checked with caddy_acme_ca_root)."""
    host.check_output(f"curl -sS --fail --max-time 10 --cacert {ACME_CA_ROOT} -o {ISSUED_ROOT} "
                      f"https://{ACME}:15000/roots/0")
    return ISSUED_ROOT


def served_chain(host, name, ca_file):
    """openssl s_client to name:443 (Docker's DNS), verifying the chain and the host name against ca_file."""
    cmd = (f"openssl s_client -connect {name}:443 -servername {name} -CAfile {ca_file} "
           f"-verify_return_error -verify_hostname {name} </dev/null 2>&1")
    return host.run("bash -c %s", cmd)


def served_not_before(host, name):
    """The served certificate's notBefore, as a Unix time."""
    out = host.check_output(
        f"openssl s_client -connect {name}:443 -servername {name} </dev/null 2>/dev/null "
        "| openssl x509 -noout -startdate")
    return calendar.timegm(time.strptime(out.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z"))


def test_certificate_obtained_over_http01(host):
    name = site(host)
    log = caddy_log(host, name)
    obtained = [e for e in log if e.get("msg") in ("certificate obtained successfully",
                                                   "certificate renewed successfully")]
    # Pebble's validation requests reached Caddy on port 80 (the site's HTTP
    # block redirects everything else to HTTPS) and were answered by Caddy.
    http01 = [e for e in log if e.get("msg") == "served key authentication" and e.get("challenge") == "http-01"]
    assert obtained, f"no certificate for {name} in Caddy's log"
    assert http01, f"no HTTP-01 validation for {name} in Caddy's log"
    assert all(e.get("ca", f"https://{ACME}:14000/dir") == f"https://{ACME}:14000/dir"
               for e in log if e.get("msg") == "trying to solve challenge")
    crt = host.file(f"{STORAGE}/{name}/{name}.crt")
    assert crt.exists and crt.user == "caddy"
    issuer = host.check_output(f"openssl x509 -in {STORAGE}/{name}/{name}.crt -noout -issuer")
    assert "Pebble Intermediate CA" in issuer
    print(f"\n[caddy acme] {host.backend.hostname}: {len(obtained)} certificate(s) for {name} from {ACME}, "
          f"{len(http01)} HTTP-01 validation request(s) answered")


def test_caddy_trusts_the_acme_server_through_caddy_acme_ca_root(host):
    caddyfile = host.file("/etc/caddy/Caddyfile").content_string
    assert f"\tacme_ca https://{ACME}:14000/dir\n" in caddyfile
    assert f"\tacme_ca_root {ACME_CA_ROOT}\n" in caddyfile
    root = host.file(ACME_CA_ROOT)
    assert (root.user, root.mode) == ("root", 0o644)
    # Pebble's HTTPS endpoint is not trusted by the system, only by that file.
    assert host.run(f"curl -sS --max-time 10 -o /dev/null https://{ACME}:14000/dir").rc != 0
    assert host.run(f"curl -sS --max-time 10 --cacert {ACME_CA_ROOT} -o /dev/null https://{ACME}:14000/dir").rc == 0


def test_served_chain_verifies_against_the_acme_root(host):
    name = site(host)
    good = served_chain(host, name, issued_root(host))
    assert good.rc == 0 and "Verify return code: 0 (ok)" in good.stdout, good.stdout[-2000:]
    # The same check fails against another root: it can fail.
    bad = served_chain(host, name, ACME_CA_ROOT)
    assert bad.rc != 0 and "Verify return code: 0 (ok)" not in bad.stdout
    out = host.check_output(f"curl -sS --max-time 10 --cacert {ISSUED_ROOT} https://{name}/acme")
    assert out.startswith("upstream=a path=/acme")


def test_acme_site_redirects_http_to_https(host):
    name = site(host)
    out = host.check_output(f"curl -sS --max-time 10 -o /dev/null -w '%{{http_code}} %{{redirect_url}}' "
                            f"http://{name}/some/path?q=1")
    code, location = out.split(" ", 1)
    assert code in ("301", "308"), out
    assert location == f"https://{name}/some/path?q=1"


def test_caddy_renews_the_certificate(host):
    """Caddy renews on its own (renew_interval 15s, 120 s certificates), over
    HTTP-01 again (Pebble reuses no authorization), and serves the renewed
    certificate: its notBefore is the last renewal's time, long after the
    first certificate. Waits for a renewal only if none happened yet."""
    name = site(host)
    deadline = time.monotonic() + RENEWAL_WAIT
    while True:
        log = caddy_log(host, name)
        renewed = [e for e in log if e.get("msg") == "certificate renewed successfully"]
        if renewed or time.monotonic() > deadline:
            break
        time.sleep(5)
    first = min(e["ts"] for e in log if e.get("msg") == "certificate obtained successfully")
    assert renewed, f"no renewal of {name} within {RENEWAL_WAIT} s"
    served = served_not_before(host, name)
    assert served >= renewed[-1]["ts"] - 10 and served > first + 30, (first, renewed[-1]["ts"], served)
    http01 = [e for e in log if e.get("msg") == "served key authentication" and e.get("challenge") == "http-01"]
    good = served_chain(host, name, issued_root(host))
    assert good.rc == 0, good.stdout[-2000:]
    print(f"\n[caddy acme] {host.backend.hostname}: {len(renewed)} renewal(s) of {name} "
          f"{renewed[-1]['ts'] - first:.0f} s after the first certificate; "
          f"{len(http01)} HTTP-01 validation requests answered in all")
