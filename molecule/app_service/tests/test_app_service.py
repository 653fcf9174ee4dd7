"""Behaviour of the app_service role with the demo app, from outside.

The later tests drive real deploys with ansible-playbook (the scenario's
converge.yml, playbooks/rollback.yml) while a bounded request loop runs
through the scenario's Caddy on 127.0.0.1:8080 in each container, and print
requests/failures. Module-scoped fixtures run each deploy once for all hosts.
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
        "ANSIBLE_CALLBACKS_ENABLED": "",
    })
    return env


def playbook(path: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run a playbook against the scenario's inventory; prints its tail."""
    start = time.monotonic()
    proc = subprocess.run([_bin("ansible-playbook"), "-i", INVENTORY, str(path), *extra],
                          capture_output=True, text=True, env=_env(), cwd=str(SCENARIO_DIR), timeout=900)
    took = time.monotonic() - start
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
    print(f"\n--- ansible-playbook {path.name} {' '.join(extra)}: rc={proc.returncode} in {took:.0f}s\n{tail}")
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


class Loops:
    """A request loop per host (a transient systemd unit in each container)."""

    def __init__(self, tag: str):
        self.tag = tag
        self.hosts = {name: testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}") for name in _hosts()}

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


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="app_service_test_"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def first_release():
    """Release ids from converge (before the deploys below), per host."""
    return {name: current_release(testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}"))
            for name in _hosts()}


@pytest.fixture(scope="module")
def deploy_v2(workdir, first_release):
    src = make_source(workdir, "v2")
    with Loops("v2") as loops:
        proc = playbook(SCENARIO_DIR / "converge.yml", "-e", f"app_service_source_path={src}")
    return proc, loops.results


@pytest.fixture(scope="module")
def deploy_broken(workdir, deploy_v2):
    src = make_source(workdir, "broken", broken=True)
    with Loops("broken") as loops:
        proc = playbook(SCENARIO_DIR / "converge.yml", "-e", f"app_service_source_path={src}",
                        "-e", "app_service_health_timeout=8")
    return proc, loops.results


@pytest.fixture(scope="module")
def restart(deploy_broken):
    with Loops("restart") as loops:
        proc = playbook(SCENARIO_DIR / "converge.yml", "--tags", "restart_app")
    return proc, loops.results


@pytest.fixture(scope="module")
def rollback(restart):
    with Loops("rollback") as loops:
        proc = playbook(PROJECT_DIR / "playbooks" / "rollback.yml", "-e", f"@{SCENARIO_DIR / 'vars' / 'main.yml'}",
                        "-e", "app_service_rollback_hosts=all", "-e", "app_service_rollback_to=previous")
    return proc, loops.results


# ---------------------------------------------------------------- after converge

def test_health_db_reports_revision_through_proxy(host):
    status, body = get(host, f"{PROXY}/health/db")
    print(f"/health/db -> {status} {body}")
    assert status == 200
    assert body["revision"] == "0001"
    assert body["db_user"] == "app_rw"
    assert body["release"] == current_release(host)


def test_app_reads_and_writes_with_dml_role(host):
    out = host.check_output(
        "python3 -c \"import urllib.request as u,json;"
        "r=u.urlopen(u.Request('http://127.0.0.1:8080/notes',data=b'{\\\"body\\\":\\\"hi\\\"}',"
        "headers={'Content-Type':'application/json'}),timeout=10);print(r.status)\"")
    assert out.strip() == "201"
    status, body = get(host, f"{PROXY}/notes")
    assert status == 200 and body["notes"][0]["body"] == "hi"


def test_migration_ran_as_owner_and_runtime_role_cannot_ddl(host):
    owner = host.check_output(
        "sudo -u postgres psql -p 9991 -d app -Atc \"SELECT tableowner FROM pg_tables WHERE tablename='notes'\"")
    assert owner == "app_owner"
    ddl = host.run("PGPASSWORD=rw-Secret-42 psql -h 127.0.0.1 -p 9991 -U app_rw -d app -c 'DROP TABLE notes'")
    assert ddl.rc != 0 and "must be owner" in ddl.stderr


