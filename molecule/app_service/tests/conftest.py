"""Helpers and session fixtures for the app_service scenario's tests.

The later tests drive real deploys with ansible-playbook (the scenario's
converge.yml, playbooks/rollback.yml) while a bounded request loop runs
through the scenario's Caddy on 127.0.0.1:8080 in each container, and print
requests/failures. Session-scoped fixtures run each deploy once for all hosts (testinfra parametrizes
the module by host, which would re-run module-scoped ones per host).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import testinfra

SCENARIO_DIR = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).resolve().parent.parent))
PROJECT_DIR = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", SCENARIO_DIR.parent.parent))
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
DEMO_SRC = PROJECT_DIR / "examples" / "demo_app"
APP = "demo"
ROOT = f"/srv/{APP}"
PROXY = "http://127.0.0.1:8080"
PORTS = (8001, 8002)


FIGURES: list[str] = []


def report(line: str) -> None:
    """Print a figure and repeat it in the run's summary (shown without -s)."""
    print(line)
    FIGURES.append(line)


def pytest_terminal_summary(terminalreporter) -> None:
    if FIGURES:
        terminalreporter.section("app_service figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


def _hosts() -> list[str]:
    out = subprocess.run([_bin("ansible-inventory"), "-i", INVENTORY, "--list"],
                         check=True, capture_output=True, text=True, env=_env()).stdout
    return sorted(json.loads(out)["_meta"]["hostvars"])


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name) if (Path(sys.executable).parent / name).exists() else name


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "ANSIBLE_ROLES_PATH": str(PROJECT_DIR / "roles"),
        "ANSIBLE_FILTER_PLUGINS": str(PROJECT_DIR / "filter_plugins"),
        "ANSIBLE_PIPELINING": "true",
        "ANSIBLE_NOCOLOR": "true",
        "ANSIBLE_FORCE_COLOR": "false",
    })
    return env


def playbook(path: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run a playbook against the scenario's inventory; prints its tail."""
    start = time.monotonic()
    proc = subprocess.run([_bin("ansible-playbook"), "-i", INVENTORY, str(path), *extra],
                          capture_output=True, text=True, env=_env(), cwd=str(SCENARIO_DIR), timeout=900)
    took = time.monotonic() - start
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
    print(f"\n--- ansible-playbook {path.name} {' '.join(extra)}: rc={proc.returncode}\n{tail}")
    report(f"ansible-playbook {path.name} {' '.join(extra)}: rc={proc.returncode} in {took:.0f}s")
    return proc


def get(host, url: str) -> tuple[int, dict]:
    """GET a loopback URL from inside the container: (status, json body)."""
    code = (
        "import json,sys,urllib.request,urllib.error\n"
        "try:\n r=urllib.request.urlopen(sys.argv[1],timeout=10); s=r.status; b=r.read()\n"
        "except urllib.error.HTTPError as e:\n s=e.code; b=e.read()\n"
        "print(json.dumps({'status':s,'body':json.loads(b or b'null')}))\n"
    )
    out = json.loads(host.check_output(f"python3 -c {_q(code)} {_q(url)}"))
    return out["status"], out["body"]


def _q(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def current_release(host) -> str:
    return host.check_output(f"readlink {ROOT}/current").rsplit("/", 1)[-1]


def all_hosts() -> dict:
    """name -> testinfra host for every host of the scenario."""
    return {name: testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}") for name in _hosts()}


class Loops:
    """A request loop per host (a transient systemd unit in each container)."""

    def __init__(self, tag: str):
        self.tag = tag
        self.hosts = all_hosts()

    def __enter__(self) -> "Loops":
        for host in self.hosts.values():
            host.run(f"rm -f /tmp/loop-{self.tag}.json /tmp/loop-{self.tag}.stop")
            host.check_output(f"systemd-run --unit=reqloop-{self.tag} --collect /usr/local/bin/reqloop "
                              f"--out /tmp/loop-{self.tag}.json --stop /tmp/loop-{self.tag}.stop --max-seconds 400")
        time.sleep(2)
        return self

    def __exit__(self, *exc) -> None:
        time.sleep(3)  # a few requests after the switch too
        for host in self.hosts.values():
            host.check_output(f"touch /tmp/loop-{self.tag}.stop")
        self.results = {}
        for name, host in self.hosts.items():
            for _ in range(60):
                if host.file(f"/tmp/loop-{self.tag}.json").exists:
                    break
                time.sleep(0.5)
            self.results[name] = json.loads(host.check_output(f"cat /tmp/loop-{self.tag}.json"))
            print(f"request loop [{self.tag}] {name}: {json.dumps(self.results[name])}")


def make_source(tmp: Path, name: str, broken: bool = False) -> Path:
    """A copy of the demo app plus migration 0002; broken: /health answers 500."""
    dest = tmp / name
    shutil.copytree(DEMO_SRC, dest, ignore=shutil.ignore_patterns("__pycache__", ".venv"))
    (dest / "migrations" / "versions" / "0002_notes_tag.py").write_text(
        '"""Add notes.tag.\n\nRevision ID: 0002\nRevises: 0001\n"""\n\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        'revision = "0002"\ndown_revision = "0001"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade() -> None:\n    op.add_column(\"notes\", sa.Column(\"tag\", sa.Text, nullable=True))\n\n\n"
        "def downgrade() -> None:\n    op.drop_column(\"notes\", \"tag\")\n")
    if broken:
        main = dest / "app" / "main.py"
        text = main.read_text()
        healthy = '{"status": "ok", "release": release_id()}, status_code=200'
        assert healthy in text, "the demo app's /health line changed; update this test"
        main.write_text(text.replace(healthy, '{"status": "broken", "release": release_id()}, status_code=500'))
    return dest


@pytest.fixture(scope="session")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="app_service_test_"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def first_release():
    """Release ids from converge (before the deploys below), per host."""
    return {name: current_release(host) for name, host in all_hosts().items()}


@pytest.fixture(scope="session")
def deploy_v2(workdir, first_release):
    src = make_source(workdir, "v2")
    with Loops("v2") as loops:
        proc = playbook(SCENARIO_DIR / "converge.yml", "--tags", "app_service", "-e", f"app_service_source_path={src}")
    return proc, loops.results


@pytest.fixture(scope="session")
def deploy_broken(workdir, deploy_v2):
    src = make_source(workdir, "broken", broken=True)
    with Loops("broken") as loops:
        proc = playbook(SCENARIO_DIR / "converge.yml", "--tags", "app_service", "-e", f"app_service_source_path={src}",
                        "-e", "app_service_health_timeout=8")
    return proc, loops.results


@pytest.fixture(scope="session")
def restart(deploy_broken):
    with Loops("restart") as loops:
        proc = playbook(SCENARIO_DIR / "converge.yml", "--tags", "restart_app")
    return proc, loops.results


@pytest.fixture(scope="session")
def rollback(restart):
    with Loops("rollback") as loops:
        proc = playbook(PROJECT_DIR / "playbooks" / "rollback.yml", "-e", f"@{SCENARIO_DIR / 'vars.yml'}",
                        "-e", "app_service_rollback_hosts=all", "-e", "app_service_rollback_to=previous")
    return proc, loops.results


