"""Which apt packages a role still has to install.

The roles read the installed packages with one ``dpkg-query`` call and run
the apt module only when something is missing: on a converged host the apt
module costs about a second per role (it opens the package cache) to report
what ``dpkg-query`` answers in a tenth of that. ``apt_missing`` takes the
role's package list (``name`` or ``name=version``, the forms the roles pass to
apt; a version may end in ``*``) and the query's output, and returns the
entries not installed as asked.

The FilterModule at the bottom is a thin map from filter names to the plain
functions above it; tests in tests/unit call the functions directly.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

def installed_packages(dpkg_output: str) -> dict[str, str]:
    """{name: version} of the installed packages in dpkg-query's output
    (-f='${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'; ii = installed)."""
    installed = {}
    for line in (dpkg_output or "").splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[2].strip() == "ii":
            installed[fields[0].split(":")[0]] = fields[1]
    return installed


def apt_missing(wanted: list[str], dpkg_output: str) -> list[str]:
    """The entries of ``wanted`` that dpkg-query's output does not show installed."""
    installed = installed_packages(dpkg_output)
    missing = []
    for spec in wanted:
        name, _, version = str(spec).partition("=")
        have = installed.get(name)
        if have is None or (version and not fnmatchcase(have, version)):
            missing.append(spec)
    return missing


def apt_names(wanted: list[str]) -> list[str]:
    """Package names without their version pins (dpkg-query's arguments)."""
    return [str(spec).partition("=")[0] for spec in wanted]


def apt_changed(before: Any, after: Any) -> dict[str, list[str]]:
    """{name: [old version, new version]} of the packages whose installed
    version differs between two apt_installed maps (old is "" for a package
    installed since)."""
    before, after = dict(before or {}), dict(after or {})
    return {name: [before.get(name, ""), version] for name, version in sorted(after.items())
            if before.get(name) != version}


class FilterModule:
    """Package filters."""

    def filters(self) -> dict[str, Any]:
        return {"apt_missing": apt_missing, "apt_names": apt_names, "apt_installed": installed_packages,
                "apt_changed": apt_changed}
