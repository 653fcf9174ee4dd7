#!/usr/bin/python3
"""Held package updates that are waiting, and since when (installed by the
Ansible role `base` as /usr/local/sbin/stack-held-updates).

unattended-upgrades leaves alone every package whose name matches an entry
of ``Unattended-Upgrade::Package-Blacklist`` (Python regular expressions,
``re.match``: anchored at the start of the name only). apt runs this script
after every successful ``apt-get update`` (APT::Update::Post-Invoke-Success,
also what apt's daily timer runs) and after every dpkg run
(DPkg::Post-Invoke): it lists the installed packages matching those entries
whose candidate version is newer than the installed one, remembers in a
state file (JSON) when each (package, candidate version) was first seen, and
writes node exporter textfile metrics, replaced atomically:

  stack_held_updates_pending N                      held packages with an update waiting
  stack_held_update_pending{package,installed,candidate} 1
  stack_held_update_pending_since_timestamp_seconds{package} T
      when the oldest update of the package that is still not installed was
      first seen (a newer candidate arriving keeps the older time; the
      package leaves the state once its installed version catches up)
  stack_held_updates_last_check_timestamp_seconds T  when this script last ran

  stack-held-updates [--state FILE] [--metrics FILE.prom] [--strict] [--print]

It never fails apt: an error is logged (syslog and standard error) and the
exit status is 0, unless --strict (the role's own run, to see errors).
Without --metrics (or when the metrics file's directory does not exist yet,
before node exporter is installed) only the state is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import sys
import syslog
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

BLACKLIST_KEY = "Unattended-Upgrade::Package-Blacklist"
DEFAULT_STATE = "/var/lib/stack-held-updates/state.json"


class Pending(NamedTuple):
    """A held package whose candidate version is newer than the installed one."""

    package: str
    installed: str
    candidate: str


VersionCompare = Callable[[str, str], int]


def compile_patterns(patterns: Iterable[str]) -> tuple[list[re.Pattern[str]], list[str]]:
    """Compile the blacklist entries as unattended-upgrades uses them.

    Returns the compiled patterns and a message for each entry that is not
    a valid regular expression (left out).
    """
    compiled, errors = [], []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            errors.append(f"{BLACKLIST_KEY} entry {pattern!r} is not a regular expression: {exc}")
    return compiled, errors


def is_held(name: str, patterns: Iterable[re.Pattern[str]]) -> bool:
    """True when unattended-upgrades keeps ``name`` back (``re.match``, as it does)."""
    return any(pattern.match(name) for pattern in patterns)


def find_pending(packages: Iterable[tuple[str, str, str | None]], patterns: list[re.Pattern[str]],
                 compare: VersionCompare) -> list[Pending]:
    """The held packages among ``(name, installed, candidate)`` whose
    candidate is newer than the installed version, sorted by name."""
    pending = [Pending(name, installed, candidate) for name, installed, candidate in packages
               if candidate and is_held(name, patterns) and compare(candidate, installed) > 0]
    return sorted(pending)


def update_state(state: dict[str, Any], pending: list[Pending], now: float,
                 compare: VersionCompare) -> dict[str, dict[str, float]]:
    """The new state: for each pending package, the first time each of its
    candidate versions that is still newer than the installed one was seen.

    ``state`` maps package -> {candidate version: first seen (epoch)}; a
    package that is no longer pending, and a version that is installed by
    now, leave it. Malformed entries are dropped.
    """
    new: dict[str, dict[str, float]] = {}
    for item in pending:
        seen = state.get(item.package)
        kept = {}
        if isinstance(seen, dict):
            kept = {version: float(first) for version, first in seen.items()
                    if isinstance(version, str) and isinstance(first, (int, float)) and not isinstance(first, bool)
                    and compare(version, item.installed) > 0}
        kept.setdefault(item.candidate, float(now))
        new[item.package] = kept
    return new


def since(state: dict[str, dict[str, float]], package: str) -> float:
    """When the oldest update of ``package`` that is still not installed was first seen."""
    return min(state[package].values())


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(pending: list[Pending], state: dict[str, dict[str, float]], now: float) -> str:
    """Node exporter textfile metrics for ``pending`` (the count is written
    even when it is 0, so that the absence of a problem is visible)."""
    lines = [
        "# HELP stack_held_updates_pending Held packages (Unattended-Upgrade::Package-Blacklist) with an update waiting.",
        "# TYPE stack_held_updates_pending gauge",
        f"stack_held_updates_pending {len(pending)}",
        "# HELP stack_held_update_pending 1 for each held package whose candidate version is newer than the installed one.",
        "# TYPE stack_held_update_pending gauge",
    ]
    lines += [f'stack_held_update_pending{{package="{_label(p.package)}",installed="{_label(p.installed)}",'
              f'candidate="{_label(p.candidate)}"}} 1' for p in pending]
    lines += [
        "# HELP stack_held_update_pending_since_timestamp_seconds When the oldest update of the package that is "
        "not installed yet was first seen.",
        "# TYPE stack_held_update_pending_since_timestamp_seconds gauge",
    ]
    lines += [f'stack_held_update_pending_since_timestamp_seconds{{package="{_label(p.package)}"}} '
              f"{since(state, p.package):.0f}" for p in pending]
    lines += [
        "# HELP stack_held_updates_last_check_timestamp_seconds When the held updates were last checked.",
        "# TYPE stack_held_updates_last_check_timestamp_seconds gauge",
        f"stack_held_updates_last_check_timestamp_seconds {now:.0f}",
    ]
    return "\n".join(lines) + "\n"


def load_state(path: str) -> dict[str, Any]:
    """The state file's content; empty when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError):
        return {}
    packages = state.get("packages") if isinstance(state, dict) else None
    return packages if isinstance(packages, dict) else {}


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over
    ``path``: a reader sees the old or the new file, never half of one. The
    temporary name does not end in .prom (node exporter reads only *.prom)."""
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=directory or ".", prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def apt_packages(patterns: list[re.Pattern[str]]) -> tuple[list[tuple[str, str, str | None]], VersionCompare]:
    """``(name, installed, candidate)`` of the installed packages matching
    ``patterns`` (names as unattended-upgrades sees them: ``name`` for the
    native architecture, ``name:arch`` otherwise), and apt's version compare."""
    import apt_pkg  # pylint: disable=import-outside-toplevel  # python3-apt: only on the host

    if not patterns:
        return [], apt_pkg.version_compare
    cache = apt_pkg.Cache(None)
    depcache = apt_pkg.DepCache(cache)
    found = []
    for pkg in cache.packages:
        if pkg.current_ver is None:
            continue
        name = pkg.get_fullname(True)
        if not is_held(name, patterns):
            continue
        candidate = depcache.get_candidate_ver(pkg)
        found.append((name, pkg.current_ver.ver_str, candidate.ver_str if candidate else None))
    return found, apt_pkg.version_compare


