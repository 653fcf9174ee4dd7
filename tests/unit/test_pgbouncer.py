"""Unit tests for filter_plugins/pgbouncer.py and the pgbouncer role's scripts."""

import base64
import hashlib
import hmac
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "filter_plugins"))

from pgbouncer import (  # noqa: E402
    AnsibleFilterError, cidrs_check, databases_check, listen_address_check, pool_budget, scram_secret,
    scram_secret_with_salt, userlist, version_at_least)


def load_script(path: Path, name: str):
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


# ------------------------------------------------------------------ SCRAM

# RFC 7677's SCRAM-SHA-256 exchange (user "user", password "pencil").
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_AUTH_MESSAGE = (b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
                    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
                    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
RFC_PROOF = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
RFC_SERVER_SIGNATURE = base64.b64decode("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")


def test_the_secret_verifies_rfc_7677s_exchange_as_a_server_would():
    secret = scram_secret_with_salt("pencil", RFC_SALT, 4096)
    head, keys = secret.split("$", 1)[1].split("$")
    assert head == "4096:" + base64.b64encode(RFC_SALT).decode()
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    # The server checks the client's proof against StoredKey ...
    signature = hmac.new(stored_key, RFC_AUTH_MESSAGE, hashlib.sha256).digest()
    client_key = bytes(a ^ b for a, b in zip(RFC_PROOF, signature))
    assert hashlib.sha256(client_key).digest() == stored_key
    # ... and proves itself with ServerKey.
    assert hmac.new(server_key, RFC_AUTH_MESSAGE, hashlib.sha256).digest() == RFC_SERVER_SIGNATURE


def test_the_secret_is_the_same_on_every_run_and_differs_per_role_and_seed():
    one = scram_secret("s3cret", "app", "demo")
    assert one == scram_secret("s3cret", "app", "demo")
    assert one.startswith("SCRAM-SHA-256$4096:")
    assert one != scram_secret("s3cret", "readonly", "demo")
    assert one != scram_secret("s3cret", "app", "other")
    assert one != scram_secret("s3cret2", "app", "demo")
    # The salt does not depend on the password (no shortcut around PBKDF2).
    salt = lambda secret: secret.split("$")[1].split(":")[1]  # noqa: E731
    assert salt(one) == salt(scram_secret("s3cret2", "app", "demo"))


def test_a_secret_passes_through_unchanged():
    secret = scram_secret("pw", "app", "demo")
    assert scram_secret(secret, "app", "demo") == secret


@pytest.mark.parametrize("password, user, message", [
    ("", "app", "the password of app must be a non-empty string"),
    (None, "app", "the password of app"),
    ("pw", "", "the role name must be a non-empty string"),
])
def test_bad_scram_input(password, user, message):
    with pytest.raises(AnsibleFilterError, match=message):
        scram_secret(password, user, "demo")


def test_userlist_holds_secrets_only():
    secret = scram_secret("pw", "app", "demo")
    assert userlist([{"name": "app", "secret": secret}]) == f'"app" "{secret}"\n'
    assert userlist([]) == ""
    with pytest.raises(AnsibleFilterError, match=r"pgbouncer_auth_users\[0\].secret: the secret of app must be a SCRAM"):
        userlist([{"name": "app", "secret": "pw"}])
    with pytest.raises(AnsibleFilterError, match=r"\[1\].name: app is listed twice"):
        userlist([{"name": "app", "secret": secret}, {"name": "app", "secret": secret}])
    with pytest.raises(AnsibleFilterError, match=r"\[0\].name: 'a b' is not a role name"):
        userlist([{"name": "a b", "secret": secret}])


# ------------------------------------------------------------ the other checks

def test_databases_are_checked_and_named():
    assert databases_check([{"name": "demo", "host": "10.0.0.5", "port": "9991", "dbname": "demo"},
                            {"name": "demo_session", "host": "10.0.0.5", "port": 9991, "dbname": "demo",
                             "pool_mode": "session"}]) == [
        {"name": "demo", "host": "10.0.0.5", "port": 9991, "dbname": "demo", "pool_mode": ""},
        {"name": "demo_session", "host": "10.0.0.5", "port": 9991, "dbname": "demo", "pool_mode": "session"}]
    for entry, message in (
            ({"name": "pgbouncer", "host": "h", "port": 1}, r"\[0\].name: 'pgbouncer' is not a database name"),
            ({"name": "d", "host": "h x", "port": 1}, r"\[0\].host"),
            ({"name": "d", "host": "h", "port": 70000}, r"\[0\].port: 70000 is outside"),
            ({"name": "d", "host": "h", "port": 1, "pool_mode": "transactions"}, r"\[0\].pool_mode: 'transactions'")):
        with pytest.raises(AnsibleFilterError, match=message):
            databases_check([entry])
    with pytest.raises(AnsibleFilterError, match="listed twice"):
        databases_check([{"name": "d", "host": "h", "port": 1}, {"name": "d", "host": "h", "port": 2}])


@pytest.mark.parametrize("address, ok", [
    ("127.0.0.1", True), ("::1", True), ("10.1.2.3", True), ("192.168.0.9", True), ("fd00::1", True),
    ("203.0.113.7", False), ("8.8.8.8", False), ("0.0.0.0", False), ("100.64.0.1", False), ("db.example", False)])
def test_the_pooler_listens_on_loopback_or_private_addresses_only(address, ok):
    if ok:
        assert listen_address_check(address)
    else:
        with pytest.raises(AnsibleFilterError, match="pgbouncer_listen_address"):
            listen_address_check(address)


def test_client_addresses_become_networks():
    assert cidrs_check(["127.0.0.1", "10.0.0.0/8", "::1"]) == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    with pytest.raises(AnsibleFilterError, match=r"pgbouncer_client_addresses\[1\]: 'nowhere'"):
        cidrs_check(["127.0.0.1", "nowhere"])
    with pytest.raises(AnsibleFilterError, match="non-empty list"):
        cidrs_check([])


@pytest.mark.parametrize("version, wanted, expected", [
    ("1.18.0-1+deb12u1", "1.21", False), ("1.24.1-1+deb13u2", "1.21", True), ("1:1.21.0-1", "1.21", True),
    ("1.21", "1.21", True), ("", "1.21", False), ("garbage", "1.0", False)])
def test_version_comparison(version, wanted, expected):
    assert version_at_least(version, wanted) is expected


def test_the_pools_must_fit_the_server():
    assert pool_budget(100, 20, {"app1": 40, "app2": 40}) == 0
    assert pool_budget("100", "20", {"app1": 30}) == 50
    with pytest.raises(AnsibleFilterError) as err:
        pool_budget(100, 20, {"app1": 50, "app2": 40})
    assert "pgbouncer_max_db_connections: the pools of the app hosts (app1: 50, app2: 40) add up to 90" in str(err.value)
    assert "leaves room for 80" in str(err.value)
    with pytest.raises(AnsibleFilterError, match="app1: 0 must be at least 1"):
        pool_budget(100, 20, {"app1": 0})


# ------------------------------------------------------------------ the scripts

CHECK = load_script(REPO / "roles" / "pgbouncer" / "files" / "pgbouncer-check", "pgbouncer_check")
CTL = load_script(REPO / "roles" / "pgbouncer" / "files" / "pgbouncer-ctl", "pgbouncer_ctl")


def test_the_check_copy_listens_on_a_private_socket_only():
    text = ("[databases]\ndemo = host=10.0.0.5 port=9991 dbname=demo\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
            "listen_port = 6432\nunix_socket_dir = /run/postgresql\nlogfile = /var/log/x.log\npool_mode = transaction\n")
    out = CHECK.rewrite(text, "/tmp/check-dir")
    section = out.split("[pgbouncer]")[1]
    assert "listen_addr = \n" in section and "127.0.0.1" not in section
    assert "unix_socket_dir = /tmp/check-dir" in section and "/run/postgresql" not in section
    assert "logfile = \n" in section and "pidfile = \n" in section
    assert "listen_port = 6432" in section and "pool_mode = transaction" in section
    assert "demo = host=10.0.0.5 port=9991 dbname=demo" in out.split("[pgbouncer]")[0]


class FakeConsole:
    def __init__(self, rows):
        self.rows = rows

    def table(self, what):
        assert what == "DATABASES"
        return self.rows


def test_ctl_pauses_the_databases_that_release_their_connections(tmp_path):
    console = FakeConsole([{"name": "demo", "pool_mode": ""}, {"name": "demo_session", "pool_mode": "session"},
                           {"name": "pgbouncer", "pool_mode": "statement"}])
    assert CTL.pooled_databases(console, "transaction") == ["demo"]
    assert CTL.pooled_databases(console, "session") == []
    ini = tmp_path / "pgbouncer.ini"
    ini.write_text("[databases]\nlisten_port = 1\n[pgbouncer]\nlisten_port = 6543\n; unix_socket_dir = /x\n"
                   "unix_socket_dir = /run/pg\n")
    assert CTL.settings(str(ini)) == {"listen_port": "6543", "unix_socket_dir": "/run/pg"}
