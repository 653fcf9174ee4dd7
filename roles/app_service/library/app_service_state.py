#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Read an app's deployed state in one module call (tasks/state.yml)."""
from __future__ import annotations

DOCUMENTATION = r"""
module: app_service_state
short_description: Read the deployed state of an app_service app
description:
  - Reads, without changing anything, what tasks/state.yml needs to decide
    which instance serves and whether its settings are current - the
    C(current) release link, each instance's link and unit state, the
    checksums of the settings files, each instance's settings record and the
    known-good record.
  - One call instead of a task per read, so a run that changes nothing stays short.
options:
  current_link:
    description: Path of the C(current) release symlink.
    type: path
    required: true
  instances_dir:
    description: Directory of the instance links (one per port) and their C(<port>.settings) records.
    type: path
    required: true
  ports:
    description: The two ports of the blue/green pair.
    type: list
    elements: int
    required: true
  unit_prefix:
    description: Templated unit name before the port, such as C(demo@).
    type: str
    required: true
  settings_files:
    description: The settings files, as mappings with C(name) and C(path).
    type: list
    elements: dict
    required: true
  known_good_record:
    description: Path of the known-good settings record (JSON).
    type: path
    required: true
author: ansible-stack
"""

RETURN = r"""
current:
  description: Release the C(current) link points at, '' when it is not a link.
  type: str
  returned: always
links:
  description: Port (as a string) to the release its instance link points at ('' when none).
  type: dict
  returned: always
active:
  description: Port (as a string) to the output of C(systemctl is-active) for its unit.
  type: dict
  returned: always
files:
  description: The settings files with C(exists) and C(checksum) (sha256, '-' when missing).
  type: list
  returned: always
records:
  description: Port (as a string) to its instance's settings record ({} when missing or unreadable).
  type: dict
  returned: always
known_good:
  description: The known-good record ({} when missing or unreadable).
  type: dict
  returned: always
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule


def _link_target(path):
    """Base name of the path a symlink resolves to ('' when the path is not a
    symlink), as the stat module's lnk_source gives it."""
    if not os.path.islink(path):
        return ""
    return os.path.basename(os.path.realpath(path))


def _json_file(path):
    """A JSON object from a file, {} when it is missing or not a JSON object
    (a re-run then treats the state as unknown and rewrites it)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def main():
    module = AnsibleModule(
        argument_spec={
            "current_link": {"type": "path", "required": True},
            "instances_dir": {"type": "path", "required": True},
            "ports": {"type": "list", "elements": "int", "required": True},
            "unit_prefix": {"type": "str", "required": True},
            "settings_files": {"type": "list", "elements": "dict", "required": True},
            "known_good_record": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    params = module.params
    links, active, records = {}, {}, {}
    systemctl = module.get_bin_path("systemctl", required=True)
    for port in params["ports"]:
        key = str(port)
        links[key] = _link_target(os.path.join(params["instances_dir"], key))
        rc, out, err = module.run_command([systemctl, "is-active", f"{params['unit_prefix']}{port}.service"])
        # 0 active, 3 inactive/failed, 4 no such unit: anything else is an error.
        if rc not in (0, 3, 4):
            module.fail_json(msg=f"systemctl is-active {params['unit_prefix']}{port}.service failed: {err.strip()}", rc=rc)
        active[key] = out.strip()
        records[key] = _json_file(os.path.join(params["instances_dir"], f"{key}.settings"))
    files = []
    for entry in params["settings_files"]:
        path = entry["path"]
        exists = os.path.isfile(path)
        files.append({
            "name": entry["name"],
            "path": path,
            "exists": exists,
            "checksum": module.sha256(path) if exists else "-",
        })
    module.exit_json(
        changed=False,
        current=_link_target(params["current_link"]),
        links=links,
        active=active,
        files=files,
        records=records,
        known_good=_json_file(params["known_good_record"]),
    )


if __name__ == "__main__":
    main()
