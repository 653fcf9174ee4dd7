"""What the operator and the monitoring read: the status file
(/var/lib/<name>/status.json: last_run, last_good, last_verify,
last_good_verify), the success check-in URL after a good run, `status`,
`list`, and `alert` (the OnFailure= hook: a shell command and/or a JSON POST
to a webhook)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from typing import Any

import backups_lib  # same file as filter_plugins/backups.py

from . import store
from .common import HTTP_TIMEOUT, log


def read_status(cfg: dict[str, Any]) -> dict[str, Any]:
    try:
        with open(cfg["status_file"], encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def write_status(cfg: dict[str, Any], key: str, value: dict[str, Any], good: bool) -> None:
    """Record VALUE as KEY (last_run or last_verify); a good one is also last_good / last_good_verify."""
    status = read_status(cfg)
    status[key] = value
    if good and key == "last_run":
        status["last_good"] = value
    if good and key == "last_verify":
        status["last_good_verify"] = value
    tmp = cfg["status_file"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(status, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, cfg["status_file"])


def checkin(cfg: dict[str, Any]) -> None:
    url = cfg.get("checkin_url")
    if not url:
        return
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310 - operator's URL
            resp.read(1024)
    except OSError as exc:
        # The backup itself is good; a missed check-in makes the monitor alert.
        log(f"warning: success check-in failed: {exc}")


def cmd_status(cfg: dict[str, Any]) -> int:
    """Print the status file; exit 0 only when a good backup exists and the last run was good."""
    status = read_status(cfg)
    print(json.dumps(status, indent=2, sort_keys=True))
    good = status.get("last_good")
    if good:
        print(f"last good backup: {good['set']} finished {good['finished']} size {good['size']} bytes",
              file=sys.stderr)
    return 0 if good and status.get("last_run", {}).get("result") == "ok" else 1


def cmd_list(cfg: dict[str, Any], as_json: bool) -> int:
    """Every complete set, newest first, with its tag."""
    rows = []
    for name in store.sets(cfg["dir"]):
        manifest = store.manifest(cfg["dir"], name)
        rows.append({"set": name, "tag": backups_lib.split_set_name(name)[1],
                     "finished": manifest.get("finished"), "size": manifest.get("size"),
                     "databases": sorted(manifest["databases"]), "encryption": manifest["encryption"]})
    if as_json:
        print(json.dumps(rows))
    else:
        width = max((len(row["set"]) for row in rows), default=0)  # tagged names are longer
        for row in rows:
            print(f"{row['set']:<{width}}  {row['size']:>14}  {','.join(row['databases'])}")
    return 0


def cmd_alert(cfg: dict[str, Any], unit: str) -> int:
    """The OnFailure= hook of UNIT: exit 1 when the command or the webhook failed."""
    failures = 0
    env = dict(os.environ, BACKUPS_FAILED_UNIT=unit, BACKUPS_HOST=socket.gethostname())
    command = cfg.get("failure_command")
    if command:
        rc = subprocess.run(["/bin/sh", "-c", command], env=env, check=False).returncode
        failures += rc != 0
    url = cfg.get("failure_webhook")
    if url:
        body = json.dumps({"unit": unit, "host": env["BACKUPS_HOST"], "status": read_status(cfg)}).encode()
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:  # noqa: S310 - operator's URL
                resp.read(1024)
        except OSError as exc:
            log(f"failure webhook failed: {exc}")
            failures += 1
    log(f"alert unit={unit} command={'yes' if command else 'no'} webhook={'yes' if url else 'no'}")
    return 1 if failures else 0
