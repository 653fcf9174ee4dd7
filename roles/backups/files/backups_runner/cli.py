"""PostgreSQL backup runner installed by the Ansible role `backups`.

Runs as the PostgreSQL superuser's OS account with peer authentication over
the unix socket: no password file exists anywhere.

  backup.py --config FILE run [--tag TAG] [--no-verify] [--no-offsite] [--no-retention]
  backup.py --config FILE verify [SET]          checksums + test restore of a stored set
  backup.py --config FILE restore [--set SET] --database DB [--target NAME] [--replace-live] [--check]
  backup.py --config FILE list [--json]
  backup.py --config FILE status
  backup.py --config FILE alert UNIT            the OnFailure= hook

Every external command is checked (the equivalent of `set -euo pipefail`): a
non-zero exit anywhere fails the run, removes its partial files, skips
retention and exits 1 so the systemd unit fails and OnFailure= fires.

A run with --tag makes a set named <UTC time>-<tag> (the unit
<name>-tagged@<tag>.service does that); retention keeps tagged sets apart
from the grandfather-father-son sets (backups_lib.retention_keep).

run, verify and restore (not restore --check) hold the lock file: they never
overlap.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys

import backups_lib  # same file as filter_plugins/backups.py

from . import dump, restore, status, verify
from .common import BackupError
from .postgres import Error as DatabaseError
from .postgres import Postgres


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="backup.py", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--config", required=True)
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--tag", default="", help="name the set <UTC time>-TAG; retention keeps it apart")
    run.add_argument("--no-verify", action="store_true")
    run.add_argument("--no-offsite", action="store_true")
    run.add_argument("--no-retention", action="store_true")
    check = sub.add_parser("verify")
    check.add_argument("set", nargs="?")
    back = sub.add_parser("restore")
    back.add_argument("--set")
    back.add_argument("--database")
    back.add_argument("--target")
    back.add_argument("--replace-live", action="store_true")
    back.add_argument("--check", action="store_true", help="verify the checksum and report; change nothing")
    lst = sub.add_parser("list")
    lst.add_argument("--json", action="store_true")
    sub.add_parser("status")
    alert = sub.add_parser("alert")
    alert.add_argument("unit")
    return top


def take_lock(path: str):
    """Hold the lock file until the process exits, or fail at once when another run holds it."""
    lock = open(path, "a", encoding="ascii")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise BackupError(f"another backup, verify or restore is running (lock {path})") from None
    return lock


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with open(args.config, encoding="utf-8") as handle:
        cfg = json.load(handle)
    pg = Postgres(cfg)
    os.umask(0o077)
    try:
        if args.command == "run":
            backups_lib.set_tag(args.tag, "--tag")  # before the lock: a bad tag changes nothing
        if args.command in ("run", "verify") or (args.command == "restore" and not args.check):
            lock = take_lock(cfg["lock_file"])  # noqa: F841 - held until exit
        if args.command == "run":
            return dump.cmd_run(cfg, pg, not args.no_verify, not args.no_offsite, not args.no_retention, args.tag)
        if args.command == "verify":
            return verify.cmd_verify(cfg, pg, args.set)
        if args.command == "restore":
            return restore.cmd_restore(cfg, pg, args.set, args.database, args.target, args.replace_live, args.check)
        if args.command == "list":
            return status.cmd_list(cfg, args.json)
        if args.command == "status":
            return status.cmd_status(cfg)
        return status.cmd_alert(cfg, args.unit)
    except (BackupError, backups_lib.AnsibleFilterError, DatabaseError, OSError) as exc:
        print(f"error: {str(exc).strip()}", file=sys.stderr)
        return 1
