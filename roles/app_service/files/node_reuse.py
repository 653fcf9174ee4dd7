#!/usr/bin/python3
"""Carry what a Node release can take from the current one into a new
release before its build (tasks/build_node.yml), as root, on the app host.

  node_reuse.py RELEASE_DIR CURRENT_DIR NPM_CI_ARGS_JSON CACHE_DIRS_JSON

- node_modules: copied from CURRENT_DIR when its record (.app_service_node_modules:
  the sha256 of package-lock.json, node's version and the npm ci arguments)
  equals the new release's: npm ci would install the same tree. Otherwise
  nothing is copied and the caller runs npm ci.
- each of CACHE_DIRS (release-relative, e.g. .next/cache): copied from
  CURRENT_DIR when there, so the framework's build reuses its cache.

Prints JSON: {"record": <the new release's record>, "reused_from": <dir or "">,
"caches": [<the cache dirs copied>]}. Copies are `cp -a` (no links into the
other release: a release is never changed by another's build).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

RECORD = ".app_service_node_modules"


def record_of(release: str, npm_ci_args: list[str]) -> str:
    with open(os.path.join(release, "package-lock.json"), "rb") as handle:
        lock = hashlib.sha256(handle.read()).hexdigest()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return json.dumps({"lock": lock, "node": node, "npm_ci_args": npm_ci_args}, sort_keys=True)


def read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def copy_tree(source: str, target: str) -> None:
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if os.path.lexists(target):
        shutil.rmtree(target)
    subprocess.run(["cp", "-a", "--reflink=auto", source, target], check=True)


def main(argv: list[str]) -> int:
    release, current, npm_ci_args, cache_dirs = argv[0], argv[1], json.loads(argv[2]), json.loads(argv[3])
    for cache in cache_dirs:
        parts = cache.split("/")
        if not cache or cache.startswith("/") or ".." in parts or "node_modules" == parts[0]:
            print(f"node_reuse.py: cache directory {cache!r} must be relative to the release, without '..'",
                  file=sys.stderr)
            return 2
    record = record_of(release, npm_ci_args)
    result = {"record": record, "reused_from": "", "caches": []}
    current = os.path.realpath(current) if current and os.path.isdir(current) else ""
    if current and os.path.realpath(release) != current:
        if read(os.path.join(current, RECORD)) == record and os.path.isdir(os.path.join(current, "node_modules")):
            copy_tree(os.path.join(current, "node_modules"), os.path.join(release, "node_modules"))
            result["reused_from"] = current
        for cache in cache_dirs:
            source = os.path.join(current, cache)
            if os.path.isdir(source) and not os.path.islink(source):
                copy_tree(source, os.path.join(release, cache))
                result["caches"].append(cache)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
