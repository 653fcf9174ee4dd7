"""Unit tests for filter_plugins/postgresql.py."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "filter_plugins"))

from ansible.errors import AnsibleFilterError  # noqa: E402

import postgresql as pg  # noqa: E402


# ---------------------------------------------------------------- pg_hba

GOOD = [
    {"type": "local", "database": "all", "user": "all", "method": "peer"},
    {"type": "host", "database": "app", "user": ["app_rw", "app_ro"], "address": "10.0.0.0/24",
     "method": "scram-sha-256", "comment": "app servers"},
    {"type": "hostssl", "database": "app,reports", "user": "+readers", "address": "::1",
     "method": "scram-sha-256", "options": {"clientcert": "verify-full"}},
    {"type": "host", "database": "replication", "user": "replicator", "address": "db2.example.com",
     "method": "scram-sha-256"},
    {"type": "host", "database": "all", "user": "all", "address": "samenet", "method": "reject"},
]


def test_validate_normalises_good_entries():
    rules = pg.hba_validate(GOOD)
    assert rules[1]["user"] == "app_rw,app_ro"
    assert rules[1]["comment"] == "app servers"
    assert rules[2]["address"] == "::1/128"
    assert rules[2]["options"] == "clientcert=verify-full"
    assert rules[3]["address"] == "db2.example.com"
    assert rules[0]["address"] == ""


def test_render_puts_postgres_peer_first_and_aligns_columns():
    text = pg.hba_render(GOOD)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines[0].split() == ["local", "all", "postgres", "peer"]
    assert lines[2].split() == ["host", "app", "app_rw,app_ro", "10.0.0.0/24", "scram-sha-256"]
    assert "# app servers" in text
    assert text.endswith("\n")
    assert len(lines) == len(GOOD) + 1


def test_empty_list_renders_only_the_superuser_line():
    assert pg.hba_render([]).strip().splitlines()[-1].split() == ["local", "all", "postgres", "peer"]
    assert pg.hba_validate(None) == []


@pytest.mark.parametrize("entry, message", [
    ({"type": "hots", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "md5"}, "'type'"),
    ({"type": "host", "database": "all", "user": "all", "address": "10.0.0.300/8", "method": "md5"}, "not a valid IP"),
    ({"type": "host", "database": "all", "user": "all", "address": "10.0.0.1/8", "method": "md5"}, "host bits set"),
    ({"type": "host", "database": "all", "user": "all", "address": "10.0.0.0/33", "method": "md5"}, "10.0.0.0/33"),
    ({"type": "host", "database": "all", "user": "all", "method": "md5"}, "'address' is required"),
    ({"type": "host", "database": "all", "user": "all", "address": "bad host!", "method": "md5"}, "neither"),
    ({"type": "host", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "scram"}, "'method'"),
    ({"type": "host", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "trust"}, "refused"),
    ({"type": "host", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "password"}, "refused"),
    ({"type": "hostssl", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "trust"}, "refused"),
    ({"type": "hostnossl", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "trust"}, "refused"),
    ({"type": "hostssl", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "password"}, "refused"),
    ({"type": "local", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "peer"}, "must be empty"),
    ({"type": "local", "database": "all", "user": "all", "method": "ident"}, "use 'peer'"),
    ({"type": "host", "user": "all", "address": "10.0.0.0/8", "method": "md5"}, "'database' is required"),
    ({"type": "host", "database": "a b", "user": "all", "address": "10.0.0.0/8", "method": "md5"}, "invalid name"),
    ({"type": "host", "database": "", "user": "all", "address": "10.0.0.0/8", "method": "md5"}, "empty"),
    ({"type": "host", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "md5", "port": 1}, "unknown key"),
    ({"type": "host", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "md5",
      "options": {"bad key": "x"}}, "invalid key"),
    ({"type": "host", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "md5",
      "options": "a # b"}, "single line"),
    ({"type": "host", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "md5",
      "comment": "two\nlines"}, "single line"),
    ("host all all", "must be a mapping"),
])
def test_bad_entries_are_refused_with_index_and_reason(entry, message):
    with pytest.raises(AnsibleFilterError) as err:
        pg.hba_validate([GOOD[0], entry])
    assert "postgresql_hba_entries[1]" in str(err.value)
    assert message in str(err.value)


def test_insecure_methods_allowed_only_with_opt_in():
    entry = {"type": "host", "database": "all", "user": "all", "address": "127.0.0.1/32", "method": "trust"}
    assert pg.hba_validate([entry], allow_insecure=True)[0]["method"] == "trust"
    # trust on a local (socket) line is not a network line
    assert pg.hba_validate([{"type": "local", "database": "all", "user": "all", "method": "trust"}])


def test_not_a_list_is_refused():
    with pytest.raises(AnsibleFilterError, match="must be a list"):
        pg.hba_validate({"type": "local"})
    with pytest.raises(AnsibleFilterError, match="must be a list"):
        pg.hba_validate("local all all peer")


def test_option_values_with_spaces_are_quoted():
    entry = {"type": "host", "database": "all", "user": "all", "address": "10.0.0.0/8", "method": "ldap",
             "options": {"ldapserver": "ldap.example.com", "ldapprefix": "cn=", "ldapsuffix": ", dc=example, dc=com"}}
    assert pg.hba_validate([entry])[0]["options"] == \
        'ldapserver=ldap.example.com ldapprefix=cn= ldapsuffix=", dc=example, dc=com"'


# ---------------------------------------------------------------- memory

def test_memory_tuning_quarter_and_three_quarters():
    tuned = pg.memory_tuning(4096, 100)
    assert tuned["shared_buffers"] == "1024MB"
    assert tuned["effective_cache_size"] == "3072MB"
    assert tuned["maintenance_work_mem"] == "256MB"
    assert tuned["work_mem"] == "10MB"


def test_memory_tuning_clamps():
    small = pg.memory_tuning(512, 500)
    assert small["work_mem"] == "4MB"
    assert small["maintenance_work_mem"] == "64MB"
    big = pg.memory_tuning(262144, 10)
    assert big["shared_buffers"] == "16384MB"
    assert big["maintenance_work_mem"] == "2048MB"
    assert big["work_mem"] == "64MB"


def test_memory_tuning_accepts_strings_from_facts():
    assert pg.memory_tuning("2048", "50")["shared_buffers"] == "512MB"


@pytest.mark.parametrize("total, conns, message", [
    ("lots", 100, "must be integers"), (100, 100, "at least 256"), (4096, 0, "must be positive"),
])
def test_memory_tuning_rejects_bad_input(total, conns, message):
    with pytest.raises(AnsibleFilterError, match=message):
        pg.memory_tuning(total, conns)


# ---------------------------------------------------------------- URLs

def test_url_basic():
    assert pg.connection_url("app", "secret", "127.0.0.1", 9991, "app") == "postgresql://app:secret@127.0.0.1:9991/app"


def test_url_percent_encodes_user_password_and_database():
    url = pg.connection_url("us@r:x", "p@ss:w/rd%#?& é", "db.internal", 5432, "my db")
    assert url == "postgresql://us%40r%3Ax:p%40ss%3Aw%2Frd%25%23%3F%26%20%C3%A9@db.internal:5432/my%20db"


@pytest.mark.parametrize("driver", ["postgresql+asyncpg", "postgresql+psycopg", "postgresql+psycopg2"])
def test_url_driver_variants(driver):
    assert pg.connection_url("a", "b", "h", 1, "d", driver=driver).startswith(driver + "://a:b@h:1/d")


def test_url_ipv6_socket_params_and_no_password():
    assert pg.connection_url("a", None, "::1", 5432, "d") == "postgresql://a@[::1]:5432/d"
    assert pg.connection_url("a", "", "/var/run/postgresql", 9991, "d") == \
        "postgresql://a@:9991/d?host=/var/run/postgresql"
    assert pg.connection_url("a", "b", "h", 5432, "d", params={"sslmode": "require"}) == \
        "postgresql://a:b@h:5432/d?sslmode=require"


def test_url_round_trips_through_a_parser():
    from urllib.parse import unquote, urlsplit
    password = "p@ss:w/rd%#?&"
    parts = urlsplit(pg.connection_url("app", password, "127.0.0.1", 9991, "app"))
    assert unquote(parts.password) == password
    assert parts.port == 9991


@pytest.mark.parametrize("kwargs, message", [
    ({"user": "a", "driver": "mysql"}, "driver"),
    ({"user": ""}, "user"),
    ({"user": "a", "port": "x"}, "not a number"),
    ({"user": "a", "port": 70000}, "out of range"),
])
def test_url_rejects_bad_input(kwargs, message):
    with pytest.raises(AnsibleFilterError, match=message):
        pg.connection_url(**kwargs)


def test_filter_module_exports():
    names = pg.FilterModule().filters()
    assert {"postgresql_hba_validate", "postgresql_hba_render", "postgresql_memory_tuning", "postgresql_url"} <= set(names)


# --------------------------------------------------------------------------
# listen_addresses and memory: checked before the host is touched
# --------------------------------------------------------------------------

HOST = ["10.0.0.21", "203.0.113.21", "fe80::1%eth0"]


@pytest.mark.parametrize("value, expected", [
    ("localhost", "localhost"),
    ("*", "*"),
    ("localhost, 10.0.0.21", "localhost,10.0.0.21"),
    (["127.0.0.1", "::1"], "127.0.0.1,::1"),
    ("127.0.0.2", "127.0.0.2"),  # all of 127/8 is bindable on Linux
    ("db.internal", "db.internal"),  # host names: form only
])
def test_listen_addresses_accepted(value, expected):
    assert pg.listen_addresses_check(value, HOST) == expected


@pytest.mark.parametrize("value, message", [
    ("localhost,10.99.99.99", r"postgresql_listen_addresses: 10\.99\.99\.99 is not an address of this host"),
    ("localhost,,10.0.0.21", "has an empty entry"),
    ("local host", "is neither"),
    ("10.0.0.300", "is neither"),
    (5432, "must be a comma-separated string or a list"),
])
def test_listen_addresses_refused_naming_the_variable(value, message):
    with pytest.raises(AnsibleFilterError, match=message):
        pg.listen_addresses_check(value, HOST)


def test_listen_addresses_without_host_facts_checks_form_only():
    assert pg.listen_addresses_check("10.99.99.99", None) == "10.99.99.99"


@pytest.mark.parametrize("value, unit, mb", [
    ("256MB", 8, 256), ("8GB", 8, 8192), ("1024kB", 8, 1), (16384, 8, 128), ("4096", 8, 32), (2048, 1, 2),
])
def test_memory_sizes(value, unit, mb):
    assert pg.memory_to_mb(value, unit) == mb


def test_memory_check_accepts_the_tuned_settings():
    config = pg.memory_tuning(8192)
    assert pg.memory_check(config, 8192, 8192, {}) is config


def test_memory_sized_from_more_ram_than_the_host_has_is_refused():
    with pytest.raises(AnsibleFilterError, match=r"postgresql_memory_mb: 65536 MiB is more than this host's 8000 MiB"):
        pg.memory_check(pg.memory_tuning(65536), 8000, 65536, {})


def test_shared_buffers_override_larger_than_the_host_is_refused_naming_it():
    config = {**pg.memory_tuning(8000), "shared_buffers": "64GB"}
    with pytest.raises(AnsibleFilterError, match=r"postgresql_config\.shared_buffers: shared_buffers 64GB is 819% "):
        pg.memory_check(config, 8000, 8000, {"shared_buffers": "64GB"})


def test_bad_memory_value_names_the_variable():
    with pytest.raises(AnsibleFilterError, match=r"postgresql_config\.shared_buffers: 'lots' is not a memory size"):
        pg.memory_check({"shared_buffers": "lots"}, 8000, 8000, {"shared_buffers": "lots"})


# ---------------------------------------------------------------- TLS names

def test_tls_sans_tell_addresses_from_names_and_drop_repeats():
    assert pg.tls_sans(["db1", "10.0.0.5", "::1", "LocalHost", "localhost", "127.0.0.1"]) == [
        "DNS:db1", "IP:10.0.0.5", "IP:::1", "DNS:localhost", "IP:127.0.0.1"]
    with pytest.raises(AnsibleFilterError, match="postgresql_tls_names: 'bad name!' is neither"):
        pg.tls_sans(["bad name!"])
    with pytest.raises(AnsibleFilterError, match="postgresql_tls_names: expects a non-empty list"):
        pg.tls_sans([])


def test_tls_sans_match_reads_openssl_output_in_any_order_and_ip_form():
    names = ["db1", "10.0.0.5", "::1", "localhost"]
    line = "IP Address:0:0:0:0:0:0:0:1, DNS:localhost, IP Address:10.0.0.5, DNS:DB1"
    assert pg.tls_sans_match(line, names)
    # A missing or an extra name, and no certificate at all, mean a new one.
    assert not pg.tls_sans_match("DNS:db1, DNS:localhost, IP Address:10.0.0.5", names)
    assert not pg.tls_sans_match(line + ", DNS:other", names)
    assert not pg.tls_sans_match("", names)
    assert not pg.tls_sans_match("email:x@example.org", ["db1"])
