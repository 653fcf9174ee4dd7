"""Behaviour of the caddy role, proven from outside the proxy (curl inside the container)."""

import hashlib
import json
import os
import re
import shlex
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared"))

from stacktest import CADDY_CA as ROOT_CA  # noqa: E402  (the one definition the tests share)


def curl(host, url, *extra):
    """GET url through Caddy on 127.0.0.1; returns (headers lowercased, body)."""
    name = re.match(r"https?://([^/:]+)", url).group(1)
    port = 443 if url.startswith("https") else 80
    cmd = ["curl", "-sS", "--max-time", "10", "--cacert", ROOT_CA,
           "--resolve", f"{name}:{port}:127.0.0.1", "-D", "-", *extra, url]
    out = host.check_output(" ".join(shlex.quote(c) for c in cmd))
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    return head.lower(), body


def test_https_proxies_upstream_with_security_headers(host):
    head, body = curl(host, "https://api.test/")
    assert head.startswith("http/2 200")
    assert re.search(r"upstream=(a|b) path=/\n", body)
    assert "x-content-type-options: nosniff" in head
    assert "x-frame-options: deny" in head
    assert "referrer-policy: strict-origin-when-cross-origin" in head
    assert "strict-transport-security: max-age=31536000; includesubdomains" in head
    assert "\nserver:" not in head, "the Server header must be removed"


def test_gzip_when_asked(host):
    head, _ = curl(host, "https://api.test/", "-H", "Accept-Encoding: gzip", "-o", "/dev/null")
    assert "content-encoding: gzip" in head


def test_plain_http_redirects_to_https(host):
    head, _ = curl(host, "http://api.test/some/path")
    assert re.match(r"http/1\.1 30[18]", head)
    assert "location: https://api.test/some/path" in head
    assert "\nserver:" not in head, "the redirect must not send a Server header either"


def test_api_and_web_reach_different_upstreams(host):
    _, api = curl(host, "https://www.test/api/items")
    _, web = curl(host, "https://www.test/about")
    assert api.startswith("upstream=a path=/api/items")
    assert web.startswith("upstream=web path=/about")


def test_redirect_route(host):
    head, _ = curl(host, "https://www.test/old/page")
    assert head.startswith("http/2 301")
    assert "location: /new/old/page" in head


def test_static_from_disk_with_long_cache(host):
    head, body = curl(host, "https://api.test/static/x")
    assert head.startswith("http/2 200")
    assert body.strip() == "static file from disk"
    assert "cache-control: public, max-age=31536000, immutable" in head


LOSS_SCRIPT = r"""
set -u
ok=0; fail=0; n=0
( sleep 2; systemctl stop caddy-test-upstream-a; systemctl is-active caddy-test-upstream-a > /tmp/upstream-a-while-stopped;
  sleep 4; systemctl start caddy-test-upstream-a ) &
stopper=$!
end=$((SECONDS + 9))
while [ $SECONDS -lt $end ] && [ $n -lt 3000 ]; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 --cacert ROOT \
    --resolve api.test:443:127.0.0.1 https://api.test/ || true)
  n=$((n + 1))
  if [ "$code" = 200 ]; then ok=$((ok + 1)); else fail=$((fail + 1)); fi
done
wait $stopper
echo "requests=$n ok=$ok failures=$fail"
systemctl is-active caddy-test-upstream-a
cat /tmp/upstream-a-while-stopped
""".replace("ROOT", ROOT_CA)


def test_stopping_an_upstream_loses_no_requests(host):
    out = host.check_output("bash -c %s", LOSS_SCRIPT)
    print(f"\n[caddy zero-loss] {host.backend.hostname}: {out.splitlines()[0]} (upstream a stopped 4 s)")
    figures = dict(kv.split("=") for kv in out.splitlines()[0].split())
    # A floor proving the loop ran through the stop window (the machine may be busy).
    assert int(figures["requests"]) >= 20, out
    assert int(figures["failures"]) == 0, out
    assert out.splitlines()[1] == "active"
    # The upstream really was down in the window (systemctl is-active after the stop).
    assert out.splitlines()[2] == "inactive", out


def test_admin_api_only_on_the_unix_socket(host):
    sock = host.file("/run/caddy/admin.sock")
    assert sock.is_socket
    assert sock.user == "caddy"
    assert sock.mode & 0o077 == 0
    assert ":2019" not in host.check_output("ss -ltnH")
    # Caddy 2.6 accepts an empty Host header on its unix socket.
    config = host.check_output("curl -sS --unix-socket /run/caddy/admin.sock -H 'Host: ' http://localhost/config/")
    assert '"admin"' in config and "unix//run/caddy/admin.sock" in config


