"""A role reads only its own variables; the stack's wiring connects them.

A role default such as `backups_postgresql_port: "{{ postgresql_port }}"`
works only when something else has pinned `postgresql_port` on the host
(the stack role) and silently takes the wrong value elsewhere. The wiring
(roles/stack/defaults/main/) is the one place that reads across roles, so
this test fails when a role's own files name another role's variable.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks").is_dir() and p.name != "stack")
FILTERS = {
    name
    for path in (REPO / "filter_plugins").glob("*.py")
    for name in re.findall(r"""["']([a-z][a-z0-9_]*)["']\s*:""", path.read_text())
}
SUFFIXES = (".yml", ".yaml", ".j2")


# Where a role's files evaluate expressions: Jinja blocks, and the bare
# conditions of when/that/failed_when/changed_when (comments, descriptions and
# the metric names in templates are text).
EXPRESSIONS = re.compile(
    r"{{(.*?)}}|{%(.*?)%}|^\s*(?:-\s+)?(?:when|failed_when|changed_when|until):\s*([^\s\"'>|].*)$"
    r"|^\s*-\s+([a-z_][\w.]*\s*(?:\||==|!=|<|>|in\b|is\b).*)$",
    re.S | re.M,
)


def foreign_names(text: str, role: str) -> set[str]:
    """Variables of the other roles an expression in text reads (not filters, module names or paths)."""
    others = "|".join(r for r in ROLES if r != role)
    text = re.sub(r"{#.*?#}", "", re.sub(r"^\s*#.*$", "", text, flags=re.M), flags=re.S)
    # Prometheus' own templates ({{ $labels.x }}) inside the alert rules' strings.
    text = re.sub(r"{{\s*\$[^}]*}}", "", text)
    exprs = " ".join("".join(groups) for groups in EXPRESSIONS.findall(text))
    # String literals in expressions are text too (PromQL in the alert rules).
    exprs = re.sub(r"'[^']*'|\"[^\"]*\"", "''", exprs)
    found = re.findall(rf"(?<![\w./-])(?:{others})_[a-z0-9_]+", exprs)
    return {name for name in found if name not in FILTERS}


def test_the_scan_finds_a_foreign_read():
    # The check itself must be able to fail.
    assert foreign_names('backups_postgresql_port: "{{ postgresql_port | default(5432) }}"', "backups") == {"postgresql_port"}
    assert foreign_names("port: {{ backups_postgresql_port }}", "backups") == set()
    assert foreign_names("  community.postgresql.postgresql_user:\n", "monitoring") == set()
    assert foreign_names("x: '{{ y | postgresql_url(password=p) }}'", "app_service") == set()
    assert foreign_names("    - postgresql_port | int > 0\n", "backups") == {"postgresql_port"}
    assert foreign_names("  when: caddy_sites | length > 0\n", "backups") == {"caddy_sites"}
    assert foreign_names("{{ alert('x', 'rate(caddy_http_requests_total[5m])') }}", "monitoring") == set()
    assert foreign_names("# follows postgresql_port\nhelp: the postgresql_port\n", "backups") == set()


@pytest.mark.parametrize("role", ROLES)
def test_a_role_reads_only_its_own_variables(role):
    offending = {}
    for path in sorted((REPO / "roles" / role).rglob("*")):
        if path.suffix not in SUFFIXES or "molecule" in path.parts or not path.is_file():
            continue
        names = foreign_names(path.read_text(), role)
        if names:
            offending[str(path.relative_to(REPO))] = sorted(names)
    assert not offending, f"{role} reads other roles' variables (wire them in roles/stack/defaults/main/): {offending}"
