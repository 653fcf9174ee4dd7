"""Unit tests for the app_service role's build and git source tasks: the
lock-file detection script (run as the task runs it, on sample releases) and
the deploy key's handling (what the tasks pass to ansible.builtin.git and
where the key appears). The git key is not exercised against a git host
here: the Molecule scenarios have none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles" / "app_service"


def _tasks(name: str) -> list[dict]:
    return yaml.safe_load((ROLE / "tasks" / name).read_text())


def _task(tasks: list[dict], name: str) -> dict:
    for task in tasks:
        if task.get("name") == name:
            return task
        for inner in task.get("block", []):
            if inner.get("name") == name:
                return inner
    raise AssertionError(f"no task {name!r}")


def _detect(release: Path, lock: str = "requirements.lock", req: str = "requirements.txt") -> dict:
    argv = _task(_tasks("build_python.yml"), "Find the release's lock file")["ansible.builtin.command"]["argv"]
    assert argv[1] == "-c"
    out = subprocess.run([sys.executable, "-c", argv[2], str(release), lock, req],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


HASHED = "fastapi==0.163.2 \\\n    --hash=sha256:" + "0" * 64 + "\n"


@pytest.mark.parametrize("files, expected", [
    ({"requirements.lock": HASHED, "uv.lock": "", "requirements.txt": "fastapi\n"}, ("lock", "requirements.lock")),
    ({"uv.lock": "version = 1\n", "pyproject.toml": "", "requirements.txt": "fastapi\n"}, ("uv", "uv.lock")),
    ({"requirements.txt": HASHED}, ("hashed", "requirements.txt")),
    ({"requirements.txt": "fastapi==0.163.2\n"}, ("loose", "requirements.txt")),
    ({}, ("loose", "requirements.txt")),
])
def test_lock_detection_prefers_lock_then_uv_then_hash_pins(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    found = _detect(tmp_path)
    assert (found["kind"], found["file"]) == expected


def test_lock_detection_uses_the_configured_names(tmp_path):
    (tmp_path / "deps.lock").write_text(HASHED)
    (tmp_path / "reqs.txt").write_text(HASHED)
    assert _detect(tmp_path, lock="deps.lock", req="reqs.txt") == {"kind": "lock", "file": "deps.lock"}
    (tmp_path / "deps.lock").unlink()
    assert _detect(tmp_path, lock="deps.lock", req="reqs.txt") == {"kind": "hashed", "file": "reqs.txt"}


def test_require_lock_message_names_the_variable_and_the_files():
    task = _task(_tasks("build_python.yml"), "Refuse a release without a lock file (app_service_require_lock)")
    msg = task["ansible.builtin.assert"]["fail_msg"]
    for word in ("app_service_require_lock", "app_service_python_lock_file", "uv.lock", "--hash=",
                 "app_service_requirements_file"):
        assert word in msg


def test_locked_installs_use_require_hashes_and_no_deps():
    task = _task(_tasks("build_python.yml"), "Remember which requirements the release installs")
    args = task["ansible.builtin.set_fact"]["__app_service_pip_lock_args"]
    assert "'--require-hashes', '--no-deps'" in args and "'loose'" in args
    for name in ("Fill the wheelhouse for this requirements set (once per Python version and set)",
                 "Install the requirements from the wheelhouse only (no network)"):
        assert "__app_service_pip_lock_args" in json.dumps(_task(_tasks("build_python.yml"), name))


def test_deploy_key_is_written_root_only_and_never_logged():
    tasks = _tasks("source_git.yml")
    for task in tasks:
        text = json.dumps({k: v for k, v in task.items() if k != "when"})
        if "app_service_source_git_key }}" in text or "app_service_source_git_key | trim" in text:
            assert task.get("no_log") is True, task["name"]
    key = _task(tasks, "Install the deploy key")
    assert key["ansible.builtin.copy"]["mode"] == "0600"
    assert key["ansible.builtin.copy"]["owner"] == "root" and key["no_log"] is True
    assert _task(tasks, "Create the deploy key's directory (root only)")["ansible.builtin.file"]["mode"] == "0700"


def test_git_clone_uses_the_key_only_and_accepts_new_host_keys():
    git = _task(_tasks("source_git.yml"), "Fetch the repository and resolve the ref")["ansible.builtin.git"]
    assert git["accept_newhostkey"] is True
    assert "deploy_key" in git["key_file"] and "omit" in git["key_file"]
    assert "UserKnownHostsFile={{ __app_service_git_dir }}/known_hosts" in git["ssh_opts"]


def test_ansible_git_module_builds_the_ssh_command_with_the_key(monkeypatch):
    """What ansible.builtin.git (this ansible-core) exports for the clone:
    -i KEY with IdentitiesOnly=yes next to the role's options."""
    from ansible.modules import git as git_module

    class Module:
        params = {"accept_hostkey": False}

    monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
    monkeypatch.delenv("GIT_SSH", raising=False)
    monkeypatch.delenv("GIT_SSH_OPTS", raising=False)
    opts = "-o UserKnownHostsFile=/srv/api/git/known_hosts -o StrictHostKeyChecking=accept-new"
    git_module.set_git_ssh_env("/srv/api/git/deploy_key", opts, git_module.LooseVersion("2.39.5"), Module())
    command = os.environ["GIT_SSH_COMMAND"]
    for part in ("-i /srv/api/git/deploy_key", "IdentitiesOnly=yes", "StrictHostKeyChecking=accept-new",
                 "UserKnownHostsFile=/srv/api/git/known_hosts", "BatchMode=yes"):
        assert part in command
