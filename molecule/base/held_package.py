#!/usr/bin/python3
"""Choose the package molecule/base holds back from unattended-upgrades (run
by prepare.yml inside each container, after `apt-get update`).

The test needs an installed package with a real pending security update that
stays pending through the converge. The server packages of the default hold
list are not installed here, so this picks, from `apt list --upgradable`, the
first package (by name) that
  - has its candidate from the Debian-Security archive,
  - is not touched by installing the base role's packages (simulated with
    `apt-get install -s`: liblzma5 is upgraded with xz-utils, for example),
  - is the only upgradable binary of its source package, and no other
    upgradable package's candidate needs a newer version of it (so holding
    it keeps back nothing else: the test expects every other security update
    in unattended-upgrade's list).

  held_package.py OUT.json PACKAGE...   (PACKAGE: what the base role installs)

Writes {"package", "installed", "candidate", "upgradable"} to OUT.json, or
fails naming what it saw: a point release that leaves nothing to hold makes
the test fail clearly instead of skipping.
"""

import json
import os
import subprocess
import sys

import apt_pkg


def main() -> int:
    out, role_packages = sys.argv[1], sys.argv[2:]
    env = dict(os.environ, LANG="C")
    simulated = subprocess.run(["apt-get", "install", "-s", "--no-install-recommends", *role_packages],
                               capture_output=True, text=True, check=True, env=env).stdout
    touched = {line.split()[1] for line in simulated.splitlines() if line.startswith("Inst ")}

    apt_pkg.init()
    cache = apt_pkg.Cache(None)
    depcache = apt_pkg.DepCache(cache)
    records = apt_pkg.PackageRecords(cache)
    upgradable = {}
    for pkg in cache.packages:
        current = pkg.current_ver
        candidate = depcache.get_candidate_ver(pkg) if current else None
        if not candidate or apt_pkg.version_compare(candidate.ver_str, current.ver_str) <= 0:
            continue
        records.lookup(candidate.file_list[0])
        upgradable[pkg.name] = {
            "installed": current.ver_str, "candidate": candidate.ver_str, "version": candidate,
            "source": records.source_pkg or pkg.name,
            "security": any(f.label == "Debian-Security" for f, _ in candidate.file_list),
        }

    def needed_newer(name: str) -> bool:
        """Another upgradable package's candidate needs a newer ``name``."""
        installed = upgradable[name]["installed"]
        for other, info in upgradable.items():
            for kind in ("Depends", "PreDepends"):
                for group in info["version"].depends_list.get(kind, []):
                    for dep in group:
                        if (other != name and dep.target_pkg.name == name and dep.target_ver
                                and not apt_pkg.check_dep(installed, dep.comp_type, dep.target_ver)):
                            return True
        return False

    sources = [info["source"] for info in upgradable.values()]
    fitting = [name for name, info in sorted(upgradable.items())
               if info["security"] and name not in touched and sources.count(info["source"]) == 1
               and not needed_newer(name)]
    if not fitting:
        print(f"no installed package with a security update that molecule/base can hold back: upgradable "
              f"{ {n: (i['installed'], i['candidate'], 'security' if i['security'] else 'other') for n, i in upgradable.items()} }, "
              f"touched by the role's packages {sorted(touched)}", file=sys.stderr)
        return 1
    chosen = fitting[0]
    result = {"package": chosen, "installed": upgradable[chosen]["installed"],
              "candidate": upgradable[chosen]["candidate"], "upgradable": sorted(upgradable)}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
