"""What every part of the runner shares: the failure that fails a run, the
log line, UTC times, checked external commands and scratch database names."""

from __future__ import annotations

import datetime as dt
import subprocess

HTTP_TIMEOUT = 15
# PostgreSQL truncates identifiers longer than this many bytes.
NAME_MAX = 63


class BackupError(Exception):
    """A failure that fails the run with a one-line reason."""


def log(msg: str) -> None:
    print(msg, flush=True)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_cmd(argv: list[str], what: str) -> None:
    """Run ARGV; a non-zero exit raises BackupError naming WHAT with the last lines of its output."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise BackupError(f"{what} failed (exit {proc.returncode}): {' | '.join(detail)}")


def scratch_name(database: str, suffix: str) -> str:
    """DATABASE with SUFFIX (__verify, __restore, __old), cut so the whole stays a PostgreSQL name."""
    return f"{database[:NAME_MAX - len(suffix)]}{suffix}"