def blacklist() -> list[str]:
    """The Unattended-Upgrade::Package-Blacklist entries of apt's configuration."""
    import apt_pkg  # pylint: disable=import-outside-toplevel

    apt_pkg.init_config()
    apt_pkg.init_system()
    return list(apt_pkg.config.value_list(BLACKLIST_KEY))


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Serialise concurrent runs (an update and a dpkg run at the same time)."""
    with open(path, "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def log(priority: int, message: str) -> None:
    syslog.openlog("stack-held-updates", 0, syslog.LOG_USER)
    syslog.syslog(priority, message)
    if priority <= syslog.LOG_WARNING:
        print(f"stack-held-updates: {message}", file=sys.stderr)


def run(state_path: str, metrics_path: str, now: float, print_report: bool = False) -> list[Pending]:
    """Check once: read apt, update the state, write the metrics."""
    patterns, errors = compile_patterns(blacklist())
    for error in errors:
        log(syslog.LOG_ERR, error)
    packages, compare = apt_packages(patterns)
    pending = find_pending(packages, patterns, compare)
    os.makedirs(os.path.dirname(state_path), mode=0o755, exist_ok=True)
    with locked(state_path + ".lock"):
        state = update_state(load_state(state_path), pending, now, compare)
        write_atomic(state_path, json.dumps({"packages": state}, indent=1, sort_keys=True) + "\n")
        if metrics_path:
            if os.path.isdir(os.path.dirname(metrics_path)):
                write_atomic(metrics_path, render_metrics(pending, state, now))
            else:
                log(syslog.LOG_INFO, f"{os.path.dirname(metrics_path)} does not exist (yet): no metrics written")
    if print_report:
        for item in pending:
            first = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since(state, item.package)))
            print(f"{item.package} {item.installed} -> {item.candidate} (waiting since {first})")
        if not pending:
            print("no held package has an update waiting")
    return pending


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", default=DEFAULT_STATE, help=f"state file (default {DEFAULT_STATE})")
    parser.add_argument("--metrics", default="", help="node exporter textfile (*.prom) to write")
    parser.add_argument("--strict", action="store_true", help="exit 1 on an error (never from apt's hooks)")
    parser.add_argument("--print", dest="print_report", action="store_true", help="print what is waiting")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a bad argument must not fail apt either
        return 0 if "--strict" not in (argv if argv is not None else sys.argv[1:]) else int(exc.code or 0)
    try:
        run(args.state, args.metrics, time.time(), args.print_report)
    except Exception as exc:  # noqa: BLE001  # pylint: disable=broad-except  # apt must never fail because of this hook
        log(syslog.LOG_ERR, f"checking the held updates failed: {type(exc).__name__}: {exc}")
        return 1 if args.strict else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
