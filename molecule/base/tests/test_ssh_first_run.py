"""The README's first run over SSH, on Debian 13 (the release to start on;
the lock-down itself is proven on both in test_ssh.py): as on a fresh VPS
(root logs in with a key), a run as root whose deploy user cannot log in with
the controller's key fails naming the variables and leaves sshd alone; with
the key, the run locks root out and deploy gets in."""

import json
import os

from test_ssh import DROPIN, SCENARIO_DIR, address, over_ssh, refused, ssh, wait_for_sshd

testinfra_hosts = ["ansible://base-debian13"]


def test_a_first_run_as_root_locks_root_out_only_after_proving_the_deploy_login(host, node, tmp_path):
    ip = address(node)
    # As a fresh VPS: root logs in with its key (the base drop-in removed).
    node.check_output(f"rm -f {DROPIN} && systemctl reload ssh")
    wait_for_sshd(node)
    assert ssh(ip, "root", "true").returncode == 0

    # deploy without the controller's key: the proof fails, sshd is untouched.
    vars_yml = os.path.join(SCENARIO_DIR, "vars.yml")
    fixed = [line.strip()[2:] for line in open(vars_yml) if line.strip().startswith("- ssh-ed25519")]
    rc, out, _ = over_ssh(host, ip, "root", "-e", json.dumps({"base_deploy_authorized_keys": fixed}), tmp=tmp_path)
    assert rc != 0 and "base_ssh_permit_root_login: no would lock this run out" in out, out[-3000:]
    assert not node.file(DROPIN).exists
    assert ssh(ip, "root", "true").returncode == 0

    # The README's first run: as root, the controller's key in the inventory.
    rc, out, changed = over_ssh(host, ip, "root", tmp=tmp_path)
    assert rc == 0 and changed > 0, out[-3000:]
    assert refused(ssh(ip, "root", "true"))
    assert ssh(ip, "deploy", "sudo", "-n", "true").returncode == 0
