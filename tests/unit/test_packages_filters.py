"""apt_missing: the roles skip the apt module only when it would change nothing."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "filter_plugins"))

from packages import apt_changed, apt_missing, apt_names, installed_packages  # noqa: E402

OUTPUT = (
    "caddy\t2.6.2-5\tii \n"
    "postgresql-17\t17.6-1\tii \n"
    "ufw\t0.36.2-1\trc \n"  # removed, config files left: not installed
    "libc6:amd64\t2.36-9\tii \n"
)


def test_installed_packages_keeps_only_installed_ones():
    assert installed_packages(OUTPUT) == {"caddy": "2.6.2-5", "postgresql-17": "17.6-1", "libc6": "2.36-9"}


@pytest.mark.parametrize(
    ("wanted", "missing"),
    [
        (["caddy", "postgresql-17"], []),
        (["caddy", "ufw", "curl"], ["ufw", "curl"]),
        (["caddy=2.6.2-5"], []),
        (["caddy=2.7.6"], ["caddy=2.7.6"]),
        (["caddy=2.6.*"], []),
        (["caddy=2.7.*"], ["caddy=2.7.*"]),
        (["libc6"], []),
        ([], []),
    ],
)
def test_apt_missing(wanted, missing):
    assert apt_missing(wanted, OUTPUT) == missing


def test_nothing_installed_when_the_query_failed():
    assert apt_missing(["caddy"], "") == ["caddy"]


def test_apt_names_drops_version_pins():
    assert apt_names(["caddy=2.6.*", "curl"]) == ["caddy", "curl"]


def test_apt_changed_names_what_an_update_changed():
    before = {"postgresql-15": "15.18-0+deb12u1", "libpq5": "15.18-0+deb12u1", "curl": "7.88.1-10"}
    after = {"postgresql-15": "15.20-0+deb12u1", "libpq5": "15.20-0+deb12u1", "curl": "7.88.1-10", "new-dep": "1.0"}
    assert apt_changed(before, after) == {
        "libpq5": ["15.18-0+deb12u1", "15.20-0+deb12u1"], "new-dep": ["", "1.0"],
        "postgresql-15": ["15.18-0+deb12u1", "15.20-0+deb12u1"]}
    assert apt_changed(before, before) == {}
    assert apt_changed(before, {}) == {}
