"""Database events on the one-host stack (Debian 12, PgBouncer 1.18): a
restart of PostgreSQL and a minor update lose no request, unattended-upgrades
holds the server back, and asyncpg works through transaction pooling with
the driver settings the README gives for PgBouncer before 1.21."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "shared"))

from stacktest import RequestLoop, run_playbook  # noqa: E402

PSQL = "runuser -u postgres -- psql -X -At -p 9991 -d postgres -c"


def started(host):
    return host.check_output(f"{PSQL} 'SELECT pg_postmaster_start_time()'")


def test_restart_postgresql_tag_loses_no_request(host):
    """--tags restart_postgresql: PgBouncer holds the apps' queries while the
    server restarts; every request to the deep health path (which queries
    the database) through Caddy succeeds, some of them later."""
    before = started(host)
    with RequestLoop(host, "restart-postgresql", "/health/db") as loop:
        rc, out = run_playbook("playbooks/site.yml", "--tags", "restart_postgresql")
    assert rc == 0, out[-4000:]
    assert "stack-default: paused (" in out, out[-3000:]
    assert started(host) != before
    assert loop.result["requests"] > 50 and loop.result["failures"] == 0, loop.result
    print(f"slowest request during the restart: {loop.result['max_latency_seconds']} s")


ASYNCPG_LOAD = """
import asyncio, sys, uuid
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
async def main(url, mode):
    if mode == "pgbouncer-1.18":
        # README: asyncpg through PgBouncer before 1.21 in transaction mode.
        engine = create_async_engine(url, pool_size=8, max_overflow=0, connect_args={
            "statement_cache_size": 0, "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": lambda: f"__asyncpg_{uuid.uuid4()}__"})
    else:
        engine = create_async_engine(url, pool_size=8, max_overflow=0)
    errors = []
    async def worker(n):
        for i in range(15):
            try:
                async with engine.begin() as conn:
                    row = (await conn.execute(text("SELECT count(*) + :n FROM notes WHERE id > :i"), {"n": n, "i": i})).one()
                    assert row[0] >= n
            except Exception as exc:
                errors.append(type(exc).__name__ + ": " + str(exc).splitlines()[0])
    await asyncio.gather(*(worker(n) for n in range(24)))
    await engine.dispose()
    print("errors=%d %s" % (len(errors), errors[:2]))
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_asyncpg_through_pgbouncer_1_18_with_the_readmes_driver_settings(host):
    """PgBouncer 1.18 (Debian 12) keeps no named prepared statements across
    transactions: with asyncpg's statement cache off and SQLAlchemy's
    statements named uniquely, 360 transactions of 24 tasks on 8 pooled
    connections all succeed. Asyncpg's defaults are run too and their errors
    printed (the reason for the settings)."""
    assert "max_prepared_statements" not in host.check_output("cat /etc/pgbouncer/pgbouncer.ini")
    venv = "/var/tmp/asyncpg-probe"
    host.check_output(f"test -x {venv}/bin/python || python3 -m venv {venv}")
    host.check_output(f"{venv}/bin/pip install -q --cache-dir /var/cache/stack-pip 'sqlalchemy[asyncio]' asyncpg")
    url = host.check_output("grep ^DATABASE_URL= /etc/demo/env").split("=", 1)[1].strip().strip("'\"")
    url = url.replace("postgresql+psycopg://", "postgresql+asyncpg://", 1).replace("sslmode=disable", "ssl=disable")
    assert "@127.0.0.1:6432/" in url
    good = host.run(f"{venv}/bin/python -c %s %s pgbouncer-1.18", ASYNCPG_LOAD, url)
    defaults = host.run(f"{venv}/bin/python -c %s %s defaults", ASYNCPG_LOAD, url)
    print("with the README's settings:", good.stdout.strip(), "| asyncpg's defaults:", defaults.stdout.strip())
    assert good.rc == 0 and good.stdout.strip().startswith("errors=0 "), good.stdout + good.stderr


def pending_postgresql(host):
    """(installed, candidate) versions of the server package."""
    policy = host.check_output("LC_ALL=C apt-cache policy postgresql-15")
    installed = policy.split("Installed: ")[1].split()[0]
    candidate = policy.split("Candidate: ")[1].split()[0]
    return installed, candidate


def test_unattended_upgrades_hold_the_server_back(host):
    installed, candidate = pending_postgresql(host)
    assert installed != candidate, (
        f"postgresql-15 {installed} is the archive's newest: the test needs a newer minor in bookworm-security "
        "(molecule/default/prepare.yml installs the oldest one)")
    out = host.run("unattended-upgrade --dry-run -d 2>&1")
    print("\n".join(line for line in out.stdout.splitlines() if "postgresql" in line.lower())[:1500])
    assert out.rc == 0, out.stdout[-2000:]
    kept = [line for line in out.stdout.splitlines() if "postgresql-15" in line and "blacklist" in line.lower()]
    assert kept, out.stdout[-3000:]
    assert pending_postgresql(host)[0] == installed  # a dry run


def test_the_update_playbook_installs_the_new_minor_losing_no_request(host, tmp_path):
    """playbooks/update.yml: the packages update without restarting
    PostgreSQL (policy-rc.d), then the postgresql role restarts it with
    PgBouncer paused: the new minor runs, no request to the deep health
    path through Caddy fails."""
    installed, candidate = pending_postgresql(host)
    version_before = host.check_output(f"{PSQL} 'SHOW server_version'")
    started_before = started(host)
    report = tmp_path / "update.json"
    with RequestLoop(host, "update", "/health/db") as loop:
        rc, out = run_playbook("playbooks/update.yml", "-e", f"update_report_file={report}")
    assert rc == 0, out[-5000:]
    result = json.loads(report.read_text())
    print("updated:", json.dumps(result["upgraded"])[:1500])
    print("probe:", json.dumps(result["probe"]))
    assert result["upgraded"]["stack-default"]["postgresql-15"] == [installed, candidate], result["upgraded"]
    assert pending_postgresql(host) == (candidate, candidate)
    version_after = host.check_output(f"{PSQL} 'SHOW server_version'")
    print(f"server_version {version_before} -> {version_after}")
    assert version_after != version_before and version_after.split()[0] in candidate
    assert started(host) != started_before
    assert loop.result["requests"] > 50 and loop.result["failures"] == 0, loop.result
    assert result["probe"]["requests"] > 50 and result["probe"]["failures"] == 0, result["probe"]
    assert not host.file("/usr/sbin/policy-rc.d").exists
