"""SSH as users reach a VPS, on both releases: the converge (through
`docker exec`) locked sshd down; the controller's key gets in as deploy with
sudo, root and passwords are refused; a run over SSH as deploy changes
nothing. The first run as root: test_ssh_first_run.py."""

import os
import re
import subprocess

import pytest
import yaml

SCENARIO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DROPIN = "/etc/ssh/sshd_config.d/01-base.conf"
KEY = os.path.join(os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent"), "ssh_key")
OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
        "-o", "LogLevel=ERROR"]


def address(node):
    return node.check_output("ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -1")


def ssh(ip, user, *command, auth=("-o", "BatchMode=yes", "-i", KEY)):
    return subprocess.run(["ssh", *OPTS, *auth, f"{user}@{ip}", *command],
                          capture_output=True, text=True, timeout=60, check=False)


def over_ssh(host, ip, user, *args, tmp):
    """converge.yml against this host over SSH as `user`, from Molecule's
    inventory with this host's connection changed (in the inventory, not
    with -e: extra vars would also send the tasks delegated to localhost
    over SSH); returns (rc, output, changed)."""
    with open(os.environ["MOLECULE_INVENTORY_FILE"], encoding="utf-8") as handle:
        inventory = yaml.safe_load(handle)
    # Molecule's groups alias the same mapping of the host's variables.
    inventory["all"]["hosts"][host.backend.host].update({
        "ansible_connection": "ssh", "ansible_host": ip, "ansible_user": user,
        "ansible_ssh_private_key_file": KEY, "ansible_ssh_common_args": " ".join(OPTS)})
    path = tmp / f"ssh-{user}.yml"
    path.write_text(yaml.safe_dump(inventory))
    cmd = ["ansible-playbook", "-i", str(path), "--limit", host.backend.host, "--become",
           os.path.join(SCENARIO_DIR, "converge.yml"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    recap = re.findall(rf"^{re.escape(host.backend.host)}\s+:.*changed=(\d+)", out, re.M)
    return proc.returncode, out, int(recap[-1]) if recap else None


def wait_for_sshd(node):
    """sshd re-executes itself on a reload: wait until it listens again."""
    node.check_output("for i in $(seq 50); do ss -Hltn 'sport = :22' | grep -q . && exit 0; sleep 0.2; done; exit 1")


def refused(result):
    return result.returncode == 255 and "Permission denied" in result.stderr


@pytest.fixture
def ip(node):
    return address(node)


def test_sshd_is_locked_down_and_the_deploy_user_gets_in(node, ip):
    effective = node.check_output("sshd -T")
    for line in ("permitrootlogin no", "passwordauthentication no", "kbdinteractiveauthentication no",
                 "x11forwarding no", "maxauthtries 3"):
        assert line in effective.splitlines(), line
    root = ssh(ip, "root", "true")
    assert refused(root), root
    deploy = ssh(ip, "deploy", "sudo", "-n", "id", "-un")
    assert deploy.returncode == 0 and deploy.stdout.strip() == "root", deploy
    # The server offers no password method at all.
    password = ssh(ip, "deploy", "true", auth=("-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no"))
    assert password.returncode == 255 and "Permission denied (publickey)" in password.stderr, password


def test_a_run_over_ssh_as_deploy_changes_nothing(host, ip, tmp_path):
    rc, out, changed = over_ssh(host, ip, "deploy", tmp=tmp_path)
    assert rc == 0 and changed == 0, out[-3000:]