def test_service_runs_unprivileged_and_cannot_write_code(host):
    active = [p for p in PORTS if host.service(f"{APP}@{p}").is_running]
    assert len(active) == 1
    pid = host.check_output(f"systemctl show -p MainPID --value {APP}@{active[0]}")
    user = host.check_output(f"ps -o user= -p {pid}")
    assert user == APP
    assert host.run(f"runuser -u {APP} -- touch {ROOT}/current/app/x").rc != 0
    assert host.run(f"runuser -u {APP} -- touch /var/lib/{APP}/probe").rc == 0
    env = host.file(f"/etc/{APP}/env")
    assert env.user == "root" and env.mode == 0o600
    assert "app_rw" in env.content_string and "app_owner" not in env.content_string


def test_instances_listen_on_loopback_only(host):
    listening = host.check_output("ss -Hltn")
    ports = re.findall(r"(\S+):(800[12])\s", listening)
    assert ports and all(addr == "127.0.0.1" for addr, _ in ports)


def test_one_release_after_converge_and_idempotence(host):
    releases = host.check_output(f"ls {ROOT}/releases").split()
    print(f"releases after converge + idempotence: {releases}")
    assert releases == [current_release(host)]
    log = host.check_output(f"cat /var/log/{APP}-deploy.log")
    assert len([l for l in log.splitlines() if "action=deploy" in l and "result=ok" in l]) == 1
    assert "revision=0001" in log


def test_security_exposure_is_low(host):
    out = host.check_output(f"systemd-analyze security --no-pager {APP}@{PORTS[0]}.service {APP}@{PORTS[1]}.service")
    scores = [float(s) for s in re.findall(r"Overall exposure level for \S+: (\d+\.\d+)", out)]
    print(f"systemd-analyze security exposure for {APP}@.service: {scores}")
    assert len(scores) == 2 and max(scores) <= 2.0


# ------------------------------------------------------------------ deploys

def test_second_deploy_switches_without_losing_requests(host, deploy_v2, first_release):
    proc, loops = deploy_v2
    assert proc.returncode == 0, proc.stdout[-3000:]
    loop = loops[host.backend.host]
    print(f"deploy v2 on {host.backend.host}: requests={loop['requests']} failures={loop['failures']}")
    assert loop["requests"] > 50
    assert loop["failures"] == 0, loop["errors"]
    new = current_release(host)
    assert new != first_release[host.backend.host]
    assert set(loop["releases"]) == {first_release[host.backend.host], new}
    status, body = get(host, f"{PROXY}/health/db")
    assert status == 200 and body["revision"] == "0002" and body["release"] == new


def test_broken_release_fails_and_old_keeps_serving(host, deploy_broken, deploy_v2):
    proc, loops = deploy_broken
    assert proc.returncode != 0, "deploying a release whose /health answers 500 must fail the run"
    assert "failed its health gate" in proc.stdout
    loop = loops[host.backend.host]
    print(f"broken deploy on {host.backend.host}: requests={loop['requests']} failures={loop['failures']}")
    assert loop["requests"] > 50
    assert loop["failures"] == 0, loop["errors"]
    v2 = current_release(host)
    assert set(loop["releases"]) == {v2}
    status, body = get(host, f"{PROXY}/health")
    assert status == 200 and body["release"] == v2
    active = [p for p in PORTS if host.service(f"{APP}@{p}").is_running]
    assert len(active) == 1
    log = host.check_output(f"cat /var/log/{APP}-deploy.log")
    assert "result=failed" in log.splitlines()[-1]


def test_restart_app_tag_restarts_without_losing_requests(host, restart):
    proc, loops = restart
    assert proc.returncode == 0, proc.stdout[-3000:]
    loop = loops[host.backend.host]
    print(f"restart_app on {host.backend.host}: requests={loop['requests']} failures={loop['failures']}")
    assert loop["failures"] == 0, loop["errors"]
    assert "action=restart" in host.check_output(f"tail -n1 /var/log/{APP}-deploy.log")


def test_rollback_to_previous_release(host, rollback, first_release):
    proc, loops = rollback
    assert proc.returncode == 0, proc.stdout[-3000:]
    loop = loops[host.backend.host]
    print(f"rollback on {host.backend.host}: requests={loop['requests']} failures={loop['failures']}")
    assert loop["failures"] == 0, loop["errors"]
    assert current_release(host) == first_release[host.backend.host]
    status, body = get(host, f"{PROXY}/health")
    assert status == 200 and body["release"] == first_release[host.backend.host]
    assert "action=rollback" in host.check_output(f"tail -n1 /var/log/{APP}-deploy.log")
