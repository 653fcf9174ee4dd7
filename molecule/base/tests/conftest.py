"""Shared fixtures for the base scenario's testinfra tests."""

import os
import sys

import pytest
import testinfra

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared"))

from fixtures import playbook  # noqa: E402,F401  (a fixture, used by name)


@pytest.fixture
def node(host):
    """The same container through `docker exec`: much faster than the
    ansible backend for the many small commands the tests run."""
    return testinfra.get_host(f"docker://{host.backend.host}")
