#!/usr/bin/python3
"""Metrics of the stack that no exporter gives, for node exporter's textfile
collector (installed by the Ansible role `monitoring`):

  stack_backup_last_good_timestamp_seconds  the newest good backup set (backups role)
  stack_unit_failed{unit}                   1 for each failed unit matching the regex

  stack_metrics.py --out FILE --units-regex REGEX [--backups-status FILE]

Written to a temporary file and renamed, so the collector never reads half.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys


def backup_lines(path: str) -> list[str]:
    if not path or not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        status = json.load(handle)
    finished = (status.get("last_good") or {}).get("finished")
    stamp = 0.0
    if finished:
        stamp = dt.datetime.strptime(finished, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
    return ["# HELP stack_backup_last_good_timestamp_seconds End of the newest good backup set (0: none).",
            "# TYPE stack_backup_last_good_timestamp_seconds gauge",
            f"stack_backup_last_good_timestamp_seconds {stamp:.0f}"]


def unit_lines(regex: str) -> list[str]:
    out = subprocess.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "--type=service"],
                         capture_output=True, text=True, check=True).stdout
    pattern = re.compile(f"^(?:{regex})$")
    lines = ["# HELP stack_unit_failed 1 when the unit is in the failed state.", "# TYPE stack_unit_failed gauge"]
    for row in out.splitlines():
        fields = row.split()
        if len(fields) >= 3 and pattern.match(fields[0]):
            lines.append(f'stack_unit_failed{{unit="{fields[0]}"}} {1 if fields[2] == "failed" else 0}')
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--units-regex", required=True)
    parser.add_argument("--backups-status", default="")
    args = parser.parse_args(argv)
    lines = backup_lines(args.backups_status) + unit_lines(args.units_regex)
    tmp = f"{args.out}.tmp"
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
