"""Shared fixtures for the base scenario's testinfra tests."""

import os
import subprocess

import pytest
import testinfra

SCENARIO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def playbook(host):
    """Run converge.yml against this test's host only; return (rc, output)."""

    def run(*args, playbook="converge.yml"):
        cmd = [
            "ansible-playbook",
            "-i", os.environ["MOLECULE_INVENTORY_FILE"],
            "--limit", host.backend.host,
            os.path.join(SCENARIO_DIR, playbook),
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        return proc.returncode, proc.stdout + proc.stderr

    return run


@pytest.fixture
def node(host):
    """The same container through `docker exec`: much faster than the
    ansible backend for the many small commands the tests run."""
    return testinfra.get_host(f"docker://{host.backend.host}")
