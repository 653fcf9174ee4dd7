#!/usr/bin/env python3
"""Run a playbook unattended (cron, systemd timers, CI schedulers).

Built on ansible-runner: no prompts, one lock against overlapping runs, a JSON
summary (status, duration, per-host ok/changed/failed/unreachable) written
atomically, and an exit code a scheduler can alert on:

    0   the playbook succeeded
    1   the playbook failed (or timed out, or was cancelled)
    2   bad usage (missing playbook or inventory)
    75  another run holds the lock (EX_TEMPFAIL: try again later)

Example: .venv/bin/python bin/scheduled_run.py playbooks/backup.yml \
             --inventory inventories/production --summary /var/log/stack/backup.json
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EX_OK, EX_FAILED, EX_USAGE, EX_LOCKED = 0, 1, 2, 75


class LockHeld(RuntimeError):
    """Another process holds the run lock."""


class RunLock:
    """An exclusive, non-blocking flock on a file; released on exit or crash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(f"another run holds {self.path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def host_stats(stats: Mapping[str, Any] | None) -> dict[str, dict[str, int]]:
    """Turn ansible-runner's stats (counter -> host -> n) into host -> counters."""
    counters = {"ok": "ok", "changed": "changed", "failures": "failed",
                "dark": "unreachable", "skipped": "skipped", "rescued": "rescued", "ignored": "ignored"}
    hosts: dict[str, dict[str, int]] = {}
    for key, name in counters.items():
        for host, count in ((stats or {}).get(key) or {}).items():
            hosts.setdefault(host, {n: 0 for n in counters.values()})[name] = int(count)
    return dict(sorted(hosts.items()))


def build_summary(playbook: str, status: str, rc: int | None, started: float, finished: float,
                  stats: Mapping[str, Any] | None) -> dict[str, Any]:
    """The JSON document written after every run."""
    hosts = host_stats(stats)
    return {
        "playbook": playbook,
        "status": status,
        "rc": rc,
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "finished": datetime.fromtimestamp(finished, timezone.utc).isoformat(timespec="seconds"),
        "duration_seconds": round(finished - started, 1),
        "hosts": hosts,
        "totals": {k: sum(h[k] for h in hosts.values()) for k in ("ok", "changed", "failed", "unreachable")},
    }


def write_json_atomically(path: Path, document: Mapping[str, Any]) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, 0o640)
    os.replace(tmp, path)


def exit_code(status: str) -> int:
    return EX_OK if status == "successful" else EX_FAILED


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run a playbook unattended with a lock and a JSON summary.")
    parser.add_argument("playbook", help="playbook path, e.g. playbooks/backup.yml")
    parser.add_argument("-i", "--inventory", default=str(REPO / "inventories" / "sandbox"),
                        help="inventory path (default: inventories/sandbox)")
    parser.add_argument("-l", "--limit", help="limit to hosts or groups")
    parser.add_argument("-t", "--tags", help="only run these tags")
    parser.add_argument("-e", "--extra-vars", action="append", default=[], metavar="KEY=VALUE|@FILE",
                        help="extra variables (repeatable)")
    parser.add_argument("--vault-password-file", help="vault password file (e.g. a root-only file)")
    parser.add_argument("--summary", default=None,
                        help="JSON summary path (default: .cache/runs/<playbook>.json)")
    parser.add_argument("--lock", default=None, help="lock file (default: .cache/runs/<playbook>.lock)")
    parser.add_argument("--timeout", type=int, default=0, help="seconds before the run is stopped (0: none)")
    parser.add_argument("--artifacts", default=None, help="ansible-runner private data dir (default: .cache/runner)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    playbook = Path(args.playbook).resolve()
    if not playbook.is_file():
        print(f"scheduled_run: playbook {args.playbook} not found", file=sys.stderr)
        return EX_USAGE
    if not Path(args.inventory).exists():
        print(f"scheduled_run: inventory {args.inventory} not found", file=sys.stderr)
        return EX_USAGE
    name = playbook.stem
    runs = REPO / ".cache" / "runs"
    summary_path = Path(args.summary) if args.summary else runs / f"{name}.json"
    lock_path = Path(args.lock) if args.lock else runs / f"{name}.lock"

    import ansible_runner  # imported late: --help and usage errors stay fast

    # ansible-runner starts ansible-playbook from PATH: use this interpreter's.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
    cmdline = []
    for extra in args.extra_vars:
        cmdline += ["-e", extra]
    if args.vault_password_file:
        cmdline += ["--vault-password-file", str(Path(args.vault_password_file).resolve())]
    private_data_dir = Path(args.artifacts) if args.artifacts else REPO / ".cache" / "runner"
    private_data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with RunLock(lock_path):
            started = time.time()
            runner = ansible_runner.run(
                private_data_dir=str(private_data_dir),
                project_dir=str(REPO),
                playbook=str(playbook),
                inventory=str(Path(args.inventory).resolve()),
                limit=args.limit,
                tags=args.tags,
                cmdline=" ".join(cmdline) or None,
                timeout=args.timeout or None,
                rotate_artifacts=10,
                quiet=True,
                suppress_env_files=True,
            )
            finished = time.time()
    except LockHeld as exc:
        print(f"scheduled_run: {exc}; not starting {name}", file=sys.stderr)
        return EX_LOCKED
    summary = build_summary(str(args.playbook), runner.status, runner.rc, started, finished, runner.stats)
    write_json_atomically(summary_path, summary)
    totals = summary["totals"]
    print(f"scheduled_run: {name} {runner.status} in {summary['duration_seconds']}s "
          f"(ok={totals['ok']} changed={totals['changed']} failed={totals['failed']} "
          f"unreachable={totals['unreachable']}); summary: {summary_path}")
    return exit_code(runner.status)


if __name__ == "__main__":
    sys.exit(main())
