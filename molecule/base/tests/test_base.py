"""Prove the base role from outside: firewall verdicts on real connections,
ufw/iptables state, the deploy user's key and sudo, that bad input fails
before the host changes, and that unattended-upgrades holds back the listed
packages while apt's hooks report their pending updates as metrics."""

import json
import os
import re
import subprocess
import tempfile
import time

import pytest
import testinfra
import yaml

SCENARIO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARS = yaml.safe_load(open(os.path.join(SCENARIO_DIR, "vars.yml")))
PORTS = (22, 80, 443, 9991, 9992, 9993)
HOLD_DEFAULTS = ["postgresql-[0-9]+$", "pgbouncer$", "caddy$"]
HELD_FILE = "/var/lib/molecule-base/held.json"
METRICS = "/var/lib/prometheus/node-exporter/stack_held_updates.prom"
STATE = "/var/lib/stack-held-updates/state.json"


def peer_name(host):
    """The name of the scenario's other container."""
    name = host.backend.host
    return name.replace("debian12", "debian13") if name.endswith("debian12") else name.replace("debian13", "debian12")


def peer_of(host):
    """The scenario's other container, as a testinfra host."""
    return testinfra.get_host(f"docker://{peer_name(host)}")


def address(host):
    return host.check_output("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1")


def firewall_state(host):
    return host.check_output("ufw status verbose") + "\n" + host.check_output("iptables -S")


def test_ufw_default_deny_and_rules(host, node):
    status = node.check_output("ufw status verbose")
    print(status)
    assert "Status: active" in status
    assert "Default: deny (incoming), allow (outgoing)" in status
    rules = [line.split() for line in status.splitlines() if "ALLOW IN" in line and "(v6)" not in line]
    allowed = {(r[0], r[3]) for r in rules}
    peer_ip = address(peer_of(host))
    assert ("22/tcp", "Anywhere") in allowed
    assert ("80/tcp", "Anywhere") in allowed
    assert ("443/tcp", "Anywhere") in allowed
    assert ("443/udp", "Anywhere") in allowed
    # 9991 only from the peer and the configured network; 9992 only from its network.
    assert {src for port, src in allowed if port == "9991/tcp"} == {peer_ip, "192.0.2.0/24"}
    assert {src for port, src in allowed if port == "9992/tcp"} == {"198.51.100.0/24"}
    assert not [r for r in rules if r[0].startswith("9993")]


def test_iptables_drop_by_default_and_source_restricted_accept(host, node):
    rules = node.check_output("iptables -S")
    assert "-P INPUT DROP" in rules
    peer_ip = address(peer_of(host))
    assert f"-A ufw-user-input -s {peer_ip}/32 -p tcp -m tcp --dport 9991 -j ACCEPT" in rules
    assert "-A ufw-user-input -s 192.0.2.0/24 -p tcp -m tcp --dport 9991 -j ACCEPT" in rules
    assert "-A ufw-user-input -s 198.51.100.0/24 -p tcp -m tcp --dport 9992 -j ACCEPT" in rules
    assert "--dport 9991 -j ACCEPT" not in "\n".join(
        line for line in rules.splitlines() if " -s " not in line)


