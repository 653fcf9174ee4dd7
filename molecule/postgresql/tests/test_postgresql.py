"""Prove the postgresql role from outside: connect, query, get refused."""

import json
import re

import yaml
import os

PORT = 9991
VARS = yaml.safe_load(open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "vars.yml")))
PASSWORDS = VARS["molecule_passwords"]
CONF = {"12": "/etc/postgresql/15/main", "13": "/etc/postgresql/17/main"}


def conf_dir(host):
    return CONF[host.system_info.release.split(".")[0]]


def psql(host, user, sql, db="app"):
    """Run SQL over TCP with a password (SCRAM); return the command result."""
    url = f"postgresql://{user}@127.0.0.1:{PORT}/{db}"
    return host.run(
        "PGPASSWORD=%s psql %s -X -v ON_ERROR_STOP=1 -tAc %s",
        PASSWORDS[user], url, sql,
    )


def superuser(host, sql, db="app"):
    cmd = host.run("sudo -u postgres psql -p %s -X -tAc %s %s", str(PORT), sql, db)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def sha256(host, path):
    return host.check_output("sha256sum %s", path).split()[0]


def test_listens_on_custom_port_and_configured_addresses_only(host):
    listeners = host.check_output("ss -H -ltn").splitlines()
    pg = [line.split()[3] for line in listeners if line.split()[3].endswith(f":{PORT}")]
    print(f"listeners on {PORT}: {pg}")
    assert pg, f"nothing listens on {PORT}"
    assert set(pg) <= {f"127.0.0.1:{PORT}", f"[::1]:{PORT}"}
    assert not [line for line in listeners if line.split()[3].endswith(":5432")]
    assert host.socket(f"unix:///var/run/postgresql/.s.PGSQL.{PORT}").is_listening


def test_scram_is_used(host):
    assert superuser(host, "SHOW password_encryption") == "scram-sha-256"
    verifier = superuser(host, "SELECT rolpassword FROM pg_authid WHERE rolname = 'app_rw'", db="postgres")
    assert verifier.startswith("SCRAM-SHA-256$")


def test_wrong_password_is_refused(host):
    cmd = host.run("PGPASSWORD=wrong psql postgresql://app_rw@127.0.0.1:%s/app -tAc 'SELECT 1'", str(PORT))
    assert cmd.rc != 0
    assert "password authentication failed" in cmd.stderr


def test_app_role_reads_and_writes_tables_the_owner_creates_later(host):
    # Created by the owner after the role applied its grants: only default
    # privileges can give app_rw access to it.
    table = "probe_" + host.backend.host.replace("-", "_")
    assert psql(host, "app_owner", f"DROP TABLE IF EXISTS {table}; "
                f"CREATE TABLE {table} (id bigserial PRIMARY KEY, v text)").rc == 0
    write = psql(host, "app_rw", f"INSERT INTO {table} (v) VALUES ('a'), ('b'); "
                 f"UPDATE {table} SET v = 'c' WHERE v = 'b'; DELETE FROM {table} WHERE v = 'a'; "
                 f"SELECT count(*) FROM {table}")
    assert write.rc == 0, write.stderr
    assert write.stdout.strip().splitlines()[-1] == "1"
    create = psql(host, "app_rw", "CREATE TABLE nope (id int)")
    assert create.rc != 0 and "permission denied for schema public" in create.stderr
    drop = psql(host, "app_rw", f"DROP TABLE {table}")
    assert drop.rc != 0 and "must be owner" in drop.stderr
    ro = psql(host, "app_ro", f"SELECT count(*) FROM {table}")
    assert ro.rc == 0 and ro.stdout.strip() == "1", ro.stderr
    ro_write = psql(host, "app_ro", f"INSERT INTO {table} (v) VALUES ('x')")
    assert ro_write.rc != 0 and "permission denied" in ro_write.stderr
    ro_create = psql(host, "app_ro", "CREATE TABLE nope (id int)")
    assert ro_create.rc != 0
    assert psql(host, "app_owner", f"DROP TABLE {table}").rc == 0


