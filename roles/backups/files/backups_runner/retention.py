"""Retention, applied only after a good run: the stored sets the policy
(backups_lib.retention_prune: grandfather-father-son for untagged sets, the
newest N per counted tag, other tags never) deletes. Only complete sets
count; partial sets, safety backups and anything else in the directory are
never touched."""

from __future__ import annotations

import os
import shutil
from typing import Any

import backups_lib  # same file as filter_plugins/backups.py

from . import store


def prune(cfg: dict[str, Any]) -> list[str]:
    """Delete the sets retention does not keep; their names, oldest first."""
    names = store.sets(cfg["dir"])
    doomed = backups_lib.retention_prune(names, cfg["retention"], tagged=cfg["keep_tagged"])
    newest = names[0] if names else None
    for name in doomed:
        if name == newest:  # retention_prune never returns it; belt and braces
            continue
        shutil.rmtree(os.path.join(cfg["dir"], name))
    return doomed