def test_ports_from_the_peer(host, node):
    """Listeners on every port; the other container connects to each.

    Expected: 22, 80, 443 and 9991 (the peer is an allowed source) connect;
    9992 (open only to 198.51.100.0/24) and 9993 (no rule) time out.
    """
    ports = " ".join(str(p) for p in PORTS if p != 22)
    # A throw-away listener per free port (sshd has 22 here: prepare.yml
    # installs it), gone after 60 s.
    listeners = node.run(
        f"for p in {ports} 22; do (ss -Hltn \"sport = :$p\" | grep -q . || "
        "setsid timeout 60 python3 -c 'import socket,sys;s=socket.socket();"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind((\"0.0.0.0\",int(sys.argv[1])));"
        "s.listen(16)\nwhile True: s.accept()[0].close()' $p </dev/null >/dev/null 2>&1 &); done; sleep 1; ss -Hltn")
    assert listeners.rc == 0, listeners.stderr
    target = address(node)
    # Reachable from inside the host itself (loopback is always allowed).
    for port in PORTS:
        assert node.run(f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 2)'"
                        ).rc == 0, f"nothing listens on {port}"
    client = peer_of(host)
    results = {}
    for port in PORTS:
        probe = client.run(f"python3 -c 'import socket; socket.create_connection((\"{target}\", {port}), 2)'")
        results[port] = "open" if probe.rc == 0 else "filtered"
    print(f"from {address(client)} to {target}: {results}")
    assert results == {22: "open", 80: "open", 443: "open", 9991: "open", 9992: "filtered", 9993: "filtered"}


def test_deploy_user_key_and_sudo(host, node):
    user = node.user("deploy")
    assert user.exists and user.shell == "/bin/bash"
    assert node.check_output("passwd -S deploy").split()[1] == "L"
    keys = node.file("/home/deploy/.ssh/authorized_keys")
    assert keys.user == "deploy" and keys.mode == 0o600
    controller = open(os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "ssh_key.pub")).read().strip()
    assert keys.content_string.strip().splitlines() == VARS["molecule_deploy_keys"] + [controller]
    assert node.file("/home/deploy/.ssh").mode == 0o700
    assert node.run("visudo -c").rc == 0
    sudoers = node.file("/etc/sudoers.d/50-deploy")
    assert sudoers.mode == 0o440 and sudoers.user == "root"
    # Passwordless sudo really works for the deploy user.
    assert node.check_output("su - deploy -c 'sudo -n id -u'") == "0"


def test_timezone_and_journald(host, node):
    # base_timezone UTC, written by its canonical name as tzdata's updates write it.
    assert node.file("/etc/localtime").linked_to == "/usr/share/zoneinfo/Etc/UTC"
    assert node.file("/etc/timezone").content_string == "Etc/UTC\n"
    assert node.check_output("date +%Z") == "UTC"
    conf = node.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert "SystemMaxUse=64M" in conf and "Storage=persistent" in conf
    assert node.file("/var/log/journal").is_directory
    assert node.check_output("apt-config dump APT::Periodic::Unattended-Upgrade") == \
        'APT::Periodic::Unattended-Upgrade "1";'


@pytest.fixture(scope="module")
def check_mode_run():
    """One `--check --diff` run over both converged hosts (it is slow)."""
    proc = subprocess.run(
        ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"],
         os.path.join(SCENARIO_DIR, "converge.yml"), "--check", "--diff"],
        capture_output=True, text=True, timeout=600, check=False)
    return proc.returncode, proc.stdout + proc.stderr


def test_check_mode_on_converged_host_changes_nothing(host, check_mode_run):
    rc, out = check_mode_run
    recap = [line for line in out.splitlines() if line.startswith(host.backend.host + " ") and "ok=" in line]
    print(recap)
    assert rc == 0, out[-3000:]
    assert recap and "changed=0" in recap[-1] and "failed=0" in recap[-1]


# One bad input per host keeps the scenario fast; the filter's unit tests
# cover every message. Debian 12 gets the port, Debian 13 the CIDR.
BAD_RULES = {
    "debian12": ([{"port": 9991, "from": ["10.0.0.0/8"]}, {"port": 70000}],
                 "base_firewall_rules[1]: 'port' 70000 is outside 1-65535"),
    "debian13": ([{"port": 9991, "from": ["10.0.0.300/8"]}],
                 "base_firewall_rules[0].from[0]: '10.0.0.300/8' is not a valid IP address or CIDR network"),
}


def test_bad_rule_fails_before_anything_changes(host, node, playbook):
    rules, expected = BAD_RULES[host.backend.host.rsplit("-", 1)[1]]
    before = firewall_state(node)
    rc, out = playbook("-e", json.dumps({"base_firewall_rules": rules}))
    print(f"bad rules {rules}: rc={rc}")
    assert rc != 0
    assert expected in out, out[-3000:]
    assert "changed=0" in out
    assert firewall_state(node) == before