def test_public_has_no_connect_and_no_create(host):
    acl = superuser(host, "SELECT datacl::text FROM pg_database WHERE datname = 'app'", db="postgres")
    # No '=...' entry: PUBLIC has neither CONNECT nor TEMP.
    assert not re.search(r"[{,]=", acl), acl
    assert superuser(host, "SELECT has_schema_privilege('public', 'public', 'CREATE')") == "f"


def test_privileges_undone_by_hand_are_healed_by_a_plain_converge(host, playbook):
    # The role reads every privilege it manages in one query per database and
    # runs its grant/revoke tasks only when that read finds a difference: undo
    # one of each kind by hand and the next plain converge must put them back.
    table = "heal_" + host.backend.host.replace("-", "_")
    assert psql(host, "app_owner", f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int)").rc == 0
    superuser(host, f"GRANT CONNECT, TEMP ON DATABASE app TO PUBLIC; GRANT CREATE ON SCHEMA public TO PUBLIC; "
                    f"REVOKE CONNECT ON DATABASE app FROM app_ro; REVOKE USAGE ON SCHEMA public FROM app_ro; "
                    f"ALTER DEFAULT PRIVILEGES FOR ROLE app_owner IN SCHEMA public REVOKE INSERT ON TABLES FROM app_rw; "
                    f"REVOKE SELECT ON {table} FROM app_ro; REVOKE UPDATE ON {table} FROM app_rw")
    rc, out = playbook()
    assert rc == 0, out[-3000:]
    checks = {
        "PUBLIC CONNECT on app": "SELECT has_database_privilege('public', 'app', 'CONNECT')",
        "PUBLIC TEMP on app": "SELECT has_database_privilege('public', 'app', 'TEMP')",
        "PUBLIC CREATE on public": "SELECT has_schema_privilege('public', 'public', 'CREATE')",
    }
    for what, sql in checks.items():
        assert superuser(host, sql) == "f", f"{what} was not revoked again"
    assert psql(host, "app_ro", f"SELECT count(*) FROM {table}").stdout.strip() == "0"
    assert psql(host, "app_rw", f"UPDATE {table} SET id = 1").rc == 0
    later = table + "_later"
    assert psql(host, "app_owner", f"CREATE TABLE {later} (id int)").rc == 0
    assert psql(host, "app_rw", f"INSERT INTO {later} VALUES (1)").rc == 0, "default INSERT privilege not restored"
    assert psql(host, "app_owner", f"DROP TABLE {table}, {later}").rc == 0
    rc, out = playbook()
    assert rc == 0 and "changed=0" in out, out[-3000:]


TLS_DIR = "/etc/ssl/postgresql-server"
CA_DIR = "/etc/ssl/postgresql-stack-ca"


def tls_connect(host, cafile, name="localhost"):
    """psql to 127.0.0.1 over TLS, the server's certificate verified against
    cafile for the host name ``name`` (libpq checks host, connects to hostaddr)."""
    return host.run(
        "PGPASSWORD=%s psql %s -X -tAc %s", PASSWORDS["app_rw"],
        f"host={name} hostaddr=127.0.0.1 port={PORT} dbname=app user=app_rw sslmode=verify-full sslrootcert={cafile}",
        "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")


def test_server_certificate_from_the_roles_ca_verifies_for_its_names(host):
    for name in ("localhost", "127.0.0.1"):
        cmd = tls_connect(host, f"{TLS_DIR}/ca.crt", name)
        assert cmd.rc == 0, cmd.stderr
        assert cmd.stdout.strip().startswith("t|TLSv1."), cmd.stdout
    # The CA key is root's alone; the server key the postgres user's alone.
    assert host.file(CA_DIR).mode == 0o700 and host.file(CA_DIR).user == "root"
    assert host.file(f"{CA_DIR}/ca.key").mode == 0o600 and host.file(f"{CA_DIR}/ca.key").user == "root"
    key = host.file(f"{TLS_DIR}/server.key")
    assert key.mode == 0o600 and key.user == "postgres"
    sans = host.check_output("openssl x509 -noout -ext subjectAltName -in %s/server.crt", TLS_DIR)
    assert "DNS:localhost" in sans and "IP Address:127.0.0.1" in sans, sans
    # A name that is not in the certificate fails verify-full.
    other = tls_connect(host, f"{TLS_DIR}/ca.crt", "not-in-the-certificate.example")
    assert other.rc != 0 and "does not match" in other.stderr, other.stderr


