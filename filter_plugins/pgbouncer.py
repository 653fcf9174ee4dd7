"""Filters for the pgbouncer role and its wiring.

PgBouncer authenticates the apps with SCRAM against the secrets in its
auth_file and logs into PostgreSQL on their behalf with the same exchange
("SCRAM pass-through"): that works only when the secret in the auth_file is
byte for byte the one PostgreSQL stores (same salt, same iteration count).
``scram_secret`` computes that secret on the controller, so the stack gives
the same value to the postgresql role (the role's stored password) and to
the pgbouncer role (its auth_file): no plaintext password is written for
PgBouncer and nothing has to be read back from the database server.

The salt is derived from a seed and the role name, never from the password
(a salt computed from the password would let anyone holding the secret test
guesses without the 4096 PBKDF2 rounds).

The FilterModule at the bottom is a thin map from filter names to the plain
functions above it; tests in tests/unit call the functions directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # pragma: no cover - only without ansible installed
    class AnsibleFilterError(Exception):  # type: ignore[no-redef]
        """Stand-in when ansible is not importable."""


SCRAM_RE = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")
POOL_MODES = ("session", "transaction", "statement")
# Where the pooler may listen besides loopback: RFC 1918 and unique local
# IPv6 addresses (not the documentation or shared ranges Python also calls
# private).
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def scram_secret(password: Any, user: Any, seed: Any = "", iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL stores for ``password``
    (``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``), with a
    salt derived from ``seed`` and ``user``. A value that already is such a
    secret is returned unchanged (an inventory may keep secrets only).

    The password is normalised with NFKC, the part of SASLprep that
    PostgreSQL's own client applies to printable passwords.
    """
    if not isinstance(user, str) or not user:
        raise AnsibleFilterError("scram_secret: the role name must be a non-empty string")
    if password is None or not isinstance(password, str) or password == "":
        raise AnsibleFilterError(f"scram_secret: the password of {user} must be a non-empty string")
    if SCRAM_RE.match(password):
        return password
    try:
        rounds = int(iterations)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"scram_secret: iterations {iterations!r} is not a number") from None
    if rounds < 4096:
        raise AnsibleFilterError(f"scram_secret: iterations {rounds} is below 4096")
    salt = hashlib.sha256(f"webstack-scram-salt\0{seed}\0{user}".encode()).digest()[:16]
    return scram_secret_with_salt(password, salt, rounds)


def scram_secret_with_salt(password: str, salt: bytes, rounds: int = 4096) -> str:
    """The SCRAM-SHA-256 secret of ``password`` for a given salt (RFC 5802/7677:
    SaltedPassword = PBKDF2-HMAC-SHA-256, StoredKey = H(HMAC(SaltedPassword,
    "Client Key")), ServerKey = HMAC(SaltedPassword, "Server Key"))."""
    salted = hashlib.pbkdf2_hmac("sha256", unicodedata.normalize("NFKC", password).encode(), salt, rounds)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return f"SCRAM-SHA-256${rounds}:{_b64(salt)}${_b64(hashlib.sha256(client_key).digest())}:{_b64(server_key)}"


def userlist(users: Any, var: str = "pgbouncer_auth_users") -> str:
    """The auth_file: one ``"name" "SCRAM-SHA-256$..."`` line per user.

    Only SCRAM secrets are accepted: a plaintext password would be a second
    copy of it on disk, and PgBouncer could not pass SCRAM through with it.
    """
    if isinstance(users, (str, Mapping)) or not isinstance(users, Sequence):
        raise AnsibleFilterError(f"{var}: expects a list of {{name, secret}}, got {type(users).__name__}")
    lines, seen = [], set()
    for index, user in enumerate(users):
        where = f"{var}[{index}]"
        if not isinstance(user, Mapping):
            raise AnsibleFilterError(f"{where}: expects a mapping with name and secret")
        name, secret = user.get("name"), user.get("secret")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise AnsibleFilterError(f"{where}.name: {name!r} is not a role name")
        if name in seen:
            raise AnsibleFilterError(f"{where}.name: {name} is listed twice")
        seen.add(name)
        if not isinstance(secret, str) or not SCRAM_RE.match(secret):
            raise AnsibleFilterError(
                f"{where}.secret: the secret of {name} must be a SCRAM-SHA-256 secret "
                "(the scram_secret filter makes one from the password), never the password itself")
        lines.append(f'"{name}" "{secret}"')
    return "\n".join(lines) + ("\n" if lines else "")


