#!/usr/bin/env python3
"""Pack an app source into a release archive whose id derives from its content.

Runs on the Ansible controller (delegate_to: localhost).

  pack_release.py dir PATH [OUTDIR] [--exclude PATTERN ...] [--expect ID]
      Hash the tree (sorted relative paths, executable bit and content; the
      patterns leave paths out) and print {"id", "archive", "files"} as JSON.
      With OUTDIR, also write OUTDIR/<id>.tar.gz with normalised owners,
      modes and times ("auto": a new temporary directory). A run that changes
      nothing only needs the id; the archive is made when a deploy needs it.
      With --expect, fail unless the tree still gives that id (the source
      changed since the run read it).
  pack_release.py archive PATH
      Id from the archive's sha256; prints {"id", "archive", "files": null}.

The same content always gives the same id, so a re-run makes no new release.
"""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile

ID_LENGTH = 12


def excluded(relpath: str, patterns: list[str]) -> bool:
    """True when any path component or the whole relative path matches a pattern."""
    parts = relpath.split("/")
    return any(fnmatch.fnmatch(relpath, pat) or any(fnmatch.fnmatch(p, pat) for p in parts)
               for pat in patterns)


def walk(root: str, patterns: list[str]) -> list[tuple[str, str]]:
    """Sorted (relative path, absolute path) of the regular files to release."""
    if not os.path.isdir(root):
        raise SystemExit(f"app_service_source_path: {root!r} is not a directory on the controller")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(d for d in dirnames if not excluded(rel_dir + d, patterns))
        for name in filenames:
            rel = rel_dir + name
            full = os.path.join(dirpath, name)
            if excluded(rel, patterns) or not os.path.isfile(full) or os.path.islink(full):
                continue
            found.append((rel, full))
    if not found:
        raise SystemExit(f"app_service_source_path: {root!r} has no files to release")
    return sorted(found)


def tree_id(files: list[tuple[str, str]]) -> str:
    """Content hash of a file list: path, executable bit and bytes of each."""
    digest = hashlib.sha256()
    for rel, full in files:
        executable = os.access(full, os.X_OK)
        with open(full, "rb") as handle:
            content = handle.read()
        digest.update(f"{rel}\0{int(executable)}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:ID_LENGTH]


def write_archive(files: list[tuple[str, str]], dest: str) -> None:
    """A reproducible tar.gz: root-owned, 0644/0755, fixed mtime, sorted."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, full in files:
            info = tar.gettarinfo(full, arcname=rel)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            info.mode = 0o755 if os.access(full, os.X_OK) else 0o644
            with open(full, "rb") as handle:
                tar.addfile(info, handle)
    tmp = dest + ".tmp"
    with open(tmp, "wb") as out, gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    os.replace(tmp, dest)


def archive_id(path: str) -> str:
    if not os.path.isfile(path):
        raise SystemExit(f"app_service_source_path: {path!r} is not a file on the controller")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:ID_LENGTH]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="kind", required=True)
    p_dir = sub.add_parser("dir")
    p_dir.add_argument("path")
    p_dir.add_argument("outdir", nargs="?")
    p_dir.add_argument("--exclude", action="append", default=[])
    p_dir.add_argument("--expect")
    p_arc = sub.add_parser("archive")
    p_arc.add_argument("path")
    args = parser.parse_args(argv)
    if args.kind == "dir":
        files = walk(os.path.abspath(args.path), args.exclude)
        rid = tree_id(files)
        if args.expect and rid != args.expect:
            raise SystemExit(f"app_service_source_path: {args.path!r} changed during the run "
                             f"(release {args.expect} was read, the tree is now {rid}); run again")
        dest = None
        if args.outdir:
            outdir = tempfile.mkdtemp(prefix="app_service_") if args.outdir == "auto" else args.outdir
            dest = os.path.join(outdir, f"{rid}.tar.gz")
            write_archive(files, dest)
        result = {"id": rid, "archive": dest, "files": len(files)}
    else:
        result = {"id": archive_id(args.path), "archive": os.path.abspath(args.path), "files": None}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
