"""Lookup plugin: one sha256 over the files under some paths (their relative
names and contents, in sorted order), for the roles' converge stamps: a role
whose code changed converges again even when its inputs did not.

    {{ lookup('stack_code_digest', role_path, playbook_dir ~ '/../filter_plugins') }}

Compiled Python caches (__pycache__, *.pyc) are left out.
"""

from __future__ import annotations

import hashlib
import os

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

DOCUMENTATION = r"""
name: stack_code_digest
short_description: sha256 over the files under directories (names and contents)
description:
  - One digest of every file under the given files or directories, in sorted order, leaving out __pycache__
    and *.pyc.
options:
  _terms:
    description: Files or directories.
    required: true
"""


def tree_digest(paths: list[str]) -> str:
    digest = hashlib.sha256()
    for root in paths:
        root = os.path.realpath(str(root))
        if os.path.isfile(root):
            entries = [(os.path.basename(root), root)]
        elif os.path.isdir(root):
            entries = []
            for directory, dirs, files in os.walk(root):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for name in sorted(files):
                    if not name.endswith(".pyc"):
                        full = os.path.join(directory, name)
                        entries.append((os.path.relpath(full, root), full))
        else:
            raise AnsibleLookupError(f"stack_code_digest: {root} is neither a file nor a directory")
        for relative, full in sorted(entries):
            digest.update(relative.encode() + b"\0")
            with open(full, "rb") as handle:
                digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        return [tree_digest(list(terms))]