def databases_check(databases: Any, var: str = "pgbouncer_databases") -> list[dict[str, Any]]:
    """Check the [databases] entries (name, host, port, dbname, optional
    pool_mode) and return them as plain dicts. Fails naming the entry."""
    if isinstance(databases, (str, Mapping)) or not isinstance(databases, Sequence):
        raise AnsibleFilterError(f"{var}: expects a list of databases, got {type(databases).__name__}")
    out, names = [], set()
    for index, entry in enumerate(databases):
        where = f"{var}[{index}]"
        if not isinstance(entry, Mapping):
            raise AnsibleFilterError(f"{where}: expects a mapping (name, host, port, dbname)")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name) or name == "pgbouncer":
            raise AnsibleFilterError(f"{where}.name: {name!r} is not a database name PgBouncer can serve")
        if name in names:
            raise AnsibleFilterError(f"{where}.name: {name} is listed twice")
        names.add(name)
        host = str(entry.get("host") or "")
        if not host or re.search(r"[\s'\"=]", host):
            raise AnsibleFilterError(f"{where}.host: {host!r} is not a host name, address or socket directory")
        try:
            port = int(entry.get("port"))
        except (TypeError, ValueError):
            raise AnsibleFilterError(f"{where}.port: {entry.get('port')!r} is not a port") from None
        if not 1 <= port <= 65535:
            raise AnsibleFilterError(f"{where}.port: {port} is outside 1-65535")
        dbname = entry.get("dbname", name)
        if not isinstance(dbname, str) or not _NAME_RE.match(dbname):
            raise AnsibleFilterError(f"{where}.dbname: {dbname!r} is not a database name")
        mode = entry.get("pool_mode", "")
        if mode not in ("", None) and mode not in POOL_MODES:
            raise AnsibleFilterError(f"{where}.pool_mode: {mode!r} is not one of {', '.join(POOL_MODES)}")
        out.append({"name": name, "host": host, "port": port, "dbname": dbname, "pool_mode": mode or ""})
    return out


def listen_address_check(address: Any, var: str = "pgbouncer_listen_address") -> str:
    """``address`` when it is a loopback or private IP address (the pooler
    serves the apps of its own host or private network, never the internet);
    fails naming the variable otherwise."""
    try:
        parsed = ipaddress.ip_address(str(address).strip())
    except ValueError:
        raise AnsibleFilterError(f"{var}: {address!r} is not an IP address") from None
    if not (parsed.is_loopback or any(parsed in net for net in PRIVATE_NETWORKS)):
        raise AnsibleFilterError(f"{var}: {address} must be a loopback or private address (the apps of this host "
                                 "connect to it; the pooler is never public)")
    return str(parsed)


def cidrs_check(addresses: Any, var: str = "pgbouncer_client_addresses") -> list[str]:
    """The addresses or networks as CIDR (a bare address becomes /32 or /128);
    fails naming the entry that is neither."""
    if isinstance(addresses, (str, Mapping)) or not isinstance(addresses, Sequence) or not addresses:
        raise AnsibleFilterError(f"{var}: expects a non-empty list of addresses or networks")
    out = []
    for index, value in enumerate(addresses):
        try:
            out.append(str(ipaddress.ip_network(str(value).strip(), strict=False)))
        except ValueError:
            raise AnsibleFilterError(f"{var}[{index}]: {value!r} is not an address or network") from None
    return out


def version_at_least(version: Any, wanted: str) -> bool:
    """True when the Debian package version ``version`` (e.g. 1.18.0-1+deb12u1,
    1:1.24.1-1) is at least the upstream ``wanted`` (e.g. 1.21)."""
    text = str(version or "").split(":", 1)[-1]
    match = re.match(r"^(\d+(?:\.\d+)*)", text)
    if not match:
        return False
    have = [int(p) for p in match.group(1).split(".")]
    want = [int(p) for p in str(wanted).split(".")]
    width = max(len(have), len(want))
    return have + [0] * (width - len(have)) >= want + [0] * (width - len(want))


def pool_budget(max_connections: Any, reserved: Any, pools: Any, var: str = "pgbouncer_max_db_connections") -> int:
    """Connections left on the server once every PgBouncer has its pool.

    ``pools`` maps each app host to its ``pgbouncer_max_db_connections``;
    ``reserved`` is what the server keeps for everything else (superuser
    slots, migrations and one-off commands as the owner, backups,
    monitoring). Fails naming the hosts when the pools need more than
    ``max_connections`` leaves room for; returns the connections left over.
    """
    try:
        limit, keep = int(max_connections), int(reserved)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"{var}: max_connections {max_connections!r} and the reserve {reserved!r} "
                                 "must be numbers") from None
    if not isinstance(pools, Mapping):
        raise AnsibleFilterError(f"{var}: expects a mapping of host to pool size")
    sizes = {}
    for host, size in pools.items():
        try:
            sizes[str(host)] = int(size)
        except (TypeError, ValueError):
            raise AnsibleFilterError(f"{var} of {host}: {size!r} is not a number") from None
        if sizes[str(host)] < 1:
            raise AnsibleFilterError(f"{var} of {host}: {size} must be at least 1")
    left = limit - keep - sum(sizes.values())
    if left < 0:
        detail = ", ".join(f"{h}: {s}" for h, s in sorted(sizes.items()))
        raise AnsibleFilterError(
            f"{var}: the pools of the app hosts ({detail}) add up to {sum(sizes.values())} server connections, "
            f"but max_connections {limit} leaves room for {limit - keep} once {keep} are kept for the rest "
            "(superuser slots, migrations, backups, monitoring: stack_db_reserved_connections); lower the pools "
            "or raise postgresql_max_connections")
    return left


class FilterModule:
    """PgBouncer filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "scram_secret": scram_secret,
            "pgbouncer_userlist": userlist,
            "pgbouncer_databases_check": databases_check,
            "pgbouncer_version_at_least": version_at_least,
            "pgbouncer_listen_address_check": listen_address_check,
            "pgbouncer_cidrs_check": cidrs_check,
            "pgbouncer_pool_budget": pool_budget,
        }
