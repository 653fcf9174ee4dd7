"""pytest fixtures shared by the Molecule scenarios' testinfra tests.

A scenario's tests/conftest.py imports them:
    sys.path.insert(0, <repo>/molecule/shared); from fixtures import playbook
"""

import os
import subprocess

import pytest


@pytest.fixture
def playbook(host, request):
    """Run a playbook of the calling scenario (converge.yml by default)
    against this test's host only; return (rc, output)."""
    scenario_dir = str(request.path.parent.parent)

    def run(*args, playbook="converge.yml"):
        cmd = [
            "ansible-playbook",
            "-i", os.environ["MOLECULE_INVENTORY_FILE"],
            "--limit", host.backend.host,
            os.path.join(scenario_dir, playbook),
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        return proc.returncode, proc.stdout + proc.stderr

    return run
