"""Helpers and session fixtures for the app_service scenario's tests.

The later tests drive real deploys with ansible-playbook (the scenario's
converge.yml, rollback.yml: the app_service play of playbooks/rollback.yml) while a bounded request loop runs
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
# The live settings files and the names of their known-good copies.
SETTINGS_FILES = {"env": f"/etc/{APP}/env", "migrate.env": f"/etc/{APP}/migrate.env",
                  "unit": f"/etc/systemd/system/{APP}@.service",
                  # The worker and the timer of vars.yml.
                  f"{APP}-worker.service": f"/etc/systemd/system/{APP}-worker.service",
                  f"{APP}-tick.service": f"/etc/systemd/system/{APP}-tick.service",
                  f"{APP}-tick.timer": f"/etc/systemd/system/{APP}-tick.timer"}
WORKER = f"{APP}-worker.service"
# Connects to the host's own non-loopback address (port 9, closed): prints
# ECONNREFUSED when the packet may leave, EPERM when systemd's IP access
# control (IPAddressDeny) refuses it.
# (The address: the source a UDP socket routes from; connect() on UDP sends nothing.)
EGRESS_PROBE = ("import socket,errno;u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.connect(('192.0.2.1',9));"
                "a=u.getsockname()[0];s=socket.socket();s.settimeout(3);"
                "r=s.connect_ex((a,9));print('egress',a,errno.errorcode.get(r,r))")
KNOWN_GOOD = f"/etc/{APP}/known-good"
# Test-only passwords from vars.yml: they must never show in a run's output.
SECRETS = ("owner-Secret-42", "rw-Secret-42")


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
        "ANSIBLE_LIBRARY": str(PROJECT_DIR / "library"),
        "ANSIBLE_LOOKUP_PLUGINS": str(PROJECT_DIR / "lookup_plugins"),
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


def serving(host) -> list[int]:
    """Ports whose instance runs."""
    return [p for p in PORTS if host.service(f"{APP}@{p}").is_running]


def main_pid(host, port: int) -> str:
    return host.check_output(f"systemctl show -p MainPID --value {APP}@{port}")


def sha256(host, paths) -> dict:
    """path -> sha256 of each file on the host."""
    out = host.check_output("sha256sum " + " ".join(_q(p) for p in paths))
    return {line.split()[1]: line.split()[0] for line in out.splitlines()}


def settings_sums(host) -> dict:
    """name -> sha256 of the live settings files (env, migrate.env, unit)."""
    sums = sha256(host, SETTINGS_FILES.values())
    return {name: sums[path] for name, path in SETTINGS_FILES.items()}


def startup_sums(sums: dict) -> dict:
    """What an instance's record holds: every settings file but migrate.env."""
    return {name: digest for name, digest in sums.items() if name != "migrate.env"}


def egress_from_unit(host, unit: str) -> str:
    """Run EGRESS_PROBE inside the cgroup of a unit's main process (where
    systemd's IP access control applies) and return its verdict."""
    pid = host.check_output(f"systemctl show -p MainPID --value {unit}")
    cgroup = [line for line in host.check_output(f"cat /proc/{pid}/cgroup").splitlines()
              if line.startswith("0::")][0][3:]
    # cgroup v2 at /sys/fs/cgroup, or at /sys/fs/cgroup/unified on a hybrid host.
    root = "/sys/fs/cgroup/unified" if host.file("/sys/fs/cgroup/unified/cgroup.procs").exists else "/sys/fs/cgroup"
    script = f"echo $$ > {root}{cgroup}/cgroup.procs && exec python3 -c {_q(EGRESS_PROBE)}"
    return host.check_output(f"sh -c {_q(script)}").split()[-1]


def instance_record(host, port: int) -> dict:
    """The settings record an instance was started with (checksums of env and unit)."""
    return json.loads(host.check_output(f"cat {ROOT}/instances/{port}.settings"))


def log_lines(host) -> list[str]:
    return host.check_output(f"cat /var/log/{APP}-deploy.log").splitlines()


def snapshot(host) -> dict:
    """What a run must not change when it fails or has nothing to do."""
    ports = serving(host)
    return {"serving": ports, "pid": main_pid(host, ports[0]) if ports else "",
            "sums": settings_sums(host), "log": len(log_lines(host)), "current": current_release(host)}