def test_certificate_due_for_renewal_is_replaced_and_served(host, playbook):
    # A certificate for the same names from the same CA, expiring tomorrow:
    # inside postgresql_tls_renew_days, so the next plain run replaces it.
    host.check_output(
        "openssl x509 -in {d}/server.crt -x509toreq -copy_extensions copyall -signkey {d}/server.key "
        "-out /tmp/renew.csr 2>/dev/null && "
        "openssl x509 -req -in /tmp/renew.csr -CA {c}/ca.crt -CAkey {c}/ca.key -CAcreateserial -days 1 "
        "-copy_extensions copyall -out {d}/server.crt 2>/dev/null && "
        "sudo -u postgres psql -p {p} -X -tAc 'SELECT pg_reload_conf()'".format(d=TLS_DIR, c=CA_DIR, p=PORT))
    short = host.check_output("openssl x509 -noout -enddate -in %s/server.crt", TLS_DIR)
    assert host.run("openssl x509 -checkend 172800 -noout -in %s/server.crt", TLS_DIR).rc != 0, short
    rc, out = playbook()
    assert rc == 0, out[-3000:]
    renewed = host.check_output("openssl x509 -noout -enddate -in %s/server.crt", TLS_DIR)
    print(f"before: {short}; after: {renewed}")
    assert host.run("openssl x509 -checkend %s -noout -in %s/server.crt", str(300 * 86400), TLS_DIR).rc == 0
    # The server serves the new certificate (the reload picked it up).
    served = host.check_output(
        "openssl s_client -starttls postgres -connect 127.0.0.1:%s -CAfile %s/ca.crt </dev/null 2>/dev/null "
        "| openssl x509 -noout -enddate", str(PORT), TLS_DIR)
    assert served == renewed, (served, renewed)
    rc, out = playbook()
    assert rc == 0 and "changed=0" in out, out[-3000:]


