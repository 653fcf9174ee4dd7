"""Off-site copies of a new set: rsync over SSH (strict host keys against
the pinned known_hosts, the generated key, batch mode) and/or rclone copy to
S3-compatible storage. A failed copy fails the run (and so skips retention)."""

from __future__ import annotations

import os
from typing import Any

from .common import run_cmd


def rsync_argv(rsync: dict[str, Any], set_dir: str) -> list[str]:
    ssh = ["ssh", "-p", str(rsync["port"]), "-i", rsync["ssh_key"], "-o", "BatchMode=yes",
           "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={rsync['known_hosts']}",
           "-o", "ConnectTimeout=20"]
    return ["rsync", "-a", "--partial", "--timeout=300", "-e", " ".join(ssh),
            set_dir, rsync["destination"].rstrip("/") + "/"]


def rclone_argv(rclone: dict[str, Any], set_dir: str) -> list[str]:
    return ["rclone", "--config", rclone["config"], "copy", set_dir,
            f"{rclone['remote'].rstrip('/')}/{os.path.basename(set_dir)}"]


def copy(cfg: dict[str, Any], set_dir: str) -> list[str]:
    """Copy SET_DIR to every configured destination; the names of the ones done (rsync, rclone)."""
    done = []
    if cfg.get("offsite_rsync"):
        run_cmd(rsync_argv(cfg["offsite_rsync"], set_dir), "off-site rsync")
        done.append("rsync")
    if cfg.get("offsite_rclone"):
        run_cmd(rclone_argv(cfg["offsite_rclone"], set_dir), "off-site rclone")
        done.append("rclone")
    return done
