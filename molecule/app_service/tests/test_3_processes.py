"""Processes, timers and hooks across the deploys of test_2_deploys.py, the
egress switch to localhost the rollback made, and removing the processes.
Runs last (after the rollback fixture)."""

import re

from conftest import (APP, KNOWN_GOOD, WORKER, all_hosts, current_release, egress_from_unit, report, serving)


def _starts_and_stops(host) -> list[tuple[str, str, str]]:
    """(start|stop, release, pid) from the worker's log, in order."""
    return re.findall(r"^\S+ (start|stop) release=(\S+) pid=(\d+)", host.check_output(f"cat /var/lib/{APP}/worker.log"), re.M)


def test_worker_followed_every_switch_with_a_graceful_stop(rollback, first_release):
    for name, host in all_hosts().items():
        events = _starts_and_stops(host)
        report(f"worker on {name}: {len(events)} start/stop events, releases "
               f"{[release[:12] for kind, release, _ in events if kind == 'start']}")
        # Every restart stopped the old process on SIGTERM (it logs the stop)
        # before the new one started: no start without the previous stop.
        for before, after in zip(events, events[1:]):
            if after[0] == "start":
                assert before[0] == "stop", events
            else:
                assert before[0] == "start" and before[1:] == after[1:], events
        starts = [release for kind, release, _ in events if kind == "start"]
        assert starts[0] == first_release[name] and starts[-1] == current_release(host) == first_release[name]
        # Moved to v2 by the deploy, not to the broken release (its gate failed).
        assert len(set(starts)) == 2
        assert host.check_output(f"systemctl show -p NRestarts --value {WORKER}") == "0"


def test_hooks_ran_before_and_after_each_switch(rollback):
    for name, host in all_hosts().items():
        lines = host.check_output(f"cat /var/lib/{APP}/hooks.log").splitlines()
        report(f"hooks on {name}: {[line.split()[0] + ' ' + line.split()[1][8:20] for line in lines]}")
        befores = [line for line in lines if line.startswith("before ")]
        afters = [line for line in lines if line.startswith("after ")]
        # converge, v2 and the broken release ran the before hook with the owner
        # role; only the two that switched ran the after hook (runtime role).
        assert len(befores) == 3 and all(line.endswith("db_user=app_owner") for line in befores), lines
        assert len(afters) == 2 and all(line.endswith("db_user=app_rw") for line in afters), lines
        assert [b.split()[1] for b in befores[:2]] == [a.split()[1] for a in afters]


def test_egress_localhost_blocks_other_addresses(rollback):
    """The rollback run set app_service_egress=localhost: from the web and the
    worker unit's cgroups the same connection is blocked by systemd."""
    for name, host in all_hosts().items():
        web = f"{APP}@{serving(host)[0]}.service"
        verdicts = {unit: egress_from_unit(host, unit) for unit in (web, WORKER)}
        report(f"egress localhost on {name}: {verdicts}")
        # Dropped by the unit's BPF egress filter: EPERM, or EAGAIN when the
        # SYN is dropped and the probe's 3 s timeout expires (seen in a
        # transient unit with IPAddressDeny=any on Debian 12); never refused
        # by the closed port as in the open mode.
        assert all(verdict in ("EPERM", "EAGAIN", "ETIMEDOUT") for verdict in verdicts.values()), verdicts
        assert "IPAddressDeny=any" in host.check_output(f"cat /etc/systemd/system/{WORKER}")


def test_removed_processes_and_timers_are_stopped_and_deleted(processes_removed):
    proc = processes_removed
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    for name, host in all_hosts().items():
        for unit in (WORKER, f"{APP}-tick.timer", f"{APP}-tick.service"):
            assert not host.file(f"/etc/systemd/system/{unit}").exists, unit
            assert not host.file(f"{KNOWN_GOOD}/{unit}").exists, unit
            state = host.run(f"systemctl show -p LoadState,ActiveState --value {unit}").stdout.split()
            assert state == ["not-found", "inactive"], (unit, state)
        assert _starts_and_stops(host)[-1][0] == "stop"
        report(f"{name}: worker and timer removed (stopped, disabled, unit files and known-good copies gone)")