def test_unmanaged_rule_is_removed(host, node, playbook):
    node.check_output("ufw allow 12345/tcp")
    assert "12345/tcp" in node.check_output("ufw status")
    rc, out = playbook("--tags", "base_firewall")
    assert rc == 0, out[-3000:]
    assert "item=delete allow 12345/tcp" in out, out[-3000:]
    assert "12345" not in node.check_output("ufw status")
    assert "Status: active" in node.check_output("ufw status")


# ------------------------------------------------------------ held updates

# unattended-upgrade's dry run takes 12-40 s per host (it simulates every
# upgrade): both hosts' runs start with the first test (in the background,
# before anything below touches apt) and the test that reads them waits.
# MinimalSteps off (APT_CONFIG, read on top of apt.conf.d) makes it one
# simulation instead of one per package; which packages it keeps back and
# why does not depend on it.
DRY_RUN = ("printf 'Unattended-Upgrade::MinimalSteps \"false\";\\n' > /run/uu-one-step.conf && "
           "APT_CONFIG=/run/uu-one-step.conf unattended-upgrade --dry-run -d")
_dry_runs = {}


@pytest.fixture(autouse=True)
def _start_dry_runs(host):
    for name in (host.backend.host, peer_name(host)):
        if name not in _dry_runs:
            log = tempfile.TemporaryFile()  # pylint: disable=consider-using-with  # read by dry_run()
            _dry_runs[name] = (subprocess.Popen(["docker", "exec", name, "sh", "-c", DRY_RUN],
                                                stdout=log, stderr=subprocess.STDOUT), log)


def dry_run(name):
    proc, log = _dry_runs[name]
    rc = proc.wait(timeout=300)
    log.seek(0)
    return rc, log.read().decode()


def held_package(node):
    """What prepare.yml chose: {package, installed, candidate}."""
    return json.loads(node.file(HELD_FILE).content_string)


def allowed_upgrades(node):
    """The upgradable packages (apt list --upgradable) whose new version
    comes from an origin Debian's 50unattended-upgrades allows: the release
    and <release>-security, not <release>-updates."""
    out = node.check_output("apt list --upgradable 2>/dev/null")
    found = {}
    for match in re.finditer(r"^([^/\s]+)/(\S+) ", out, re.M):
        found[match.group(1)] = match.group(2).split(",")
    return {name for name, archives in found.items() if any(not a.endswith("-updates") for a in archives)}


def samples(node):
    """The metrics file's samples: {name{labels}: value}."""
    return dict(line.rsplit(" ", 1) for line in node.file(METRICS).content_string.splitlines()
                if line and not line.startswith("#"))


def test_apt_holds_the_servers_and_runs_the_check_after_updates_and_dpkg(host, node):
    held = held_package(node)["package"]
    assert node.check_output("apt-config dump Unattended-Upgrade::Package-Blacklist").splitlines() == [
        'Unattended-Upgrade::Package-Blacklist "";'] + [
        f'Unattended-Upgrade::Package-Blacklist:: "{p}";' for p in HOLD_DEFAULTS + [re.escape(held) + "$"]]
    hook = (f"if [ -x /usr/local/sbin/stack-held-updates ]; then /usr/local/sbin/stack-held-updates "
            f"--state {STATE} --metrics {METRICS} || true; fi")
    for key in ("APT::Update::Post-Invoke-Success", "DPkg::Post-Invoke"):
        assert f'{key}:: "{hook}";' in node.check_output(f"apt-config dump {key}").splitlines(), key


