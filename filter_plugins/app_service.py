"""Filters for the app_service role: blue/green slot choice, release
pruning/rollback planning and reading schema
revisions from a migration tool's output.

The FilterModule at the bottom is a thin map from filter names to the plain
functions above it; tests in tests/unit call the functions directly.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - only without ansible installed
    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        """Stand-in when ansible is not importable."""


def _port_list(ports: Any, var: str) -> list[int]:
    if isinstance(ports, (str, Mapping)) or not isinstance(ports, Sequence):
        raise AnsibleFilterError(f"{var}: must be a list of two ports, got {type(ports).__name__}")
    try:
        result = [int(p) for p in ports]
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"{var}: ports must be integers, got {list(ports)!r}") from None
    if len(result) != 2 or len(set(result)) != 2:
        raise AnsibleFilterError(f"{var}: exactly two distinct ports are needed (blue/green), got {result}")
    for port in result:
        if not 1 <= port <= 65535:
            raise AnsibleFilterError(f"{var}: port {port} is out of range 1-65535")
    return result


def pick_slots(ports: Any, links: Mapping[Any, Any] | None, active: Mapping[Any, Any] | None,
               current: Any = "", var: str = "app_service_ports") -> dict[str, Any]:
    """Choose the serving ("active") and the idle instance of a blue/green pair.

    ``links`` maps each port to the release its instance link points at ('' when
    none), ``active`` maps each port to its unit's state (``systemctl
    is-active`` output or a boolean), ``current``
    is the release the ``current`` symlink points at. The active instance is a
    running one on the current release (else any running one, else none); the
    idle instance is the other port. Keys may be ints or strings.
    """
    port_list = _port_list(ports, var)
    links = {int(k): ("" if v is None else str(v)) for k, v in (links or {}).items()}
    running = {int(k): v is True or str(v).strip() == "active" for k, v in (active or {}).items()}
    current = "" if current is None else str(current)
    candidates = [p for p in port_list if running.get(p)]
    on_current = [p for p in candidates if current and links.get(p) == current]
    chosen = (on_current or candidates or [None])[0]
    idle = port_list[1] if chosen == port_list[0] else port_list[0]
    return {
        "active": chosen,
        "idle": idle,
        "active_release": links.get(chosen, "") if chosen is not None else "",
        "running": candidates,
    }


def _basename(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def release_plan(releases: Any, markers: Any = None, current: Any = "", keep: Any = 5,
                 activated_name: str = ".app_service_activated",
                 failed_name: str = ".app_service_failed") -> dict[str, Any]:
    """Decide which releases to prune and which one "previous" means.

    ``releases`` lists the release directories as mappings with ``path`` (or
    ``id``) and ``mtime``, as ``ansible.builtin.find`` returns them. ``markers``
    lists marker files inside them (``path``, ``mtime``): ``activated_name``
    tells when a release last went live, ``failed_name`` that its health gate
    failed. Releases are ordered newest first by last activation (else the
    directory's mtime). ``keep`` releases stay, ``current`` always; failed
    releases go before any good one. ``previous`` is the most recently
    activated good release other than current ('' if none).
    """
    try:
        keep_n = int(keep)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"app_service_keep_releases: must be an integer, got {keep!r}") from None
    if keep_n < 1:
        raise AnsibleFilterError(f"app_service_keep_releases: must be at least 1, got {keep_n}")
    activated: dict[str, float] = {}
    failed_ids: set[str] = set()
    for marker in markers or []:
        if not isinstance(marker, Mapping) or "path" not in marker:
            raise AnsibleFilterError(f"release_plan: each marker needs a 'path', got {marker!r}")
        path = str(marker["path"]).rstrip("/")
        name, rid = _basename(path), _basename(path.rsplit("/", 1)[0]) if "/" in path else ""
        if name == activated_name:
            activated[rid] = float(marker.get("mtime", 0))
        elif name == failed_name:
            failed_ids.add(rid)
    current = "" if current is None else str(current)
    items = []
    for rel in releases or []:
        if not isinstance(rel, Mapping) or not ("id" in rel or "path" in rel):
            raise AnsibleFilterError(f"release_plan: each release needs an 'id' or a 'path', got {rel!r}")
        rid = str(rel["id"]) if "id" in rel else _basename(rel["path"])
        items.append((rid, activated.get(rid, float(rel.get("mtime", 0)))))
    newest_first = [rid for rid, _ in sorted(items, key=lambda i: (i[1], i[0]), reverse=True)]
    good = [r for r in newest_first if r not in failed_ids and r != current]
    bad = [r for r in newest_first if r in failed_ids and r != current]
    budget = keep_n - (1 if current in newest_first else 0)
    kept_good = good[:max(budget, 0)]
    budget -= len(kept_good)
    kept_bad = bad[:max(budget, 0)]
    prune = [r for r in newest_first if r != current and r not in kept_good and r not in kept_bad]
    previous = next((r for r in newest_first if r in activated and r != current and r not in failed_ids), "")
    return {"prune": prune, "previous": previous, "order": newest_first, "failed": sorted(failed_ids)}


_LOG_LINE_RE = re.compile(r"^(DEBUG|INFO|WARN|WARNING|ERROR|CRITICAL)\b")


def revisions(text: Any, var: str = "app_service_revision_command") -> list[str]:
    """Schema revision ids in the output of ``alembic heads`` / ``alembic current``.

    Takes the first token of each non-empty line (``0002 (head)`` gives
    ``0002``), skips lines that start with a log level (``INFO  [alembic...]``
    when a tool logs to stdout), drops duplicates and sorts, so two outputs
    compare equal when they name the same revisions. An empty output (no
    migrations, or a database without a version table) gives ``[]``.
    """
    if text is None:
        return []
    if isinstance(text, (list, tuple)):
        text = "\n".join(str(line) for line in text)
    if not isinstance(text, str):
        raise AnsibleFilterError(f"{var}: expected the command's output as text, got {type(text).__name__}")
    found = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or _LOG_LINE_RE.match(line):
            continue
        found.add(line.split()[0])
    return sorted(found)


_PLACEHOLDER_RE = re.compile(r"\{(host|port)\}")


def exec_line(argv: Any, var: str = "app_service_web_command", host: Any = None, port: Any = None) -> str:
    """A systemd ExecStart= value from an argument list.

    Each argument is escaped for systemd: ``%`` becomes ``%%`` and ``$``
    becomes ``$$`` (no specifier or variable expansion of the app's own
    arguments), an argument with whitespace, quotes or backslashes is
    double-quoted. ``{host}`` and ``{port}`` are replaced by ``host`` and
    ``port`` after escaping, so ``port="%i"`` gives the instance name.
    """
    if not isinstance(argv, (list, tuple)) or not argv:
        raise AnsibleFilterError(f"{var}: must be a non-empty list of arguments, got {argv!r}")
    out = []
    for index, arg in enumerate(argv):
        if isinstance(arg, (Mapping, list, tuple)) or arg is None:
            raise AnsibleFilterError(f"{var}[{index}]: must be a string or number, got {arg!r}")
        text = str(arg)
        if text == "" or any(c in text for c in "\n\r\x00"):
            raise AnsibleFilterError(f"{var}[{index}]: must be a non-empty single-line string")
        text = text.replace("%", "%%").replace("$", "$$")
        values = {"host": host, "port": port}

        def _fill(match: "re.Match[str]") -> str:
            value = values[match.group(1)]
            if value is None:
                raise AnsibleFilterError(f"{var}[{index}]: {{{match.group(1)}}} has no value here")
            return str(value)

        text = _PLACEHOLDER_RE.sub(_fill, text)
        if any(c.isspace() for c in text) or any(c in text for c in "\"'\\;"):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(text)
    return " ".join(out)


def ip_networks(values: Any, var: str = "app_service_egress_allow") -> list[str]:
    """The entries of ``values`` as normalised IP networks (``10.0.0.5/32``).

    Each entry must be an IP address or a CIDR network (host bits may be
    set, as systemd's IPAddressAllow= accepts them); anything else raises
    an AnsibleFilterError naming ``var[index]``.
    """
    if isinstance(values, (str, Mapping)) or not isinstance(values, Sequence):
        raise AnsibleFilterError(f"{var}: must be a list of IP addresses or CIDR networks, got {values!r}")
    out = []
    for index, value in enumerate(values):
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            out.append(str(ipaddress.ip_network(value.strip(), strict=False)))
        except ValueError:
            raise AnsibleFilterError(
                f"{var}[{index}]: {value!r} is not an IP address or CIDR network (e.g. 10.0.0.5 or 10.0.0.0/24)"
            ) from None
    return out


class FilterModule:
    """Ansible filter map for the app_service role."""

    def filters(self) -> dict[str, Any]:
        return {
            "app_service_pick_slots": pick_slots,
            "app_service_release_plan": release_plan,
            "app_service_revisions": revisions,
            "app_service_exec_line": exec_line,
            "app_service_ip_networks": ip_networks,
        }