def test_pg_hba_refuses_pairs_it_does_not_allow(host):
    cross = psql(host, "other_user", "SELECT 1", db="app")
    assert cross.rc != 0 and "no pg_hba.conf entry" in cross.stderr
    cross = psql(host, "app_rw", "SELECT 1", db="other")
    assert cross.rc != 0 and "no pg_hba.conf entry" in cross.stderr
    assert psql(host, "other_user", "SELECT 1", db="other").rc == 0
    first = host.file(f"{conf_dir(host)}/pg_hba.conf").content_string
    rules = [line for line in first.splitlines() if line and not line.startswith("#")]
    assert rules[0].split() == ["local", "all", "postgres", "peer"]
    assert superuser(host, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"


def test_extensions_and_pg_stat_statements_loaded(host):
    exts = superuser(host, "SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension").split(",")
    assert {"uuid-ossp", "pg_trgm", "pg_stat_statements"} <= set(exts)
    assert "pg_stat_statements" in superuser(host, "SHOW shared_preload_libraries")
    assert int(superuser(host, "SELECT count(*) FROM pg_stat_statements")) > 0
    assert len(superuser(host, "SELECT uuid_generate_v4()")) == 36


def test_memory_sized_by_the_filter(host):
    # postgresql_memory_mb: 1024 -> 25% / 75%
    assert superuser(host, "SHOW shared_buffers") == "256MB"
    assert superuser(host, "SHOW effective_cache_size") == "768MB"
    assert superuser(host, "SHOW log_lock_waits") == "on"


def test_check_mode_reports_no_changes_and_hides_passwords(host, playbook):
    rc, out = playbook("--check", "--diff", "-v")
    recap = re.search(r"changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out)
    assert rc == 0, out[-3000:]
    assert recap and recap.group(1) == "0" and recap.group(3) == "0", out[-3000:]
    for name, password in PASSWORDS.items():
        assert password not in out, f"password of {name} appears in the output"


def test_bad_hba_entry_fails_before_anything_changes(host, playbook):
    hba = f"{conf_dir(host)}/pg_hba.conf"
    before = sha256(host, hba), sha256(host, f"{conf_dir(host)}/postgresql.conf")
    bad = VARS["postgresql_hba_entries"] + [
        {"type": "host", "database": "app", "user": "app_rw", "address": "10.0.0.300/8", "method": "scram-sha-256"}]
    rc, out = playbook("-e", json.dumps({"postgresql_hba_entries": bad}))
    assert rc != 0
    assert "postgresql_hba_entries[3]" in out and "10.0.0.300/8" in out
    assert "changed=0" in out
    assert (sha256(host, hba), sha256(host, f"{conf_dir(host)}/postgresql.conf")) == before
    assert psql(host, "app_rw", "SELECT 1").rc == 0


def test_trust_on_network_line_is_refused(host, playbook):
    bad = VARS["postgresql_hba_entries"] + [
        {"type": "host", "database": "all", "user": "all", "address": "0.0.0.0/0", "method": "trust"}]
    rc, out = playbook("-e", json.dumps({"postgresql_hba_entries": bad}))
    assert rc != 0 and "method 'trust' on a network line is refused" in out
    assert "changed=0" in out


def test_hba_line_postgresql_rejects_is_rolled_back(host, playbook):
    hba = f"{conf_dir(host)}/pg_hba.conf"
    before = sha256(host, hba)
    # Passes the filter (syntax), but PostgreSQL knows no such option.
    bad = VARS["postgresql_hba_entries"] + [
        {"type": "host", "database": "app", "user": "app_rw", "address": "127.0.0.2/32",
         "method": "scram-sha-256", "options": {"no_such_option": "1"}}]
    rc, out = playbook("--tags", "postgresql_config", "-e", json.dumps({"postgresql_hba_entries": bad}))
    assert rc != 0 and "PostgreSQL rejected the rendered pg_hba.conf" in out, out[-3000:]
    assert sha256(host, hba) == before
    assert host.run("ls %s | grep -c '~$'", conf_dir(host)).stdout.strip() == "0"
    assert psql(host, "app_rw", "SELECT 1").rc == 0


def test_bad_config_value_never_goes_live(host, playbook):
    conf = f"{conf_dir(host)}/postgresql.conf"
    before = sha256(host, conf)
    # Not a memory setting (those are checked before the host is touched):
    # PostgreSQL's own parser rejects the candidate.
    rc, out = playbook("--tags", "postgresql_config", "-e", json.dumps({"postgresql_config": {"log_min_messages": "lots"}}))
    assert rc != 0
    assert 'PostgreSQL rejects the rendered postgresql.conf' in out, out[-3000:]
    assert 'invalid value for parameter "log_min_messages": "lots"' in out, out[-3000:]
    assert sha256(host, conf) == before
    assert psql(host, "app_rw", "SELECT 1").rc == 0
    # Put the candidate back in step with the live file for later runs.
    rc, out = playbook("--tags", "postgresql_config")
    assert rc == 0 and "changed=1" in out, out[-3000:]


# --------------------------------------------------------------------------
# Restart-safe configuration: a value PostgreSQL only rejects when it starts
# never leaves the server down, and a plain converge heals a broken host.
# --------------------------------------------------------------------------

def serves_on(host, port=PORT):
    """The app role connects over TCP with its password on this port."""
    url = f"postgresql://app_rw@127.0.0.1:{port}/app"
    return host.run("PGPASSWORD=%s psql %s -X -tAc 'SELECT 1'", PASSWORDS["app_rw"], url).rc == 0


def live_files(host):
    return sha256(host, f"{conf_dir(host)}/postgresql.conf"), sha256(host, f"{conf_dir(host)}/pg_hba.conf")


def test_known_good_configuration_is_kept_beside_the_live_one(host):
    conf = conf_dir(host)
    assert sha256(host, f"{conf}/postgresql.conf.good") == sha256(host, f"{conf}/postgresql.conf")
    assert sha256(host, f"{conf}/pg_hba.conf.good") == sha256(host, f"{conf}/pg_hba.conf")
    record = json.loads(host.file(f"{conf}/ansible-settings.good.json").content_string)
    assert record["postgresql_port"] == PORT
    assert host.file(f"{conf}/ansible-settings.good.json").mode == 0o600
    assert "Secret" not in host.file(f"{conf}/ansible-settings.good.json").content_string


def test_allocation_failure_at_restart_puts_the_known_good_config_back(host, playbook):
    # huge_pages = on passes PostgreSQL's parser but needs a restart, and the
    # restart fails when the kernel has no huge pages reserved.
    assert host.file("/proc/sys/vm/nr_hugepages").content_string.strip() == "0", \
        "this check needs a host without reserved huge pages"
    before = live_files(host)
    pid = superuser(host, "SELECT pg_postmaster_start_time()", db="postgres")
    rc, out = playbook("-e", json.dumps({"postgresql_config": {"huge_pages": "on"}}))
    print(out[out.find("postgresql: the server did not come up"):][:1500])
    assert rc != 0, out[-3000:]
    assert "Settings changed since the last configuration it ran with: postgresql_config.huge_pages" in out, out[-4000:]
    assert "could not map anonymous shared memory" in out, out[-4000:]
    assert "The previous postgresql.conf and pg_hba.conf are back and the server runs with them on port 9991" in out
    assert live_files(host) == before
    assert serves_on(host)
    assert superuser(host, "SHOW huge_pages") == "try"
    assert superuser(host, "SELECT pg_postmaster_start_time()", db="postgres") != pid  # it really restarted
    rc, out = playbook()
    assert rc == 0 and "changed=0" in out, out[-3000:]


def test_bind_failure_at_restart_puts_the_known_good_config_back(host, playbook):
    # Another process holds the new port on every address PostgreSQL would bind.
    busy = 9995
    listener = ("import socket, time\n"
                "socks = []\n"
                "for family, addr in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):\n"
                "    try:\n"
                "        s = socket.socket(family); s.bind((addr, %d)); s.listen(); socks.append(s)\n"
                "    except OSError:\n"
                "        pass\n"
                "time.sleep(600)\n" % busy)
    host.check_output("systemd-run --unit=busy-port --collect python3 -c %s", listener)
    try:
        assert host.run("for i in $(seq 30); do ss -Hltn | grep -q ':%s ' && exit 0; sleep 0.2; done; exit 1",
                        str(busy)).rc == 0
        before = live_files(host)
        rc, out = playbook("-e", f"postgresql_port={busy}")
        print(out[out.find("postgresql: the server did not come up"):][:1500])
        assert rc != 0, out[-3000:]
        assert "Settings changed since the last configuration it ran with: postgresql_port" in out, out[-4000:]
        assert "Address already in use" in out, out[-4000:]
        assert live_files(host) == before
        assert serves_on(host, PORT)
        assert superuser(host, "SHOW port") == str(PORT)
    finally:
        host.run("systemctl stop busy-port")
    rc, out = playbook()
    assert rc == 0 and "changed=0" in out, out[-3000:]


def test_server_kept_down_by_a_broken_live_file_is_healed_by_a_plain_converge(host, playbook):
    conf = conf_dir(host)
    service = "postgresql@%s-main" % conf.split("/")[3]
    host.check_output("echo 'huge_pages = on' >> %s/postgresql.conf", conf)
    assert host.run("systemctl restart %s", service).rc != 0
    assert host.run("pg_isready -h /var/run/postgresql -p %s", str(PORT)).rc != 0, "the server should be down"
    rc, out = playbook()
    assert rc == 0, out[-3000:]
    assert serves_on(host)
    assert sha256(host, f"{conf}/postgresql.conf") == sha256(host, f"{conf}/postgresql.conf.good")
    assert "huge_pages" not in host.file(f"{conf}/postgresql.conf").content_string


def test_memory_larger_than_the_host_fails_before_anything_changes(host, playbook):
    before = live_files(host)
    rc, out = playbook("-e", json.dumps({"postgresql_config": {"shared_buffers": "100TB"}}))
    assert rc != 0
    assert "postgresql_config.shared_buffers: shared_buffers 100TB is" in out, out[-3000:]
    assert "changed=0" in out
    assert live_files(host) == before


def test_listen_address_not_on_the_host_fails_before_anything_changes(host, playbook):
    before = live_files(host)
    rc, out = playbook("-e", "postgresql_listen_addresses=localhost,10.99.99.99")
    assert rc != 0
    assert "postgresql_listen_addresses: 10.99.99.99 is not an address of this host" in out, out[-3000:]
    assert "changed=0" in out
    assert live_files(host) == before
    assert serves_on(host)
