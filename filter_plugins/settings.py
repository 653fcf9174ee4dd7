"""Filters shared by the roles' restart-safe configuration.

A role that keeps a "last known-good" configuration also keeps the settings
(role variables, secrets as hashes) that produced it. When a new
configuration fails only at restart or reload, ``changed_settings`` names the
variables whose values differ between the known-good record and the attempt,
so the error message can say which input to look at.

The FilterModule at the bottom is a thin map from filter names to the plain
functions above it; tests in tests/unit call the functions directly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - only without ansible installed
    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        """Stand-in when ansible is not importable."""


_MISSING = object()


def _plain(value: Any) -> Any:
    """A JSON round trip: wrapped Ansible types and tuples compare as plain data."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def changed_settings(old: Any, new: Any, depth: int = 2) -> list[str]:
    """Names of the settings whose values differ between two records.

    ``old`` and ``new`` map variable names to values. A name present in only
    one of them counts as changed. Where both values are mappings and
    ``depth`` > 1, the keys inside are compared too and reported as
    ``name.key`` (for example ``postgresql_config.huge_pages``). An empty or
    missing ``old`` record (no known-good state yet) reports every name of
    ``new``. The result is sorted.
    """
    if old in (None, ""):
        old = {}
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        raise AnsibleFilterError(
            f"changed_settings: expects two mappings, got {type(old).__name__} and {type(new).__name__}")
    old_plain, new_plain = _plain(dict(old)), _plain(dict(new))
    return sorted(_diff(old_plain, new_plain, "", max(1, int(depth))))


def _diff(old: dict, new: dict, prefix: str, depth: int) -> list[str]:
    out = []
    for key in set(old) | set(new):
        before, after = old.get(key, _MISSING), new.get(key, _MISSING)
        if before == after:
            continue
        name = f"{prefix}{key}"
        if depth > 1 and isinstance(before, dict) and isinstance(after, dict):
            out.extend(_diff(before, after, f"{name}.", depth - 1))
        else:
            out.append(name)
    return out


def secret_digest(value: Any) -> str:
    """A short sha256 of a secret value, for settings records that must not
    hold the secret itself (equal values give equal digests)."""
    text = json.dumps(_plain(value), sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def secrets_redacted(value: Any, key: str) -> Any:
    """``value`` (plain data) with every mapping found under ``key`` anywhere
    in it mapping to secret_digest of its values instead (for example the
    ``basic_auth`` user -> password hash of caddy_sites): what a settings
    record and the facts that read it may keep. A changed secret still gives
    a changed record; the input is left alone."""
    if isinstance(value, Mapping):
        return {k: ({name: secret_digest(str(secret)) for name, secret in v.items()}
                    if k == key and isinstance(v, Mapping) else secrets_redacted(v, key))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [secrets_redacted(item, key) for item in value]
    return value


def known_good_differs(checksum_lines: Any, files: Any) -> list[str]:
    """Names of the files whose live copy differs from the known-good copy.

    ``checksum_lines`` is ``sha256sum`` output (``<hex>  <path>`` per line;
    files it could not read are absent); ``files`` is a list of mappings with
    ``name``, ``live`` and ``good`` paths. A missing live file or a missing
    known-good copy counts as a difference. The order of ``files`` is kept.
    """
    if isinstance(checksum_lines, str):
        checksum_lines = checksum_lines.splitlines()
    if not isinstance(checksum_lines, Sequence):
        raise AnsibleFilterError(
            f"known_good_differs: expects sha256sum output lines, got {type(checksum_lines).__name__}")
    sums: dict[str, str] = {}
    for line in checksum_lines:
        digest, sep, path = str(line).partition("  ")
        if sep and digest:
            sums[path.strip()] = digest
    if isinstance(files, (str, Mapping)) or not isinstance(files, Sequence):
        raise AnsibleFilterError("known_good_differs: expects a list of {name, live, good} mappings")
    out = []
    for item in files:
        if not isinstance(item, Mapping) or not all(k in item for k in ("name", "live", "good")):
            raise AnsibleFilterError(f"known_good_differs: {item!r} needs name, live and good")
        if sums.get(str(item["live"]), "no live file") != sums.get(str(item["good"]), "no known-good copy"):
            out.append(str(item["name"]))
    return out


class FilterModule:
    """Restart-safe configuration helpers."""

    def filters(self) -> dict[str, Any]:
        return {
            "changed_settings": changed_settings,
            "secret_digest": secret_digest,
            "secrets_redacted": secrets_redacted,
            "known_good_differs": known_good_differs,
        }
