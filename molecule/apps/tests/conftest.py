"""Helpers and session fixtures for the apps scenario's tests.

Everything is checked from outside the apps: HTTP on their ports from inside
the app host, psql as postgres, pip freeze of a release's virtualenv, file
ownership, requests through Caddy over HTTPS, and further runs of the
stack's playbooks (redeploy.yml, site.yml, run.yml) with ansible-playbook
(session fixtures, run once, in order).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import testinfra

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "shared"))
from stacktest import CADDY_CA, HTTPS, RequestLoop, run_playbook  # noqa: E402

SCENARIO_DIR = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).resolve().parent.parent))
INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE", "")
API_SRC = SCENARIO_DIR / "files" / "shopapi"
WEB_SRC = SCENARIO_DIR / "files" / "web"
UV_SRC = SCENARIO_DIR / "files" / "uv"
PORTS = {"api": (8101, 8102), "web": (3001, 3002)}
PSQL = "sudo -u postgres psql -p 9992 -d shop -Atc"


def report(line: str) -> None:
    """A figure for the run's log (the verifier shows passed tests' output)."""
    print(line)


def playbook(*extra: str, name: str = "playbooks/redeploy.yml") -> tuple[int, str]:
    """One of the stack's playbooks (redeploy.yml by default) against the
    scenario's inventory, with extra arguments."""
    rc, out = run_playbook(name, *extra)
    print("\n".join(out.splitlines()[-30:]))
    return rc, out


def app_host():
    return testinfra.get_host(f"ansible://apps-host?ansible_inventory={INVENTORY}")


def egress_host():
    return testinfra.get_host(f"ansible://apps-egress?ansible_inventory={INVENTORY}")


def deploy_key_sha256() -> str:
    """sha256 of the test deploy key prepare.yml made (as the role writes it)."""
    key = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "deploy_key").read_text()
    return hashlib.sha256((key.strip() + "\n").encode()).hexdigest()


def _q(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def http(host, url: str, body: dict | None = None, headers: bool = False):
    """GET (or POST JSON) a URL from inside the app host: (status, body text),
    plus the response headers with headers=True. HTTPS is verified against
    Caddy's internal CA."""
    code = (
        "import json,ssl,sys,urllib.request,urllib.error\n"
        f"ctx=ssl.create_default_context(cafile={CADDY_CA!r}) if sys.argv[1].startswith('https') else None\n"
        "data=sys.argv[2].encode() if len(sys.argv)>2 else None\n"
        "req=urllib.request.Request(sys.argv[1],data=data,headers={'Content-Type':'application/json'})\n"
        "try:\n r=urllib.request.urlopen(req,timeout=10,context=ctx); s=r.status; b=r.read(); h=dict(r.headers)\n"
        "except urllib.error.HTTPError as e:\n s=e.code; b=e.read(); h=dict(e.headers)\n"
        "print(json.dumps({'status':s,'body':b.decode(),'headers':h}))\n"
    )
    args = f" {_q(json.dumps(body))}" if body is not None else ""
    out = json.loads(host.check_output(f"python3 -c {_q(code)} {_q(url)}{args}"))
    if headers:
        return out["status"], out["body"], out["headers"]
    return out["status"], out["body"]


def site(host, path: str, body: dict | None = None, headers: bool = False):
    """A request through Caddy over HTTPS (the stack's site on 8443)."""
    return http(host, HTTPS + path, body, headers)


def serving_port(host, app: str) -> int:
    """The one port whose instance runs."""
    ports = [p for p in PORTS[app] if host.service(f"{app}@{p}").is_running]
    assert len(ports) == 1, f"{app}: expected one serving instance, got {ports}"
    return ports[0]


def current_release(host, app: str) -> str:
    return host.check_output(f"readlink /srv/{app}/current").rsplit("/", 1)[-1]


def freeze(host, release_dir: str) -> list[str]:
    # A release's virtualenv has no pip (uv builds it): the role's uv reads it.
    return host.check_output(f"/opt/app_service/uv-*/bin/uv pip freeze --python {release_dir}/.venv/bin/python").splitlines()


def normalize(requirement: str) -> str:
    """name==version with the name as PEP 503 normalizes it, extras dropped."""
    name, version = requirement.split("==")
    return re.sub(r"[-_.]+", "-", name.split("[")[0]).lower() + "==" + version.strip()


def lock_pins(path: Path) -> list[str]:
    return sorted(normalize(line.split()[0]) for line in path.read_text().splitlines() if re.match(r"^[A-Za-z]", line))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("apps")


@pytest.fixture(scope="session")
def first_api_release():
    return current_release(app_host(), "api")


@pytest.fixture(scope="session")
def api_uv(workdir, first_api_release):
    """A changed API source (new release id): the API as a uv project,
    pyproject.toml and uv.lock pinning the same set, no requirements.lock."""
    src = workdir / "shopapi-uv"
    shutil.copytree(API_SRC, src)
    (src / "requirements.lock").unlink()
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(UV_SRC / name, src / name)
    return playbook("-e", json.dumps({"apps_api_source": str(src)}))


@pytest.fixture(scope="session")
def api_without_lock(workdir, api_uv):
    """A release with only a loose requirements.txt while app_service_require_lock is true."""
    src = workdir / "shopapi-nolock"
    shutil.copytree(API_SRC, src)
    (src / "requirements.lock").unlink()
    (src / "requirements.txt").write_text("fastapi\nuvicorn\npsycopg[binary]\n")
    before = snapshot(app_host(), "api")
    return playbook("-e", json.dumps({"apps_api_source": str(src)})), before


def snapshot(host, app: str) -> dict:
    """What a refused deploy must leave as it was."""
    port = serving_port(host, app)
    return {"current": current_release(host, app), "port": port,
            "pid": host.check_output(f"systemctl show -p MainPID --value {app}@{port}"),
            "releases": sorted(host.check_output(f"ls /srv/{app}/releases").split())}


@pytest.fixture(scope="session")
def web_failed_build(workdir):
    """A frontend whose build script fails (from a directory this time)."""
    src = workdir / "web-broken"
    shutil.copytree(WEB_SRC, src)
    (src / "build.js").write_text('console.error("build: syntax error in app.jsx"); process.exit(1);\n')
    host = app_host()
    before = snapshot(host, "web")
    return playbook("-e", json.dumps({"apps_web_source_type": "dir", "apps_web_source": str(src)})), before
