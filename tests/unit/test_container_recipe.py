"""Unit tests for molecule/shared/container.py: the one systemd container
recipe, completed for Molecule's platforms, scripts/test.sh and the sandbox."""

import os
import sys

import pytest
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "molecule", "shared"))

import container  # noqa: E402

REPO = os.path.join(os.path.dirname(__file__), "..", "..")


def test_a_platform_gets_the_recipe_and_its_own_apt_cache():
    spec = container.complete({"name": "fleet-db", "image": "img:13", "groups": ["db"]}, cache="/c")
    assert spec["command"] == "/lib/systemd/systemd" and spec["cgroupns_mode"] == "host"
    assert spec["capabilities"] == ["SYS_ADMIN", "NET_ADMIN"] and spec["security_opts"] == ["seccomp=unconfined"]
    assert spec["tmpfs"] == ["/run", "/run/lock", "/tmp"]
    assert spec["volumes"] == [
        "/sys/fs/cgroup:/sys/fs/cgroup:rw",
        "/c/apt/fleet-db/archives:/var/cache/apt/archives:rw",
        "/c/apt/fleet-db/lists:/var/lib/apt/lists:rw",
        "/c/pip:/var/cache/stack-pip:rw",
    ]
    assert spec["hostname"] == "fleet-db" and spec["groups"] == ["db"] and "cache_volumes" not in spec


def test_label_names_the_apt_cache_volumes_and_tmpfs_add_other_keys_replace(monkeypatch):
    monkeypatch.delenv("STACK_TEST_LANE", raising=False)
    spec = container.complete({"name": "h", "image": "i", "labels": {"stack.apt_cache": "debian12"},
                               "volumes": ["/c/npm:/var/cache/stack-npm:rw"], "tmpfs": ["/srv/fill:size=8m"],
                               "capabilities": ["SYS_ADMIN"]}, cache="/c")
    assert spec["volumes"][1] == "/c/apt/debian12/archives:/var/cache/apt/archives:rw"
    assert spec["volumes"][-1] == "/c/npm:/var/cache/stack-npm:rw"
    assert spec["tmpfs"][-1] == "/srv/fill:size=8m" and spec["capabilities"] == ["SYS_ADMIN"]


def test_a_test_lane_gets_its_own_copy_of_a_shared_apt_cache(monkeypatch):
    shared = {"name": "h", "image": "i", "labels": {"stack.apt_cache": "debian12"}}
    own = {"name": "fleet-db", "image": "i"}
    monkeypatch.setenv("STACK_TEST_LANE", "1")
    assert container.complete(shared, cache="/c")["volumes"][1] == "/c/apt/debian12/archives:/var/cache/apt/archives:rw"
    monkeypatch.setenv("STACK_TEST_LANE", "2")
    assert container.complete(shared, cache="/c")["volumes"][2] == "/c/apt/debian12-lane2/lists:/var/lib/apt/lists:rw"
    # A host's own cache is its own in every lane.
    assert container.complete(own, cache="/c")["volumes"][1] == "/c/apt/fleet-db/archives:/var/cache/apt/archives:rw"


def test_unknown_platform_keys_are_refused():
    with pytest.raises(ValueError, match="published_ports"):
        container.complete({"name": "h", "image": "i", "published_ports": ["80:80"]})


def test_expand_as_molecule_interpolates(monkeypatch):
    monkeypatch.setenv("STACK_CACHE_DIR", "/x")
    monkeypatch.delenv("STACK_IMAGE_DEBIAN12", raising=False)
    platform = container.expand({"name": "${MOLECULE_SCENARIO_NAME}-debian12",
                                 "image": "${STACK_IMAGE_DEBIAN12:-stack-debian:12}",
                                 "volumes": ["${STACK_CACHE_DIR:-/var/cache/ansible-stack}/npm:/n:rw"]}, "caddy")
    assert platform == {"name": "caddy-debian12", "image": "stack-debian:12", "volumes": ["/x/npm:/n:rw"]}


def test_run_args_put_options_before_the_image_and_command():
    spec = container.complete({"name": "sb", "hostname": "sandbox", "image": "img:12"}, cache="/c")
    args = container.run_args(spec, ["-p", "127.0.0.1:8080:8080"])
    assert args[:4] == ["--name", "sb", "--hostname", "sandbox"]
    assert args[-4:] == ["-p", "127.0.0.1:8080:8080", "img:12", "/lib/systemd/systemd"]
    for pair in (["--cap-add", "NET_ADMIN"], ["--security-opt", "seccomp=unconfined"], ["--tmpfs", "/run/lock"],
                 ["-v", "/c/apt/sb/lists:/var/lib/apt/lists:rw"]):
        assert any(args[i:i + 2] == pair for i in range(len(args))), pair
    assert "--cgroupns=host" in args


def test_make_cache_dirs_dates_an_empty_lists_directory(tmp_path):
    spec = container.complete({"name": "h", "image": "i"}, cache=str(tmp_path))
    container.make_cache_dirs(spec, cache=str(tmp_path))
    lists = tmp_path / "apt" / "h" / "lists"
    assert lists.is_dir() and (tmp_path / "pip").is_dir() and (tmp_path / "apt" / "h" / "archives").is_dir()
    assert lists.stat().st_mtime == container.OLD


@pytest.mark.parametrize("path", [".config/molecule/config.yml"] + [
    f"molecule/{name}/molecule.yml" for name in sorted(os.listdir(os.path.join(REPO, "molecule")))
    if os.path.exists(os.path.join(REPO, "molecule", name, "molecule.yml"))])
def test_every_scenario_platform_completes(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as handle:
        platforms = (yaml.safe_load(handle) or {}).get("platforms")
    if platforms is None:
        # A scenario without its own platforms takes the shared config's.
        with open(os.path.join(REPO, ".config/molecule/config.yml"), encoding="utf-8") as handle:
            platforms = (yaml.safe_load(handle) or {}).get("platforms")
    assert platforms, f"{path}: no platforms, its own or the shared config's"
    for platform in platforms:
        spec = container.complete(container.expand(platform, "s"), cache="/c")
        assert spec["command"] and spec["image"] and spec["volumes"][0] == "/sys/fs/cgroup:/sys/fs/cgroup:rw"
