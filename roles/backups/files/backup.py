#!/usr/bin/python3
"""PostgreSQL backup runner installed by the Ansible role `backups`: the
command the systemd units and /usr/local/sbin/<name> run.

  backup.py --config FILE run|verify|restore|list|status|alert ...   (--help for each)

The code is the package backups_runner beside this file (one module per
concern: see backups_runner/__init__.py) and backups_lib.py (set names and
retention, the same file as filter_plugins/backups.py).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from backups_runner.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
