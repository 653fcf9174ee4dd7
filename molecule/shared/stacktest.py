"""Helpers for the whole-stack scenarios (default, fleet, apps): run playbooks
against the Molecule inventory, request Caddy over HTTPS, count requests
during a deploy or restart.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Caddy's internal CA root: what the caddy role publishes as caddy_internal_ca_file
# (molecule/caddy's converge checks the two agree).
CADDY_CA = "/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt"
HTTPS = "https://localhost:8443"


def run_playbook(playbook: str, *args: str, inventory: str | None = None) -> tuple[int, str]:
    """ansible-playbook against the scenario's inventory (or ``inventory``);
    returns (rc, output)."""
    path = playbook if os.path.isabs(playbook) else str(REPO / playbook)
    cmd = ["ansible-playbook", "-i", inventory or os.environ["MOLECULE_INVENTORY_FILE"], path, *args]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, check=False)
    print(f"{' '.join(cmd[3:])}: rc={proc.returncode} in {time.monotonic() - started:.0f}s")
    return proc.returncode, proc.stdout + proc.stderr


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _descendants(root: int) -> list[int]:
    """The PIDs under ``root`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Background:
    """ansible-playbook started in its own process group (so a kill takes
    its workers and connections too, as a closed laptop lid does), its
    output in a file."""

    def __init__(self, playbook: str, *args: str, inventory: str | None = None, out: Path) -> None:
        path = playbook if os.path.isabs(playbook) else str(REPO / playbook)
        self.out = out
        with open(out, "w", encoding="utf-8") as handle:
            self.proc = subprocess.Popen(
                ["ansible-playbook", "-i", inventory or os.environ["MOLECULE_INVENTORY_FILE"], path, *args],
                stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def signal(self, sig: int) -> None:
        os.killpg(self.pid, sig)

    def kill(self) -> str:
        """SIGKILL the whole group, and the run's descendants that left it
        (Mitogen's multiplexer starts a session of its own and outlived the
        group's kill); returns the output so far."""
        strays = [pid for pid in _descendants(self.pid) if _pgid(pid) not in (None, self.pid)]
        with contextlib.suppress(ProcessLookupError):
            self.signal(9)
        for pid in strays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        self.proc.wait(timeout=60)
        return self.output()

    def wait(self, timeout: int = 900) -> tuple[int, str]:
        return self.proc.wait(timeout=timeout), self.output()

    def output(self) -> str:
        return self.out.read_text(encoding="utf-8", errors="replace")


def lock_holder(host, app: str) -> dict:
    """The holder.json of an app's deploy lock on `host` ({} when unlocked)."""
    out = host.run("cat /run/lock/app_service-%s.lock/holder.json", app)
    return json.loads(out.stdout) if out.rc == 0 and out.stdout.strip() else {}


def wait_for_holder(host, app: str, run: Background, phase: str, timeout: int = 600) -> dict:
    """Wait until `run` holds the app's deploy lock in `phase`; fails when the
    run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = lock_holder(host, app)
        if holder.get("pid") == run.pid and holder.get("phase") == phase:
            return holder
        assert run.proc.poll() is None, f"the run ended before holding the lock in phase {phase}:\n" + \
            run.output()[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"no lock in phase {phase} after {timeout}s: {lock_holder(host, app)}")


def recap(output: str) -> dict[str, dict[str, int]]:
    """Per-host PLAY RECAP counters of an ansible-playbook run (summed over plays)."""
    totals: dict[str, dict[str, int]] = {}
    for host, fields in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        counters = totals.setdefault(host, {})
        for key, value in re.findall(r"(\w+)=(\d+)", fields):
            counters[key] = counters.get(key, 0) + int(value)
    return totals


def get(host, path: str) -> tuple[int, dict]:
    """GET a path through Caddy over HTTPS from inside `host`, verifying the
    certificate against Caddy's internal CA; returns (status, JSON body)."""
    cmd = host.run(
        "curl -sS --max-time 15 --cacert %s -o /tmp/stacktest.body -w '%%{http_code}' %s",
        CADDY_CA, HTTPS + path)
    assert cmd.rc == 0, cmd.stderr
    body = host.run("cat /tmp/stacktest.body").stdout
    try:
        return int(cmd.stdout), json.loads(body)
    except ValueError:
        return int(cmd.stdout), {"raw": body}


FAIL_HEALTH_FILE = "/etc/stacktest-fail-health"


def new_release_source(tmp_path: Path, marker: str, fail_where_flagged: bool = False) -> Path:
    """A copy of the demo app that differs from the deployed one (a new release).

    fail_where_flagged: its /health answers 500 on hosts where FAIL_HEALTH_FILE
    exists, so a test can make the release fail on chosen hosts only.
    """
    target = tmp_path / f"demo_app-{marker}"
    shutil.copytree(REPO / "examples" / "demo_app", target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".venv"))
    (target / "RELEASE_NOTE").write_text(f"{marker}\n")
    if fail_where_flagged:
        main = target / "app" / "main.py"
        text = main.read_text()
        healthy = 'return JSONResponse({"status": "ok", "release": release_id()}, status_code=200)'
        assert healthy in text, "the demo app's /health line changed; update this helper"
        main.write_text(text.replace(healthy, (
            f'if os.path.exists("{FAIL_HEALTH_FILE}"):\n'
            '        return JSONResponse({"status": "failing", "release": release_id()}, status_code=500)\n'
            "    " + healthy)))
    return target


def redeploy_under_load(host, tmp_path: Path, marker: str, *args: str,
                        fail_where_flagged: bool = False) -> tuple[int, str, "RequestLoop"]:
    """Run playbooks/redeploy.yml with a new release of the demo app while a
    request loop runs through Caddy on `host`; returns (rc, output, loop)."""
    source = new_release_source(tmp_path, marker, fail_where_flagged)
    with RequestLoop(host, marker) as loop:
        rc, out = run_playbook("playbooks/redeploy.yml", "-e", f"stack_app_source_path={source}", *args)
    return rc, out, loop


def assert_redeploy_loses_no_request(
        host, releases: Callable[[], dict[str, str]], loops: dict[str, str], *args: str,
        redeploy: Callable[..., tuple[int, str]] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Redeploy while serving, and assert that no request was lost.

    Runs playbooks/redeploy.yml with `args` (through `redeploy(*args)` when
    given, a scenario's own runner) while one RequestLoop per `loops` entry
    (tag -> path) requests through Caddy on `host`. Asserts that the run
    passed, that every release `releases()` reads ({name: release}) changed,
    and that each loop made more than 50 requests, none failed. Returns the
    releases before and after, for the caller's own checks.
    """
    run = redeploy or (lambda *extra: run_playbook("playbooks/redeploy.yml", *extra))
    before = releases()
    with contextlib.ExitStack() as stack:
        started = [stack.enter_context(RequestLoop(host, tag, path)) for tag, path in loops.items()]
        rc, out = run(*args)
    assert rc == 0, out[-4000:]
    after = releases()
    assert all(after[name] != before[name] for name in before), (before, after)
    for loop in started:
        assert loop.result["requests"] > 50
        assert loop.result["failures"] == 0, loop.result
    return before, after


class RequestLoop:
    """A bounded request loop through Caddy in `host` (a transient systemd
    unit running playbooks/files/request_probe.py), started and stopped around
    the block. Its result says it ran until the block ended (stopped by the
    stop file, not by its own time limit)."""

    def __init__(self, host, tag: str, path: str = "/health") -> None:
        self.host, self.tag, self.path = host, tag, path
        self.result: dict = {}

    def __enter__(self) -> "RequestLoop":
        self.host.run("rm -f /tmp/loop-%s.json /tmp/loop-%s.stop", self.tag, self.tag)
        self.host.check_output(
            "systemd-run --unit=reqloop-%s --collect /usr/bin/python3 /usr/local/bin/reqloop "
            "--url %s --cafile %s --out /tmp/loop-%s.json --stop /tmp/loop-%s.stop --max-seconds 1800",
            self.tag, HTTPS + self.path, CADDY_CA, self.tag, self.tag)
        time.sleep(2)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(3)  # keep requesting for a moment after the change
        self.host.check_output("touch /tmp/loop-%s.stop", self.tag)
        for _ in range(60):
            if self.host.file(f"/tmp/loop-{self.tag}.json").exists:
                break
            time.sleep(1)
        self.result = json.loads(self.host.check_output("cat /tmp/loop-%s.json", self.tag))
        print(f"request loop [{self.tag}] through Caddy: requests={self.result['requests']} "
              f"failures={self.result['failures']} releases={self.result['releases']} "
              f"max latency={self.result['max_latency_seconds']} s errors={self.result['errors']}")
        assert self.result["stopped"] == "stop file", self.result