def recap(proc) -> dict:
    """host -> (changed, failed) from a run's PLAY RECAP."""
    return {m[0]: (int(m[1]), int(m[2])) for m in re.findall(
        r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", proc.stdout, re.M)}


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
                              f"--url http://127.0.0.1:8080/health "
                              f"--out /tmp/loop-{self.tag}.json --stop /tmp/loop-{self.tag}.stop --max-seconds 900")
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
            # It ran until told to stop, not out of time before the change ended.
            assert self.results[name]["stopped"] == "stop file", self.results[name]


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
def settings_failure(workdir, restart):
    """A settings change that only fails when the app restarts (an ASGI app
    that does not exist), on the current release (v2), under the loop."""
    before = {name: snapshot(host) for name, host in all_hosts().items()}
    with Loops("settings") as loops:
        proc = playbook(SCENARIO_DIR / "converge.yml", "--tags", "app_service",
                        "-e", f"app_service_source_path={workdir / 'v2'}",
                        "-e", "app_service_asgi_app=app.main:nope", "-e", "app_service_health_timeout=8")
    return proc, loops.results, before


@pytest.fixture(scope="session")
def settings_rerun(workdir, settings_failure):
    """The next plain converge with the good values."""
    before = {name: snapshot(host) for name, host in all_hosts().items()}
    proc = playbook(SCENARIO_DIR / "converge.yml", "--tags", "app_service", "-e", f"app_service_source_path={workdir / 'v2'}")
    return proc, before


@pytest.fixture(scope="session")
def settings_drift(workdir, settings_rerun):
    """Drift, then a plain converge under the loop. On the first host a hand
    edit of the env file; on the other the serving instance's record names
    other checksums than the files on disk (what a run that wrote the files
    and died before restarting leaves: this run rewrites nothing)."""
    hosts = all_hosts()
    names = sorted(hosts)
    kinds = {name: ("hand edit" if i % 2 == 0 else "stale record") for i, name in enumerate(names)}
    before = {}
    for name, host in hosts.items():
        if kinds[name] == "hand edit":
            host.check_output(f"echo 'HAND_EDIT=\"1\"' >> /etc/{APP}/env")
        else:
            port = serving(host)[0]
            record = instance_record(host, port)
            record["env"] = "0" * 64
            host.check_output(f"echo {_q(json.dumps(record))} > {ROOT}/instances/{port}.settings")
        before[name] = snapshot(host)
    with Loops("drift") as loops:
        proc = playbook(SCENARIO_DIR / "converge.yml", "--tags", "app_service", "-e", f"app_service_source_path={workdir / 'v2'}")
    return proc, loops.results, before, kinds


@pytest.fixture(scope="session")
def rollback_refused(settings_drift, first_release):
    """rollback.yml to the first release (schema head 0001) while the database
    is at 0002, without app_service_rollback_allow_schema_mismatch. On every
    other host the first release's recorded head is removed first (a release
    built before heads were recorded): the role must ask the release itself."""
    hosts = all_hosts()
    unrecorded = sorted(hosts)[1::2]
    for name in unrecorded:
        hosts[name].check_output(f"rm {ROOT}/releases/{first_release[name]}/.app_service_schema_head")
    before = {name: snapshot(host) for name, host in hosts.items()}
    with Loops("rollback-refused") as loops:
        proc = playbook(SCENARIO_DIR / "rollback.yml",
                        "-e", "app_service_rollback_to=previous")
    return proc, loops.results, before, unrecorded


@pytest.fixture(scope="session")
def rollback_check_mode(rollback_refused, first_release):
    """Check mode: rollback.yml without the flag, and include_role vars with
    a release id and the mismatch allowed (what a fleet redeploy passes)."""
    before = {name: snapshot(host) for name, host in all_hosts().items()}
    refused = playbook(SCENARIO_DIR / "rollback.yml", "--check",
                       "-e", "app_service_rollback_to=previous")
    allowed = playbook(SCENARIO_DIR / "rollback_include.yml", "--check",
                       "-e", json.dumps({"scenario_rollback_releases": first_release}))
    return refused, allowed, before


@pytest.fixture(scope="session")
def rollback(rollback_check_mode):
    """The rollback, with egress switched from open to localhost on the way
    (a settings change the same cutover applies; tests/test_3_processes.py)."""
    with Loops("rollback") as loops:
        proc = playbook(SCENARIO_DIR / "rollback.yml",
                        "-e", "app_service_rollback_to=previous",
                        "-e", "app_service_rollback_allow_schema_mismatch=true", "-e", "app_service_egress=localhost")
    return proc, loops.results


@pytest.fixture(scope="session")
def processes_removed(rollback):
    """A config-only run without the worker and the timer (egress stays localhost)."""
    proc = playbook(SCENARIO_DIR / "converge.yml", "--tags", "app_service_config", "-e", "app_service_egress=localhost",
                    "-e", '{"app_service_processes": [], "app_service_timers": []}')
    return proc


def run_command(*extra: str) -> subprocess.CompletedProcess:
    """The role's run.yml entry point through the scenario's run.yml."""
    return playbook(SCENARIO_DIR / "run.yml", *extra)