def test_unattended_upgrade_keeps_the_held_package_back_and_upgrades_the_others(host, node):
    """Debian 12 (unattended-upgrades 2.9.1) and 13 (2.12) word it alike in a
    dry run: 'Initial blacklist: ...', 'skipping blacklisted package X', 'pkg X
    package has been blacklisted', and X missing from 'Packages that will be
    upgraded: ...' (the 'Package X is blacklisted.' excuse and 'Packages that
    are kept back:' only come from a real run)."""
    held = held_package(node)["package"]
    rc, out = dry_run(host.backend.host)
    lines = out.splitlines()
    assert rc == 0, out[-3000:]
    assert f"Initial blacklist: {' '.join(HOLD_DEFAULTS + [re.escape(held) + '$'])}" in lines, out[:2000]
    assert f"skipping blacklisted package {held}" in lines and f"pkg {held} package has been blacklisted" in lines
    upgraded = [line.split(": ", 1)[1].split() for line in lines if line.startswith("Packages that will be upgraded: ")]
    expected = allowed_upgrades(node) - {held}
    print(f"held back: {held}; upgraded: {upgraded}")
    assert expected, f"no other update pending to prove that the rest still upgrades: {allowed_upgrades(node)}"
    assert upgraded and set(upgraded[0]) == expected, (upgraded, expected)


def test_the_metrics_name_the_held_update_and_keep_its_since_time(host, node):
    """After `apt-get update` (the hook, with state and metrics removed first)
    the metrics list the held package with its versions and since-time; a
    second update keeps that time and advances the check time."""
    held = held_package(node)
    node.check_output(f"rm -f {METRICS} {STATE}")
    before = int(time.time()) - 1
    node.check_output("apt-get update -qq")
    after = int(time.time()) + 1
    first = samples(node)
    name = held["package"]
    since_key = f'stack_held_update_pending_since_timestamp_seconds{{package="{name}"}}'
    print(first)
    assert set(first) == {
        "stack_held_updates_pending",
        f'stack_held_update_pending{{package="{name}",installed="{held["installed"]}",candidate="{held["candidate"]}"}}',
        since_key, "stack_held_updates_last_check_timestamp_seconds"}
    assert first["stack_held_updates_pending"] == "1"
    assert before <= int(first[since_key]) <= after
    metrics = node.file(METRICS)
    assert metrics.user == "root" and metrics.mode == 0o644
    # The next whole second, so that the check time must move.
    time.sleep(max(0.0, int(first["stack_held_updates_last_check_timestamp_seconds"]) + 1.05 - time.time()))
    node.check_output("apt-get update -qq")
    second = samples(node)
    assert second[since_key] == first[since_key]
    assert int(second["stack_held_updates_last_check_timestamp_seconds"]) > \
        int(first["stack_held_updates_last_check_timestamp_seconds"])
    # Written by rename: no temporary file is left beside it.
    assert node.check_output("ls -A /var/lib/prometheus/node-exporter") == "stack_held_updates.prom"


def test_a_failing_check_never_fails_apt(host, node):
    """The state directory replaced by a file: apt-get update still succeeds
    and the error goes to apt's output and the journal (the next test's dpkg
    run makes the directory again)."""
    node.check_output("rm -rf /var/lib/stack-held-updates && touch /var/lib/stack-held-updates")
    try:
        update = node.run("apt-get update -qq")
        assert update.rc == 0, update.stderr
        assert "stack-held-updates: checking the held updates failed: FileExistsError" in update.stderr
        node.check_output("journalctl --sync")
        journal = node.check_output("journalctl -q -t stack-held-updates --no-pager -n 5")
        assert "checking the held updates failed: FileExistsError" in journal, journal
    finally:
        node.check_output("rm -f /var/lib/stack-held-updates")


def test_installing_the_held_update_clears_it(host, node):
    """What playbooks/update.yml does: the held package upgraded (a dpkg run,
    the other hook) leaves the state (made again after the previous test
    removed it) and the metrics."""
    held = held_package(node)
    node.check_output(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --only-upgrade {held['package']}")
    assert node.check_output(f"dpkg-query -W -f '${{Version}}' {held['package']}") == held["candidate"]
    assert set(samples(node)) == {"stack_held_updates_pending", "stack_held_updates_last_check_timestamp_seconds"}
    assert samples(node)["stack_held_updates_pending"] == "0"
    assert json.loads(node.file(STATE).content_string) == {"packages": {}}
