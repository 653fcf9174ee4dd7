#!/usr/bin/python
# -*- coding: utf-8 -*-
"""The deploy lock of an app on one host (tasks/lock.yml, playbooks/lock.yml)."""
from __future__ import annotations

DOCUMENTATION = r"""
module: app_service_lock
short_description: Take, renew, release or read the deploy lock of an app_service app
description:
  - The lock is a directory (C(mkdir) is atomic, a reboot clears C(/run/lock))
    with a C(holder.json) that says who holds it - the controller's user and
    host, the C(ansible-playbook) process, the playbook, the start time and an
    optional message. Its modification time is the lease - every call with
    the same holder renews it.
  - Every read-and-write runs under an C(flock) on a guard file beside the
    directory, so two runs that both see a dead holder cannot both take over.
  - The decision whether a holder is gone is made on the controller by the
    action plugin of the same name (it can see whether the holder's
    C(ansible-playbook) process still runs); this module only takes the lock
    over from the holder id it is given.
options:
  path:
    description: The lock directory.
    type: path
    required: true
  state:
    description:
      - C(present) takes (or renews) the lock for I(holder); C(absent) releases
        it when I(holder) holds it (or whoever does, with I(force));
        C(query) reads it.
    type: str
    choices: [present, absent, query]
    default: present
  holder:
    description:
      - Who asks (a mapping with at least C(id)); the action plugin fills it,
        with the deploy's C(phase) (C(locked), C(built), C(migrated)).
    type: dict
    default: {}
  takeover:
    description:
      - The id of a holder known to be gone; C(present) replaces it when it
        still holds the lock. C(-) stands for a lock without a readable holder.
    type: str
    default: ''
  lease_seconds:
    description: How long a lock lives without renewal before it counts as expired.
    type: int
    default: 1800
  force:
    description: With C(absent), release the lock whoever holds it.
    type: bool
    default: false
author: ansible-stack
"""

RETURN = r"""
acquired:
  description: The lock is held by I(holder) after the call (C(present)).
  type: bool
  returned: always
renewed:
  description: I(holder) held the lock already; its lease was renewed.
  type: bool
  returned: always
released:
  description: The lock was removed (C(absent)).
  type: bool
  returned: always
held:
  description: Whether the lock exists after the call.
  type: bool
  returned: always
holder:
  description: >-
    The holder after the call, the other holder when the lock was not taken, the holder released with
    C(absent) ({} when none or unreadable).
  type: dict
  returned: always
took_over:
  description: The holder replaced by a takeover ({} when none).
  type: dict
  returned: always
age:
  description: Seconds since the holder's lease was last renewed (-1 when there is no lock).
  type: int
  returned: always
expired:
  description: The other holder's lease is older than I(lease_seconds).
  type: bool
  returned: always
"""

import fcntl
import json
import os
import shutil
import time

from ansible.module_utils.basic import AnsibleModule

HOLDER_FILE = "holder.json"


def read_lock(path):
    """(exists, holder, age): holder {} when missing or unreadable; age from
    the holder file's (else the directory's) modification time."""
    if not os.path.isdir(path):
        return False, {}, -1
    holder_path = os.path.join(path, HOLDER_FILE)
    holder = {}
    try:
        with open(holder_path, encoding="utf-8") as handle:
            holder = json.load(handle)
        stamp = os.stat(holder_path).st_mtime
    except (OSError, ValueError):
        holder = {}
        stamp = os.stat(path).st_mtime
    if not isinstance(holder, dict):
        holder = {}
    return True, holder, max(0, int(time.time() - stamp))


def write_holder(path, holder):
    """Write holder.json atomically (0600, inside the 0700 directory)."""
    target = os.path.join(path, HOLDER_FILE)
    tmp = target + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(holder, handle, sort_keys=True)
    os.replace(tmp, target)


def decide(path, state, holder, takeover="", lease_seconds=1800, force=False, now=None):
    """The lock operation, to be called under the guard's flock."""
    now = int(time.time()) if now is None else now
    exists, current, age = read_lock(path)
    result = dict(acquired=False, renewed=False, released=False, held=exists,
                  holder=current, took_over={}, age=age,
                  expired=exists and age > lease_seconds, changed=False)
    mine = bool(holder.get("id")) and current.get("id") == holder.get("id")
    if state == "query":
        return result
    if state == "absent":
        if exists and (mine or force or not current):
            shutil.rmtree(path)
            result.update(released=True, held=False, age=-1, expired=False)
        return result
    # present
    if not exists:
        os.mkdir(path, 0o700)
        record = dict(holder, since=now)
        write_holder(path, record)
        result.update(acquired=True, held=True, holder=record, age=0)
        return result
    if mine:
        record = dict(holder, since=current.get("since", now))
        write_holder(path, record)
        result.update(acquired=True, renewed=True, holder=record, age=0, expired=False)
        return result
    current_id = current.get("id") or "-"
    if takeover and takeover == current_id:
        record = dict(holder, since=now)
        write_holder(path, record)
        result.update(acquired=True, holder=record, took_over=current, age=0, expired=False)
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            state=dict(type="str", choices=["present", "absent", "query"], default="present"),
            holder=dict(type="dict", default={}),
            takeover=dict(type="str", default=""),
            lease_seconds=dict(type="int", default=1800),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    params = module.params
    path = params["path"].rstrip("/")
    if params["state"] != "query" and not params["force"] and not params["holder"].get("id"):
        module.fail_json(msg="app_service_lock: holder.id is required to take or release the lock")
    if module.check_mode and params["state"] != "query":
        exists, current, age = read_lock(path)
        module.exit_json(changed=False, acquired=False, renewed=False, released=False, held=exists,
                         holder=current, took_over={}, age=age, expired=False)
    guard = path + ".guard"
    try:
        fd = os.open(guard, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        module.fail_json(msg="app_service_lock: cannot open %s: %s" % (guard, err))
    with os.fdopen(fd, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            result = decide(path, params["state"], params["holder"], params["takeover"],
                            params["lease_seconds"], params["force"])
        except OSError as err:
            module.fail_json(msg="app_service_lock: %s: %s" % (path, err))
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
