#!/usr/bin/python3
"""Metrics of the stack that no exporter gives, for node exporter's textfile
collector (installed by the Ansible role `monitoring`):

  stack_backup_last_good_timestamp_seconds  the newest good backup set (backups role)
  stack_unit_failed{unit}                   1 for each failed unit matching the regex
  stack_deploy_timestamp_seconds{app}       when the app's last deploy, rollback or restart ended
  stack_deploy_info{app,action,release,result,by,inventory,message}
                                            1, labelled with that last line of its deploy log
  pgbouncer_up, pgbouncer_pools_client_{active,waiting}_connections{database,user}
                                            PgBouncer's pools (with --pgbouncer-port: Debian 12,
                                            whose packaged exporter does not work with its PgBouncer;
                                            the names are those of Debian 13's exporter)

  stack_metrics.py --out FILE --units-regex REGEX [--backups-status FILE] [--pgbouncer-port PORT]
                   [--deploy-logs GLOB]

Written to a temporary file and renamed, so the collector never reads half.
"""

from __future__ import annotations

import argparse
import datetime as dt
import glob
import json
import os
import re
import shlex
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


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def parse_deploy_line(line: str) -> dict[str, str]:
    """One line of an app_service deploy log: <time> key=value ... message="...";
    {} when it does not parse."""
    try:
        fields = shlex.split(line)
    except ValueError:
        return {}
    if not fields:
        return {}
    record = dict(field.split("=", 1) for field in fields[1:] if "=" in field)
    try:
        stamp = dt.datetime.strptime(fields[0], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return {}
    record["timestamp"] = f"{stamp.timestamp():.0f}"
    return record if record.get("app") else {}


def deploy_lines(pattern: str) -> list[str]:
    """The last line of each app's deploy log (app_service_deploy_log)."""
    lines = ["# HELP stack_deploy_timestamp_seconds When the app's last deploy, rollback or restart ended.",
             "# TYPE stack_deploy_timestamp_seconds gauge",
             "# HELP stack_deploy_info The app's last deploy, rollback or restart (its deploy log's last line).",
             "# TYPE stack_deploy_info gauge"]
    found = False
    for path in sorted(glob.glob(pattern)) if pattern else []:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                rows = [row for row in handle.read().splitlines() if row.strip()]
        except OSError:
            continue
        record = parse_deploy_line(rows[-1]) if rows else {}
        if not record:
            continue
        found = True
        app = _label(record["app"])
        lines.append(f'stack_deploy_timestamp_seconds{{app="{app}"}} {record["timestamp"]}')
        labels = ",".join(f'{key}="{_label(record.get(key, ""))}"'
                          for key in ("action", "release", "result", "by", "inventory", "message"))
        lines.append(f'stack_deploy_info{{app="{app}",{labels}}} 1')
    return lines if found else []


def pgbouncer_lines(port: int, socket_dir: str = "/run/postgresql") -> list[str]:
    """SHOW POOLS over the unix socket as this process's account (root, a
    stats user of PgBouncer's by peer authentication)."""
    proc = subprocess.run(["psql", "-X", "-q", "-A", "-F", "\t", "-h", socket_dir, "-p", str(port), "-U", "root",
                           "-d", "pgbouncer", "-c", "SHOW POOLS"], capture_output=True, text=True, check=False,
                          timeout=10)
    rows = [line.split("\t") for line in proc.stdout.splitlines() if line and not line.startswith("(")]
    lines = ["# HELP pgbouncer_up 1 when PgBouncer's admin console answered.", "# TYPE pgbouncer_up gauge",
             f"pgbouncer_up {1 if proc.returncode == 0 and rows else 0}"]
    if proc.returncode != 0 or not rows:
        return lines
    header = rows[0]
    for column, name, what in (("cl_active", "client_active_connections", "linked to a server connection"),
                               ("cl_waiting", "client_waiting_connections", "waiting for a server connection")):
        metric = f"pgbouncer_pools_{name}"
        lines += [f"# HELP {metric} Client connections {what}.", f"# TYPE {metric} gauge"]
        for row in rows[1:]:
            pool = dict(zip(header, row))
            if pool.get("database") == "pgbouncer" or column not in pool:
                continue
            lines.append(f'{metric}{{database="{pool["database"]}",user="{pool["user"]}"}} {int(pool[column])}')
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--units-regex", required=True)
    parser.add_argument("--backups-status", default="")
    parser.add_argument("--pgbouncer-port", type=int, default=0)
    parser.add_argument("--deploy-logs", default="", help="glob of the apps' deploy logs")
    args = parser.parse_args(argv)
    lines = backup_lines(args.backups_status) + unit_lines(args.units_regex) + deploy_lines(args.deploy_logs)
    if args.pgbouncer_port:
        lines += pgbouncer_lines(args.pgbouncer_port)
    tmp = f"{args.out}.tmp"
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
