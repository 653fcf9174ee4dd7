"""The backup directory: complete sets (renamed from .partial-<name> once
written, manifest present) and their manifests, sha256sum-format checksum
files, sizes, and flushing a set to disk before it is renamed into place."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any

import backups_lib  # same file as filter_plugins/backups.py

from .common import BackupError

MANIFEST = "manifest.json"
PARTIAL_PREFIX = ".partial-"


def sets(backup_dir: str) -> list[str]:
    """Complete sets (renamed from their partial name, manifest present), newest first."""
    if not os.path.isdir(backup_dir):
        return []
    found = [n for n in os.listdir(backup_dir)
             if backups_lib.SET_NAME_RE.match(n) and os.path.isfile(os.path.join(backup_dir, n, MANIFEST))]
    return sorted(found, reverse=True)


def choose_set(backup_dir: str, name: str | None) -> str:
    """NAME if it is a complete set, the newest set (tagged or not) when NAME is None."""
    names = sets(backup_dir)
    if not names:
        raise BackupError(f"no complete backup set in {backup_dir}")
    name = name or names[0]
    if name not in names:
        raise BackupError(f"backup set {name} not found in {backup_dir}")
    return name


def manifest(backup_dir: str, name: str) -> dict[str, Any]:
    with open(os.path.join(backup_dir, name, MANIFEST), encoding="utf-8") as handle:
        return json.load(handle)


def write_manifest(set_dir: str, content: dict[str, Any]) -> None:
    with open(os.path.join(set_dir, MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2, sort_keys=True)
        handle.write("\n")


def remove_partials(backup_dir: str) -> None:
    """Remove the partial sets a killed run left behind."""
    for stale in os.listdir(backup_dir):
        if stale.startswith(PARTIAL_PREFIX):
            shutil.rmtree(os.path.join(backup_dir, stale))


# ---------------------------------------------------------------- checksums
def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksum(set_dir: str, rel: str) -> str:
    """Write REL.sha256 in sha256sum format (one line per file of a directory dump).

    Returns the file's checksum, or for a directory dump the checksum of its .sha256 file.
    """
    target = os.path.join(set_dir, rel)
    files = [rel]
    if os.path.isdir(target):
        files = sorted(os.path.join(rel, f) for f in os.listdir(target))
    lines = [f"{sha256_file(os.path.join(set_dir, f))}  {f}\n" for f in files]
    tmp = os.path.join(set_dir, f".{rel}.sha256.tmp")
    with open(tmp, "w", encoding="ascii") as handle:
        handle.writelines(lines)
    os.replace(tmp, os.path.join(set_dir, f"{rel}.sha256"))
    return lines[0].split()[0] if len(lines) == 1 else sha256_file(os.path.join(set_dir, f"{rel}.sha256"))


def check_checksum(set_dir: str, rel: str) -> None:
    """Check every file REL.sha256 lists; a missing or changed file raises BackupError."""
    sums = os.path.join(set_dir, f"{rel}.sha256")
    if not os.path.isfile(sums):
        raise BackupError(f"checksum file {sums} is missing")
    with open(sums, encoding="ascii") as handle:
        lines = [ln.split(None, 1) for ln in handle if ln.strip()]
    for expected, name in lines:
        name = name.strip()
        path = os.path.join(set_dir, name)
        if not os.path.isfile(path):
            raise BackupError(f"{path} listed in {sums} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BackupError(f"checksum mismatch for {path}: expected {expected}, got {actual}")


# ---------------------------------------------------------------- sizes and flushing
def size_of(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    return os.path.getsize(path)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """Flush every file of a set, then the directories, before the set is renamed into place."""
    for root, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)