def test_environment_file_is_private_and_not_logged(host):
    env = host.file("/etc/caddy/caddy.env")
    assert env.mode == 0o600 and env.user == "root"
    assert 'CADDY_TEST_TOKEN="not-a-real-secret"' in env.content_string
    journal = host.check_output("journalctl -u caddy --no-pager -o cat")
    assert "not-a-real-secret" not in journal
    environ = host.check_output("tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value caddy)/environ")
    assert "CADDY_TEST_TOKEN=not-a-real-secret" in environ


def exposure(host, unit):
    out = host.check_output(f"systemd-analyze security {unit} --no-pager")
    line = out.strip().splitlines()[-1]
    match = re.search(r"exposure level for \S+: ([0-9.]+) (\S+)", line)
    assert match, line
    return float(match.group(1)), match.group(2)


PROBE = "/etc/systemd/system/caddy-packaged-probe.service"


def test_hardening_score(host):
    """Score the live unit (with the role's drop-in) and the packaged unit alone.

    The packaged unit file is loaded under another name (so no drop-in applies)
    without being started, scored, and removed again.
    """
    packaged = host.check_output("systemctl show -p FragmentPath --value caddy")
    try:
        host.check_output(f"cp {packaged} {PROBE} && systemctl daemon-reload")
        before, before_label = exposure(host, "caddy-packaged-probe.service")
    finally:
        host.check_output(f"rm -f {PROBE} && systemctl daemon-reload")
    after, after_label = exposure(host, "caddy")
    print(f"\n[caddy hardening] {host.backend.hostname}: systemd-analyze security: "
          f"packaged unit {before} {before_label}, with the role's drop-in {after} {after_label}")
    assert after <= 2.0
    assert after < before
    assert host.service("caddy").is_running


def test_listen_backlog_not_cut_by_hardening(host):
    somaxconn = host.check_output("cat /proc/sys/net/core/somaxconn").strip()
    listeners = host.check_output("ss -ltnH 'sport = :443'").split()
    assert listeners and listeners[2] == somaxconn, listeners


def test_access_log_written(host):
    curl(host, "https://www.test/logged")
    log = host.file("/var/log/caddy/access-www.test.log")
    assert log.exists and log.user == "caddy"
    assert '"uri":"/logged"' in log.content_string


def test_known_good_copies_match_the_live_files_and_keep_secrets_private(host):
    """After converge, side_effect and healing: the known-good copies are the live files."""
    live, good = host.file("/etc/caddy/Caddyfile"), host.file("/etc/caddy/Caddyfile.good")
    assert good.sha256sum == live.sha256sum
    assert (good.user, good.group, good.mode) == (live.user, live.group, live.mode) == ("root", "caddy", 0o640)
    directory = host.file("/etc/caddy/known-good")
    assert directory.is_directory and directory.user == "root" and directory.mode == 0o700
    for name, live_path in (("10-ansible.conf", "/etc/systemd/system/caddy.service.d/10-ansible.conf"),
                            ("caddy.env", "/etc/caddy/caddy.env")):
        copy = host.file(f"/etc/caddy/known-good/{name}")
        assert copy.sha256sum == host.file(live_path).sha256sum, name
        assert (copy.user, copy.group, copy.mode) == ("root", "root", 0o600), name
    # The caddy user (and anyone but root) cannot read the copy of the secrets.
    assert host.run("runuser -u caddy -- cat /etc/caddy/known-good/caddy.env").rc != 0
    raw = host.file("/etc/caddy/known-good/settings.json").content_string
    record = json.loads(raw)
    assert record["caddy_https_port"] == 443 and record["caddy_http_port"] == 80
    assert [site["address"] for site in record["caddy_sites"]] == [
        "api.test", "www.test", f"{host.backend.hostname}.stack.test"]
    assert record["caddy_acme_ca"] == "https://acme.stack.test:14000/dir"
    # A digest of the certificate (the PEM text, trimmed), never a path.
    pem = host.file("/etc/caddy/acme-ca-root.pem").content_string.strip()
    assert record["caddy_acme_ca_root"] == hashlib.sha256(pem.encode()).hexdigest()
    assert record["caddy_environment"]["CADDY_TEST_TOKEN"].startswith("sha256:")
    assert "not-a-real-secret" not in raw
    print(f"\n[caddy known-good] {host.backend.hostname}: Caddyfile.good sha256 {good.sha256sum} = live; "
          f"record of {len(record)} settings, CADDY_TEST_TOKEN as {record['caddy_environment']['CADDY_TEST_TOKEN']}")
