"""The stack's test container (container.yml beside this file), completed
for each host: the one recipe behind Molecule's platforms, scripts/test.sh
and the sandbox.

    container.py platforms MOLECULE_YML
        JSON: the file's platforms, each completed from the recipe (Molecule's
        create playbook, molecule/shared/create.yml, reads the merged config).
    container.py run-args NAME HOSTNAME IMAGE APT_CACHE [OPTION...]
        `docker run` arguments, one a line: the recipe's, then OPTION...,
        then the image and command. Makes the host cache directories first.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

RECIPE_FILE = Path(__file__).with_name("container.yml")
DEFAULT_CACHE = "/var/cache/ansible-stack"
APT_CACHE_LABEL = "stack.apt_cache"
# What a platform may set: the rest comes from the recipe.
PLATFORM_KEYS = {"name", "hostname", "image", "groups", "networks", "labels", "volumes", "tmpfs", "capabilities"}
# An apt lists directory that Docker creates on the fly looks freshly
# updated to apt's cache_valid_time: an empty one gets this old timestamp.
OLD = 946684800  # 2000-01-01


def cache_dir() -> str:
    """STACK_CACHE_DIR, as Molecule's ${STACK_CACHE_DIR:-...} reads it."""
    return os.environ.get("STACK_CACHE_DIR") or DEFAULT_CACHE


def expand(data, scenario: str = ""):
    """`data` (a platform: strings, lists, dicts) with ${VAR} and ${VAR:-default}
    in its strings replaced as Molecule interpolates molecule.yml, and
    MOLECULE_SCENARIO_NAME set to `scenario` (for files read before Molecule)."""
    env = {**os.environ, "MOLECULE_SCENARIO_NAME": scenario} if scenario else os.environ
    if isinstance(data, dict):
        return {key: expand(value, scenario) for key, value in data.items()}
    if isinstance(data, list):
        return [expand(value, scenario) for value in data]
    if isinstance(data, str):
        return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m.group(1)) or m.group(2) or "", data)
    return data


def load_recipe() -> dict:
    with RECIPE_FILE.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def apt_cache_name(platform: dict) -> str:
    """The host's apt cache: its stack.apt_cache label, or else its own name.
    A shared (labelled) cache gets the test lane's suffix when scripts/test.sh
    runs scenarios side by side (STACK_TEST_LANE 2, 3, ...): apt locks its
    archive and lists directories, so two lanes installing packages at once
    must not share them."""
    label = (platform.get("labels") or {}).get(APT_CACHE_LABEL)
    if not label:
        return platform["name"]
    lane = os.environ.get("STACK_TEST_LANE", "")
    return f"{label}-lane{lane}" if lane not in ("", "1") else label


def complete(platform: dict, recipe: dict | None = None, cache: str | None = None) -> dict:
    """A host's full container options: the recipe, the host's cache volumes,
    then the platform's own keys (volumes and tmpfs added, others replacing)."""
    unknown = set(platform) - PLATFORM_KEYS
    if unknown:
        raise ValueError(f"platform {platform.get('name')}: {sorted(unknown)} not supported by "
                         f"{RECIPE_FILE.name}'s create step; add them there")
    recipe = recipe or load_recipe()
    apt = apt_cache_name(platform)
    caches = [volume.format(cache=cache or cache_dir(), apt=apt) for volume in recipe["cache_volumes"]]
    spec = {key: value for key, value in recipe.items() if key != "cache_volumes"}
    spec.update({key: value for key, value in platform.items() if key not in ("volumes", "tmpfs")})
    spec["volumes"] = [*recipe["volumes"], *caches, *(platform.get("volumes") or [])]
    spec["tmpfs"] = [*recipe["tmpfs"], *(platform.get("tmpfs") or [])]
    spec.setdefault("hostname", spec["name"])
    return spec


def make_cache_dirs(spec: dict, cache: str | None = None) -> None:
    """Create the host directories under the cache that `spec` mounts."""
    cache = cache or cache_dir()
    for volume in spec["volumes"]:
        source = volume.split(":")[0]
        if source.startswith(cache):
            os.makedirs(source, exist_ok=True)
            if source.endswith("/lists") and not [f for f in os.listdir(source) if f.endswith("Packages")]:
                os.utime(source, (OLD, OLD))


def run_args(spec: dict, options: list[str] | tuple[str, ...] = ()) -> list[str]:
    """`docker run` arguments (after `docker run -d`) for a completed spec."""
    args = ["--name", spec["name"], "--hostname", spec["hostname"], f"--cgroupns={spec['cgroupns_mode']}"]
    args += [arg for cap in spec["capabilities"] for arg in ("--cap-add", cap)]
    args += [arg for opt in spec["security_opts"] for arg in ("--security-opt", opt)]
    args += [arg for path in spec["tmpfs"] for arg in ("--tmpfs", path)]
    args += [arg for volume in spec["volumes"] for arg in ("-v", volume)]
    args += [arg for key, value in (spec.get("labels") or {}).items() for arg in ("--label", f"{key}={value}")]
    return [*args, *options, spec["image"], *shlex.split(spec["command"])]


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "platforms":
        with open(argv[1], encoding="utf-8") as handle:
            platforms = (yaml.safe_load(handle) or {}).get("platforms") or []
        recipe = load_recipe()
        specs = [complete(platform, recipe) for platform in platforms]
        # As scripts/test.sh does before create: `molecule test` run by hand
        # on a fresh machine gets the same dated, empty apt lists (so the
        # first apt task updates them).
        for spec in specs:
            make_cache_dirs(spec)
        print(json.dumps(specs))
        return 0
    if len(argv) >= 5 and argv[0] == "run-args":
        name, hostname, image, apt = argv[1:5]
        spec = complete({"name": name, "hostname": hostname, "image": image,
                         "labels": {APT_CACHE_LABEL: apt}})
        make_cache_dirs(spec)
        print("\n".join(run_args(spec, argv[5:])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
