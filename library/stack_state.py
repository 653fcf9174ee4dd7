#!/usr/bin/python3
"""Ansible module: has anything a role manages changed since its last converge?

A role that converged records, on the host, a *stamp* (a digest of its inputs
and its code, computed on the controller) and a *fingerprint* of what it
manages (the checksums of its files, the state of its units, the versions of
its packages, the output of a few read-only commands). On the next run one
call of this module compares both with what is there now: when nothing
differs, the role skips its phases (a no-op costs one round trip per role,
not one per file); when anything differs (new input, new code, a file edited
by hand, a unit stopped, a package removed or updated) the role converges as
usual and records again.

    stack_state:
      path: /var/lib/stack-state/caddy.json
      stamp: "<digest of the role's inputs and code>"
      files: [/etc/caddy/Caddyfile, ...]
      trees: [/usr/local/lib/backups]
      units: [caddy.service]
      packages: [caddy]
      commands: [[ufw, status, verbose]]
      record: false

Returns ``unchanged`` (true only when a record exists and both match),
``differs`` (what differs: ``stamp``, ``file:<path>``, ``tree:<path>``, ``unit:<name>``,
``package:<name>``, ``command:<n>``, ``no record``), ``recorded_stamp`` (the
record's stamp) and ``stamp`` (the one given: a role whose stamp has parts
can tell which part differs without computing it again)
and, with ``record:
true``, writes the record (root only, 0600) and reports ``changed`` only when
the record changed. It never changes anything else, and runs in check mode.

With ``summary: true`` and ``path`` a directory, it reads every record there
instead and checks each against the host with the spec the record keeps (its
files, units, packages and commands): the stack role's first play does this
once for all roles, and leaves a host whose every role is unchanged out of
site.yml's role plays (README.md, "No-op runs").

With ``refresh: [record paths]`` it fingerprints each of those records again
with the spec it keeps and rewrites it with its stamp: site.yml's last play
does this for the roles that converged in the run, so what a later role of
the same run changed in an earlier role's fingerprint (the app's migrations
in the database's catalog) is the state the next run compares with.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile

try:
    from ansible.module_utils.basic import AnsibleModule
except ImportError:  # pragma: no cover - the unit tests import the pure functions only
    AnsibleModule = None

DOCUMENTATION = r"""
module: stack_state
short_description: Tell in one read whether anything a role manages changed since its last converge
description:
  - Compares a stamp of the role's inputs and code, and a fingerprint of its files, units, packages and
    read-only commands, with the record its last converge wrote; with record=true writes that record.
options:
  path: {description: The record file (with I(summary), the directory of the records); required unless I(refresh)., type: path}
  stamp: {description: Digest of the role's inputs and code (the controller computes it); required unless I(summary)., type: str}
  files: {description: Files (content, mode, owner), directories (mode, owner) and links (target) that count., type: list, elements: path, default: []}
  trees: {description: Directories whose every file counts (content, mode, owner)., type: list, elements: path, default: []}
  units: {description: systemd units whose active, enabled and loaded state counts., type: list, elements: str, default: []}
  packages: {description: Packages whose installed version counts., type: list, elements: str, default: []}
  commands: {description: Read-only commands (argv) whose exit status and output count., type: list, elements: list, default: []}
  record: {description: Write the record instead of comparing., type: bool, default: false}
  summary:
    description:
      - Read every record in the directory I(path) instead, each checked against the host with the files, units,
        packages and commands it keeps; returns C(records), by path, with the recorded C(stamp) and C(matches).
    type: bool
    default: false
  refresh:
    description:
      - Record files to fingerprint again with the spec each keeps, keeping its stamp (a missing record or one
        without a spec is left alone); reports C(changed) false (a record is a cache, not configuration) and
        C(refreshed), the paths rewritten.
    type: list
    elements: path
    default: []
author: webstack maintainers
"""

UNIT_PROPERTIES = ("LoadState", "ActiveState", "SubState", "UnitFileState", "NeedDaemonReload")


def file_digest(path: str) -> str:
    """sha256 of a file's content with its mode and owner (a directory: its
    mode and owner; a symbolic link: its target), "absent" when missing."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "absent"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    meta = f"{info.st_mode & 0o7777:o}:{info.st_uid}:{info.st_gid}"
    if os.path.islink(path):
        return f"link:{os.readlink(path)}"
    if os.path.isdir(path):
        return f"dir:{meta}"
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 16), b""):
                digest.update(chunk)
        return f"{digest.hexdigest()}:{meta}"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"


