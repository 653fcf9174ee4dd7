"""The whole stack as users reach a VPS: converge.yml ran site.yml over SSH,
first as root on the fresh host, then (Molecule's idempotence run) as deploy
with changed=0. After the first run sshd refuses root and passwords, and
deploy gets in with the controller's key and has sudo."""

import os
import subprocess

import pytest
import yaml

EPHEMERAL = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/nonexistent")
KEY = os.path.join(EPHEMERAL, "ssh_key")
OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
        "-o", "LogLevel=ERROR"]


@pytest.fixture(scope="module")
def address():
    with open(os.path.join(EPHEMERAL, "ssh", "inventory.yml"), encoding="utf-8") as handle:
        hosts = yaml.safe_load(handle)["all"]["hosts"]
    entry = hosts["stack-default"]
    assert entry["ansible_connection"] == "ssh" and entry["ansible_user"] == "deploy", entry
    return entry["ansible_host"]


def ssh(address, user, *command, auth=("-o", "BatchMode=yes", "-i", KEY)):
    return subprocess.run(["ssh", *OPTS, *auth, f"{user}@{address}", *command],
                          capture_output=True, text=True, timeout=60, check=False)


def refused(result):
    return result.returncode == 255 and "Permission denied" in result.stderr


def test_deploy_logs_in_with_the_key_and_has_sudo(address):
    result = ssh(address, "deploy", "sudo", "-n", "id", "-un")
    assert result.returncode == 0 and result.stdout.strip() == "root", result.stderr


def test_root_and_passwords_are_refused(host, address):
    assert refused(ssh(address, "root", "true"))
    # A password login is not even offered: only publickey is left.
    password = ssh(address, "deploy", "true", auth=("-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
                                                     "-o", "PreferredAuthentications=password,keyboard-interactive"))
    assert refused(password) and "(publickey)" in password.stderr, password.stderr
    effective = host.check_output("sshd -T").splitlines()
    for line in ("permitrootlogin no", "passwordauthentication no", "kbdinteractiveauthentication no"):
        assert line in effective, line
