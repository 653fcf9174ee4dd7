"""Unit tests for filter_plugins/systemd.py: the EnvironmentFile format
shared by app_service and caddy."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "filter_plugins"))

import systemd  # noqa: E402
from systemd import AnsibleFilterError  # noqa: E402


def test_env_file_quotes_and_sorts():
    body = systemd.env_file({"B": 'say "hi" $HOME `x` \\', "A": 3, "C": True, "D": None}, "app_service_environment")
    assert body.splitlines() == ['A="3"', 'B="say \\"hi\\" \\$HOME \\`x\\` \\\\"', 'C="true"', 'D=""']


def test_env_file_empty():
    assert systemd.env_file({}, "x") == "" and systemd.env_file(None, "x") == ""


@pytest.mark.parametrize("var", ["app_service_environment", "caddy_environment"])
@pytest.mark.parametrize("env", [{"1BAD": "x"}, {"A-B": "x"}, {"A": "two\nlines"}, {"A": ["list"]}, ["A=1"]])
def test_env_file_refuses_bad_input_naming_the_variable(env, var):
    with pytest.raises(AnsibleFilterError, match=var):
        systemd.env_file(env, var)


def test_both_roles_render_their_environment_file_with_this_function():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "roles")
    for template, var in (("app_service/templates/etc/app/env.j2", "app_service_environment"),
                          ("caddy/templates/etc/caddy/caddy.env.j2", "caddy_environment")):
        with open(os.path.join(root, template), encoding="utf-8") as handle:
            assert f"systemd_env_file(var='{var}')" in handle.read(), template


def test_filter_module_maps_names():
    assert systemd.FilterModule().filters() == {"systemd_env_file": systemd.env_file}