def tree_digest(root: str) -> str:
    """One sha256 over every file under a directory (names, contents, modes
    and owners), "absent" when the directory is missing."""
    if not os.path.isdir(root):
        return "absent"
    digest = hashlib.sha256()
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files + dirs):
            full = os.path.join(directory, name)
            if name in dirs and not os.path.islink(full):
                continue
            digest.update(os.path.relpath(full, root).encode() + b"\0" + file_digest(full).encode() + b"\n")
    return digest.hexdigest()


def parse_units(output: str, units: list[str]) -> dict[str, str]:
    """`systemctl show -p ...` output for several units (blocks separated by a
    blank line, in the order asked) as {unit: "Prop=value,..."}."""
    blocks = [block for block in output.strip("\n").split("\n\n")] if output.strip() else []
    states = {}
    for unit, block in zip(units, blocks):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        states[unit] = ",".join(f"{prop}={values.get(prop, '')}" for prop in UNIT_PROPERTIES)
    for unit in units[len(blocks):]:
        states[unit] = "unknown"
    return states


def parse_packages(output: str, packages: list[str]) -> dict[str, str]:
    """dpkg-query -W -f='${Package}\\t${Version}\\t${db:Status-Abbrev}\\n' output as
    {package: version} (absent when not installed)."""
    found = {}
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[2].strip() == "ii":
            found[fields[0].split(":")[0]] = fields[1]
    return {name: found.get(name, "absent") for name in packages}


def fingerprint(files, units, packages, commands, trees=(), run=subprocess.run) -> dict:
    out: dict = {"files": {path: file_digest(path) for path in files},
                 "trees": {path: tree_digest(path) for path in trees}}
    if units:
        proc = run(["systemctl", "show", "-p", ",".join(UNIT_PROPERTIES), "--", *units],
                   capture_output=True, text=True, check=False)
        out["units"] = parse_units(proc.stdout, list(units))
    else:
        out["units"] = {}
    if packages:
        proc = run(["dpkg-query", "-W", "-f=${Package}\t${Version}\t${db:Status-Abbrev}\n", *packages],
                   capture_output=True, text=True, check=False)
        out["packages"] = parse_packages(proc.stdout, list(packages))
    else:
        out["packages"] = {}
    results = []
    for argv in commands:
        try:
            proc = run([str(a) for a in argv], capture_output=True, text=True, check=False, timeout=60)
            results.append(f"{proc.returncode}:" + hashlib.sha256(proc.stdout.encode()).hexdigest())
        except (OSError, subprocess.TimeoutExpired) as exc:
            results.append(f"error: {exc}")
    out["commands"] = results
    return out


def differences(record: dict | None, stamp: str, current: dict) -> list[str]:
    """What differs between the record and now (empty: nothing)."""
    if not record:
        return ["no record"]
    diff = [] if record.get("stamp") == stamp else ["stamp"]
    old = record.get("fingerprint") or {}
    for kind in ("files", "trees", "units", "packages"):
        before, now = old.get(kind) or {}, current.get(kind) or {}
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                diff.append(f"{kind[:-1]}:{key}")
    before, now = old.get("commands") or [], current.get("commands") or []
    for index in range(max(len(before), len(now))):
        if (before[index] if index < len(before) else None) != (now[index] if index < len(now) else None):
            diff.append(f"command:{index}")
    return diff


