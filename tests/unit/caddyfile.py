"""Render roles/caddy/templates/etc/caddy/Caddyfile.j2 the way the template
module does (trim_blocks, the template's own ``#jinja2:`` header, Ansible's
core filters and ours), with the role's defaults under the given variables."""

from __future__ import annotations

import os
import sys
from typing import Any

import jinja2
import yaml
from ansible.plugins.filter.core import FilterModule as CoreFilters
from jinja2.nativetypes import NativeEnvironment

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "filter_plugins"))

import caddy  # noqa: E402  (filter_plugins is not a package)

ROLE = os.path.join(ROOT, "roles", "caddy")


def _load(path: str) -> dict[str, Any]:
    with open(os.path.join(ROLE, path), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def render(sites: Any, **role_vars: Any) -> str:
    """The Caddyfile for ``caddy_sites`` = ``sites`` and the role's defaults
    overridden by ``role_vars``."""
    variables = {**_load("defaults/main.yml"), "caddy_sites": sites, **role_vars,
                 "ansible_managed": "Ansible managed"}
    variables["__caddy_site_options"] = site_options(**role_vars)
    with open(os.path.join(ROLE, "templates", "etc", "caddy", "Caddyfile.j2"), encoding="utf-8") as handle:
        source = handle.read()
    settings: dict[str, Any] = {"trim_blocks": True, "keep_trailing_newline": True}
    first, _, rest = source.partition("\n")
    if first.startswith("#jinja2:"):
        for item in first[len("#jinja2:"):].split(","):
            key, _, value = item.partition(":")
            settings[key.strip()] = value.strip() == "True"
        source = rest
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, **settings)
    env.filters.update(CoreFilters().filters())
    env.filters.update(caddy.FilterModule().filters())
    return env.from_string(source).render(variables)


def sites_text(sites: Any, **role_vars: Any) -> str:
    """Only the site blocks: what follows the global options block."""
    return render(sites, **role_vars).split("\n}\n", 1)[1].lstrip("\n")


def site_options(**role_vars: Any) -> dict[str, Any]:
    """``__caddy_site_options`` for the role's defaults overridden by ``role_vars``."""
    variables = {**_load("defaults/main.yml"), **role_vars}
    native = NativeEnvironment()
    return {key: native.from_string(value).render(variables)
            for key, value in _load("vars/main.yml")["__caddy_site_options"].items()}


def spec_errors(**role_vars: Any) -> list[str]:
    """What the role's argument_specs (main entry point) say about ``role_vars``,
    checked as Ansible checks them before the role runs."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    options = _load("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    spec = {name: options[name] for name in role_vars}
    result = ArgumentSpecValidator(spec).validate(role_vars)
    return [str(error) for error in result.errors]
