"""Lookup plugin: who runs this playbook, for the deploy record and the
deploy lock's holder.

    {{ lookup('stack_run', message=deploy_message | default('')) }}

returns the controller's user and host name, the playbook (the last *.yml
argument of ansible-playbook), the commit of the git checkout that holds the
host's inventory (12 characters, "+" when it has uncommitted changes; ""
outside git) and the message. It runs on the controller, in the worker that
ansible-playbook forked, which keeps ansible-playbook's arguments.
"""

from __future__ import annotations

import getpass
import socket
import subprocess
import sys

from ansible.plugins.lookup import LookupBase

DOCUMENTATION = r"""
name: stack_run
short_description: the controller user and host, playbook, inventory commit and message of this run
description:
  - One mapping with user, controller, playbook, inventory_commit and message.
options:
  message:
    description: A free text about the run (e.g. -e deploy_message=...).
    type: str
    default: ""
"""


def inventory_commit(inventory_dir: str) -> str:
    """Short commit of the git checkout holding the inventory ('' when none), '+' when dirty."""
    if not inventory_dir:
        return ""
    try:
        head = subprocess.run(["git", "-C", inventory_dir, "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=False)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", inventory_dir, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False)
        return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def run_info(variables: dict, message: str = "", argv: list[str] | None = None) -> dict:
    """Who runs this playbook (see the module's documentation)."""
    playbooks = [part for part in (sys.argv if argv is None else argv)[1:] if part.endswith((".yml", ".yaml"))]
    return {
        "user": getpass.getuser(),
        "controller": socket.gethostname(),
        "playbook": playbooks[-1] if playbooks else "",
        "inventory_commit": inventory_commit(str(variables.get("inventory_dir") or "")),
        "message": "" if message is None else str(message),
    }


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        return [run_info(variables or {}, self.get_option("message"))]
