"""Fixtures for the postgresql scenario's testinfra tests."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared"))

from fixtures import playbook  # noqa: E402,F401  (a fixture, used by name)
