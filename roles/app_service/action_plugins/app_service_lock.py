# -*- coding: utf-8 -*-
"""Controller side of app_service_lock: who holds the lock, and whether a
holder that is not this run is gone.

The module on the host takes, renews and releases the lock; only the
controller can tell whether the ansible-playbook process that took it still
runs. This plugin fills in the holder (who runs, from the stack_run lookup:
controller user and host, the playbook, the inventory repository's commit,
the message; and the ansible-playbook process and its start time), calls the
module, and when another holder
has the lock: takes it over with a warning if that holder is gone (its
process on this controller has ended, or its lease expired), else fails
naming it.
"""
from __future__ import annotations

import os
import time

from ansible.plugins.action import ActionBase


def _proc_stat(pid):
    """(ppid, starttime) of a process from /proc, or None."""
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[19]
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def playbook_process():
    """(pid, starttime, argv) of the ansible-playbook process this worker
    belongs to: the topmost of its ancestors running ansible (the workers are
    forked from it). Without /proc (a macOS laptop): the parent, no start time."""
    pid, found = os.getpid(), None
    for _ in range(8):
        argv = _cmdline(pid)
        if not argv or not any("ansible" in os.path.basename(part) for part in argv[:2]):
            break
        stat = _proc_stat(pid)
        found = (pid, stat[1] if stat else "", argv)
        if not stat:
            break
        pid = stat[0]
    if found:
        return found
    return os.getppid(), "", []


def process_alive(pid, starttime):
    """Whether the process still runs (and is the same one, when its start time is known)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    if starttime:
        stat = _proc_stat(int(pid))
        return bool(stat) and stat[1] == starttime
    return True


def make_holder(who, pid, starttime):
    """The holder record: who runs (lookup_plugins/stack_run.py: user,
    controller, playbook, inventory commit, message) and its ansible-playbook
    process, which names it."""
    return dict(who, id="%s:%s:%s" % (who["controller"], pid, starttime or "-"), pid=pid, pid_start=starttime)


def describe(holder, age):
    """One line naming a holder for messages."""
    if not holder:
        return "an unknown holder (no readable holder.json), last touched %ds ago" % age
    since = holder.get("since")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if since else "?"
    text = "%s@%s (ansible-playbook pid %s, %s) since %s, phase %s, lease renewed %ds ago" % (
        holder.get("user", "?"), holder.get("controller", "?"), holder.get("pid", "?"),
        holder.get("playbook") or "?", when, holder.get("phase") or "?", age)
    if holder.get("message"):
        text += ", message %r" % holder["message"]
    return text


def summary(answer):
    """What playbooks/lock.yml prints for a query or a release."""
    holder = answer.get("holder") or {}
    if answer.get("released"):
        return "released the lock of %s@%s" % (holder.get("user", "?"), holder.get("controller", "?"))
    if not answer.get("held"):
        return "not locked"
    return "locked by %s%s" % (describe(holder, answer.get("age", 0)), ", expired" if answer.get("expired") else "")


def gone_reason(current, mine, age, expired, lease):
    """Why a holder other than this run counts as gone ('' when it may be alive)."""
    if expired:
        return "its lease expired (%ds without renewal, app_service_lock_stale_seconds=%d)" % (age, lease)
    if current and current.get("controller") == mine["controller"] and current.get("pid") \
            and not process_alive(current["pid"], current.get("pid_start", "")):
        return "its ansible-playbook process %s on this controller has ended" % current["pid"]
    return ""


class ActionModule(ActionBase):
    """Take, renew, release or read the deploy lock (see the module's documentation)."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("path", "state", "message", "lease_seconds", "force", "name", "phase"))

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        state = args.get("state", "present")
        lease = int(args.get("lease_seconds", 1800))
        name = args.pop("name", "") or "the app"
        who = self._shared_loader_obj.lookup_loader.get("stack_run", loader=self._loader, templar=self._templar).run(
            [], variables=task_vars, message=args.pop("message", ""))[0]
        pid, starttime, _ = playbook_process()
        holder = make_holder(who, pid, starttime)
        holder["phase"] = args.pop("phase", "") or "locked"
        module_args = dict(args, holder=holder, lease_seconds=lease)
        answer = self._execute_module(module_name="app_service_lock", module_args=module_args,
                                      task_vars=task_vars)
        if answer.get("failed") or state != "present" or answer.get("acquired"):
            result.update(answer)
            result["me"] = holder
            if state != "present" and not answer.get("failed"):
                result["summary"] = summary(answer)
            return result
        current, age = answer.get("holder") or {}, answer.get("age", 0)
        reason = gone_reason(current, holder, age, answer.get("expired"), lease)
        if reason:
            module_args["takeover"] = current.get("id") or "-"
            answer = self._execute_module(module_name="app_service_lock", module_args=module_args,
                                          task_vars=task_vars)
            if answer.get("acquired"):
                result.update(answer)
                result["me"] = holder
                result.setdefault("warnings", []).append(
                    "Took over the deploy lock of %s from %s: %s." % (name, describe(current, age), reason))
                return result
            current, age = answer.get("holder") or {}, answer.get("age", 0)
        result.update(answer)
        result["me"] = holder
        result["failed"] = True
        result["msg"] = (
            "Another run holds the deploy lock of %s (%s): %s. It may still be running%s. Wait for it; "
            "if it is gone, release the lock with: ansible-playbook playbooks/lock.yml -e lock_release=true"
            % (name, args.get("path"), describe(current, age),
               "" if current.get("controller") != holder["controller"] else " (its process is alive)"))
        return result
