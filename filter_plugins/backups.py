"""Filters for the backups role: grandfather-father-son retention, tagged
sets kept apart, backup set names, pg_dump compression arguments and the
target of a point-in-time restore.

This file is also shipped to the database hosts (as backups_lib.py beside the
backup script, through the symlink roles/backups/files/backups_lib.py) so the
retention the script applies is exactly the code tested in
tests/unit/test_backups.py. It therefore needs nothing but the standard
library; ansible is optional.

The FilterModule at the bottom is a thin map from filter names to the plain
functions above it.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # on the database host: the backup script has no ansible
    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        """Stand-in when ansible is not importable."""


# A backup set is a directory named after the UTC time its run started, with
# the run's tag after a dash for a tagged run (20250310T023000Z-premigration).
# The time has a fixed width, so names sort in time order.
SET_NAME_FORMAT = "%Y%m%dT%H%M%SZ"
TAG_PATTERN = "[a-z][a-z0-9-]{0,30}"
TAG_RE = re.compile(f"^{TAG_PATTERN}$")
SET_NAME_RE = re.compile(rf"^(\d{{8}}T\d{{6}}Z)(?:-({TAG_PATTERN}))?$")
RETENTION_KEYS = ("daily", "weekly", "monthly")
COMPRESSION_METHODS = ("auto", "gzip", "zstd", "none")
# pg_dump learned --compress=zstd in PostgreSQL 16.
ZSTD_MIN_VERSION = 16
DEFAULT_LEVELS = {"gzip": 6, "zstd": 3}
MAX_LEVELS = {"gzip": 9, "zstd": 22}


def set_tag(tag: Any, var: str = "backups_tag") -> str:
    """Check a set tag: '' (an ordinary set) or a name matching ``^[a-z][a-z0-9-]{0,30}$``."""
    if tag == "":
        return tag
    if not isinstance(tag, str) or not TAG_RE.match(tag):
        raise AnsibleFilterError(f"{var}: {tag!r} is not a tag: it must match ^{TAG_PATTERN}$ "
                                 "(a lowercase letter, then up to 30 lowercase letters, digits or dashes)")
    return tag


def set_name(when: dt.datetime, tag: str = "") -> str:
    """Name of a backup set started at ``when`` (naive values are taken as UTC), tagged with ``tag``."""
    if when.tzinfo is not None:
        when = when.astimezone(dt.timezone.utc).replace(tzinfo=None)
    name = when.strftime(SET_NAME_FORMAT)
    return f"{name}-{set_tag(tag)}" if tag else name


def split_set_name(name: Any, var: str = "backup set") -> tuple[dt.datetime, str]:
    """Parse a set name like ``20250310T023000Z(-premigration)`` into (naive UTC datetime, tag or '')."""
    match = SET_NAME_RE.match(name) if isinstance(name, str) else None
    if not match:
        raise AnsibleFilterError(f"{var}: {name!r} is not a backup set name like 20250310T023000Z "
                                 "or 20250310T023000Z-premigration")
    try:
        return dt.datetime.strptime(match.group(1), SET_NAME_FORMAT), match.group(2) or ""
    except ValueError as exc:
        raise AnsibleFilterError(f"{var}: {name!r} is not a valid date and time ({exc})") from None


def parse_set_name(name: Any, var: str = "backup set") -> dt.datetime:
    """Parse a set name like ``20250310T023000Z`` (tagged or not) into a naive UTC datetime."""
    return split_set_name(name, var)[0]


def retention_policy(policy: Any, var: str = "backups_retention") -> dict[str, int]:
    """Validate a retention mapping {daily, weekly, monthly} of counts >= 0.

    Missing keys count as 0; at least one count must be positive, because the
    policy is only ever applied after a good run and must keep that run.
    """
    if not isinstance(policy, Mapping):
        raise AnsibleFilterError(f"{var}: must be a mapping with keys {', '.join(RETENTION_KEYS)}")
    unknown = sorted(str(k) for k in set(policy) - set(RETENTION_KEYS))
    if unknown:
        raise AnsibleFilterError(f"{var}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(RETENTION_KEYS)}")
    result = {}
    for key in RETENTION_KEYS:
        value = policy.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise AnsibleFilterError(f"{var}.{key}: must be a whole number >= 0, got {value!r}")
        result[key] = value
    if not any(result.values()):
        raise AnsibleFilterError(f"{var}: at least one of daily, weekly, monthly must be positive")
    return result


def tagged_policy(policy: Any, var: str = "tagged retention") -> dict[str, int]:
    """Validate a mapping {tag: how many of that tag's newest sets to keep} (counts >= 0).

    The role builds it from backups_keep_premigration.
    """
    if not isinstance(policy, Mapping):
        raise AnsibleFilterError(f"{var}: must be a mapping of tag to a count of sets to keep")
    result = {}
    for tag, value in policy.items():
        set_tag(tag, var)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise AnsibleFilterError(f"{var}: the count of {tag} sets to keep must be a whole number >= 0, "
                                     f"got {value!r}")
        result[tag] = value
    return result


def _bucket(when: dt.datetime, period: str) -> tuple[int, ...]:
    if period == "daily":
        return (when.year, when.month, when.day)
    if period == "weekly":
        iso = when.isocalendar()
        return (iso[0], iso[1])
    return (when.year, when.month)


def retention_keep(names: Iterable[Any], policy: Any, var: str = "backups_retention",
                   tagged: Any = None) -> list[str]:
    """Grandfather-father-son for untagged sets, newest N per tag: the set names to keep, newest first.

    Untagged sets: for each period (daily, weekly by ISO week, monthly) the
    newest set of each of the last N periods *that have a set* is kept, as
    borg and restic do, so a pause in backups never ages every set out.
    Tagged sets never count there: ``tagged`` maps a tag to how many of its
    newest sets to keep; a tag without a count is never pruned. The newest
    set of all is always kept. Names that are not set names raise
    AnsibleFilterError rather than being silently deleted or kept.
    """
    counts = retention_policy(policy, var)
    tag_counts = tagged_policy({} if tagged is None else tagged)
    parsed = sorted({(*split_set_name(n), str(n)) for n in names}, key=lambda p: (p[0], p[2]), reverse=True)
    if not parsed:
        return []
    keep = {parsed[0][2]}
    untagged = [(when, name) for when, tag, name in parsed if not tag]
    for period, limit in counts.items():
        seen: list[tuple[int, ...]] = []
        for when, name in untagged:
            bucket = _bucket(when, period)
            if bucket in seen:
                continue
            if len(seen) >= limit:
                break
            seen.append(bucket)
            keep.add(name)
    per_tag: dict[str, int] = {}
    for _, tag, name in parsed:
        if tag:
            per_tag[tag] = per_tag.get(tag, 0) + 1
            limit = tag_counts.get(tag)
            if limit is None or per_tag[tag] <= limit:
                keep.add(name)
    return [name for _, _, name in parsed if name in keep]


def retention_prune(names: Iterable[Any], policy: Any, var: str = "backups_retention",
                    tagged: Any = None) -> list[str]:
    """The set names the retention policy (and the tagged counts) delete, oldest first."""
    names = [str(n) for n in names]
    keep = set(retention_keep(names, policy, var, tagged))
    return sorted(n for n in set(names) if n not in keep)


def compression_args(method: Any = "auto", level: Any = None, pg_version: Any = 15,
                     var: str = "backups_compression") -> list[str]:
    """pg_dump arguments for a compression choice and server major version.

    ``auto`` picks zstd where pg_dump has it (PostgreSQL 16+) and gzip
    otherwise; asking for zstd on an older pg_dump is an error rather than a
    silent fallback. ``level`` None means the method's usual default.
    """
    if method not in COMPRESSION_METHODS:
        raise AnsibleFilterError(f"{var}: {method!r} is not one of {', '.join(COMPRESSION_METHODS)}")
    try:
        version = int(str(pg_version).split(".", maxsplit=1)[0])
    except ValueError:
        raise AnsibleFilterError(f"{var}: PostgreSQL version {pg_version!r} is not a number") from None
    if method == "auto":
        method = "zstd" if version >= ZSTD_MIN_VERSION else "gzip"
    if method == "none":
        return ["--compress=0"]
    if method == "zstd" and version < ZSTD_MIN_VERSION:
        raise AnsibleFilterError(f"{var}: zstd needs pg_dump {ZSTD_MIN_VERSION} or later, this host has "
                                 f"{version}; use gzip or auto")
    if level in (None, ""):
        level = DEFAULT_LEVELS[method]
    if isinstance(level, bool) or not str(level).isdigit() or not 1 <= int(level) <= MAX_LEVELS[method]:
        raise AnsibleFilterError(f"{var}_level: {level!r} is not a {method} level 1-{MAX_LEVELS[method]}")
    if version < ZSTD_MIN_VERSION:
        return [f"--compress={int(level)}"]
    return [f"--compress={method}:{int(level)}"]


# A restore point name as pg_create_restore_point() takes it (at most 63 bytes).
RESTORE_POINT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,63}$")
TIME_ZONE_RE = re.compile(r"([+-]\d{2})$")


def parse_restore_time(value: Any, var: str = "backups_restore_time") -> dt.datetime:
    """A point in time with its zone: '2026-11-23 10:15:00+00', ISO 8601 with T, Z or +HH:MM."""
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = TIME_ZONE_RE.sub(r"\1:00", text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise AnsibleFilterError(f"{var}: '{value}' is not a time like '2026-11-23 10:15:00+00'") from None
    if when.tzinfo is None:
        raise AnsibleFilterError(f"{var}: '{value}' has no time zone; add one, e.g. '{value}+00'")
    return when


def _stamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S+00")


def pitr_target(info: Any, stanza: str = "main", restore_time: Any = "", restore_point: Any = "",
                latest: Any = False, now: Any = None) -> dict[str, Any]:
    """What a point-in-time restore recovers to, from `pgbackrest info --output=json`.

    Exactly one of restore_time (backups_restore_time), restore_point
    (backups_restore_point) or latest (backups_restore_latest: the end of the
    archived WAL). A time must lie between the end of the oldest backup and
    now. Returns the pgBackRest --type/--target/--set to restore with and the
    backups' time range.
    """
    chosen = [name for name, value in (("backups_restore_time", restore_time),
                                        ("backups_restore_point", restore_point),
                                        ("backups_restore_latest", latest)) if value not in ("", None, False)]
    if len(chosen) != 1:
        raise AnsibleFilterError("set exactly one of backups_restore_time, backups_restore_point or "
                                 f"backups_restore_latest for a point-in-time restore (got {', '.join(chosen) or 'none'})")
    stanzas = [entry for entry in (info or []) if isinstance(entry, Mapping) and entry.get("name") == stanza]
    backups = sorted(stanzas[0].get("backup", []) if stanzas else [],
                     key=lambda backup: backup["timestamp"]["stop"])
    if not backups:
        raise AnsibleFilterError(f"backups_pitr_stanza: the pgBackRest stanza {stanza} holds no backup to restore from")
    oldest, newest = backups[0]["timestamp"]["stop"], backups[-1]["timestamp"]["stop"]
    plan: dict[str, Any] = {"oldest_backup": _stamp(oldest), "newest_backup": _stamp(newest), "set": ""}
    if restore_time not in ("", None):
        when = parse_restore_time(restore_time).timestamp()
        current = time.time() if now is None else float(now)
        if when > current:
            raise AnsibleFilterError(f"backups_restore_time: {restore_time} is in the future "
                                     f"(now is {_stamp(current)})")
        if when < oldest:
            raise AnsibleFilterError(f"backups_restore_time: {restore_time} is before the end of the oldest backup "
                                     f"({_stamp(oldest)}); no backup can recover to it")
        # The newest backup that ended at or before the target.
        plan["set"] = [backup["label"] for backup in backups if backup["timestamp"]["stop"] <= when][-1]
        plan.update({"type": "time", "target": dt.datetime.fromtimestamp(when, dt.timezone.utc)
                     .strftime("%Y-%m-%d %H:%M:%S.%f+00")})
    elif restore_point not in ("", None):
        if not RESTORE_POINT_RE.match(str(restore_point)):
            raise AnsibleFilterError(f"backups_restore_point: '{restore_point}' is not a restore point name "
                                     "(letters, digits and _.:-, at most 63)")
        plan.update({"type": "name", "target": str(restore_point)})
    else:
        plan.update({"type": "default", "target": ""})
    return plan


class FilterModule:
    """Ansible filter map for the backups role."""

    def filters(self) -> dict[str, Any]:
        return {
            "backups_retention_policy": retention_policy,
            "backups_set_tag": set_tag,
            "backups_retention_keep": retention_keep,
            "backups_retention_prune": retention_prune,
            "backups_compression_args": compression_args,
            "backups_pitr_target": pitr_target,
        }