def read_record(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def write_record(path: str, record: dict) -> bool:
    """Write atomically (0600); True when the content changed."""
    if read_record(path) == record:
        return False
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".stack-state-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def record_entry(stamp: str, spec: dict, current: dict) -> dict:
    """What a converge records: its stamp, what it fingerprinted (so that one
    call can check every role's record at once, records_summary) and the
    fingerprint."""
    return {"stamp": stamp, "spec": spec, "fingerprint": current}


def records_summary(directory: str, run=subprocess.run) -> dict:
    """Every record in a directory, each checked against the host with the
    spec it keeps: {path: {"stamp": ..., "matches": bool, "differs": [...]}}.
    The stack role reads this once, before any role runs; a role then compares
    its stamp (computed on the controller) with the recorded one. A record
    without a spec (written before records kept one) never matches."""
    out = {}
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json") and not n.startswith("."))
    except OSError:
        return out
    for name in names:
        path = os.path.join(directory, name)
        record = read_record(path)
        spec = (record or {}).get("spec")
        if not isinstance(spec, dict):
            out[path] = {"stamp": (record or {}).get("stamp", ""), "matches": False, "differs": ["no spec"]}
            continue
        current = fingerprint(spec.get("files") or [], spec.get("units") or [], spec.get("packages") or [],
                              spec.get("commands") or [], spec.get("trees") or [], run=run)
        diff = [d for d in differences(record, record.get("stamp", ""), current) if d != "stamp"]
        out[path] = {"stamp": record.get("stamp", ""), "matches": not diff, "differs": diff}
    return out


def refresh_records(paths, run=subprocess.run) -> list[str]:
    """Fingerprint each record again with its own spec and rewrite it with
    its stamp; the paths whose record changed."""
    rewritten = []
    for path in paths:
        record = read_record(path)
        spec = (record or {}).get("spec")
        if not isinstance(spec, dict):
            continue
        current = fingerprint(spec.get("files") or [], spec.get("units") or [], spec.get("packages") or [],
                              spec.get("commands") or [], spec.get("trees") or [], run=run)
        if write_record(path, record_entry(record.get("stamp", ""), spec, current)):
            rewritten.append(path)
    return rewritten


def main() -> None:  # pragma: no cover - exercised through Ansible
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path"},
            "stamp": {"type": "str"},
            "files": {"type": "list", "elements": "path", "default": []},
            "trees": {"type": "list", "elements": "path", "default": []},
            "units": {"type": "list", "elements": "str", "default": []},
            "packages": {"type": "list", "elements": "str", "default": []},
            "commands": {"type": "list", "elements": "list", "default": []},
            "record": {"type": "bool", "default": False},
            "summary": {"type": "bool", "default": False},
            "refresh": {"type": "list", "elements": "path", "default": []},
        },
        supports_check_mode=True,
    )
    params = module.params
    if params["refresh"]:
        module.exit_json(changed=False, refreshed=[] if module.check_mode else refresh_records(params["refresh"]))
    if not params["path"] or not (params["summary"] or params["stamp"]):
        module.fail_json(msg="stack_state: path, and stamp unless summary, are required unless refresh is given")
    if params["summary"]:
        module.exit_json(changed=False, records=records_summary(params["path"]))
    current = fingerprint(params["files"], params["units"], params["packages"], params["commands"], params["trees"])
    if params["record"]:
        changed = False
        if not module.check_mode:
            spec = {key: params[key] for key in ("files", "trees", "units", "packages", "commands")}
            changed = write_record(params["path"], record_entry(params["stamp"], spec, current))
        module.exit_json(changed=changed, unchanged=True, differs=[])
    record = read_record(params["path"])
    diff = differences(record, params["stamp"], current)
    module.exit_json(changed=False, unchanged=not diff, differs=diff, recorded_stamp=(record or {}).get("stamp", ""),
                     stamp=params["stamp"])


if __name__ == "__main__":
    main()
