"""systemd's EnvironmentFile format, shared by the roles that write one
(app_service's app environment, caddy's caddy.env): one function, so every
file gets the same quoting.

The FilterModule at the bottom is a thin map from filter names to the plain
functions above it; tests in tests/unit call the functions directly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - only without ansible installed
    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        """Stand-in when ansible is not importable."""


_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def env_file(env: Any, var: str) -> str:
    """Render a systemd EnvironmentFile body from a mapping, one KEY="value" a line.

    Names must be shell-style identifiers; values are double-quoted with
    backslash, double quote, dollar and backquote escaped; newlines are refused (systemd
    would read them as the next assignment).
    """
    if env is None:
        return ""
    if not isinstance(env, Mapping):
        raise AnsibleFilterError(f"{var}: must be a mapping of NAME: value, got {type(env).__name__}")
    lines = []
    for key in sorted(env, key=str):
        name = str(key)
        if not _ENV_NAME_RE.match(name):
            raise AnsibleFilterError(f"{var}: {name!r} is not a valid environment variable name")
        value = env[key]
        if value is None:
            value = ""
        if isinstance(value, bool):
            value = "true" if value else "false"
        if isinstance(value, (Mapping, list, tuple)):
            raise AnsibleFilterError(f"{var}.{name}: must be a string or number")
        text = str(value)
        if "\n" in text or "\r" in text or "\x00" in text:
            raise AnsibleFilterError(f"{var}.{name}: must be a single line")
        escaped = "".join("\\" + c if c in '\\"$`' else c for c in text)
        lines.append(f'{name}="{escaped}"')
    return "\n".join(lines) + ("\n" if lines else "")


class FilterModule:
    """systemd file formats."""

    def filters(self) -> dict[str, Any]:
        return {"systemd_env_file": env_file}
