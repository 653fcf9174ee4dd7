"""Unit tests for filter_plugins/settings.py (restart-safe configuration)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "filter_plugins"))

from settings import AnsibleFilterError, changed_settings, known_good_differs, secret_digest, secrets_redacted  # noqa: E402


def test_names_only_the_changed_variables():
    old = {"postgresql_port": 9991, "postgresql_listen_addresses": "localhost", "postgresql_max_connections": 100}
    new = {"postgresql_port": 9992, "postgresql_listen_addresses": "localhost", "postgresql_max_connections": 100}
    assert changed_settings(old, new) == ["postgresql_port"]


def test_nested_mappings_name_the_key_inside():
    old = {"postgresql_config": {"work_mem": "4MB"}, "postgresql_port": 1}
    new = {"postgresql_config": {"work_mem": "4MB", "huge_pages": "on"}, "postgresql_port": 1}
    assert changed_settings(old, new) == ["postgresql_config.huge_pages"]
    assert changed_settings(old, new, depth=1) == ["postgresql_config"]


def test_added_and_removed_names_count_as_changed():
    assert changed_settings({"a": 1, "b": 2}, {"b": 2, "c": 3}) == ["a", "c"]


def test_no_known_good_record_reports_everything():
    assert changed_settings(None, {"b": 1, "a": 2}) == ["a", "b"]
    assert changed_settings("", {"a": 1}) == ["a"]


def test_equal_values_of_different_container_types_are_unchanged():
    assert changed_settings({"ports": (8001, 8002)}, {"ports": [8001, 8002]}) == []


def test_bad_input_raises():
    with pytest.raises(AnsibleFilterError, match="expects two mappings"):
        changed_settings(["a"], {"a": 1})


def test_secret_digest_is_stable_and_hides_the_value():
    digest = secret_digest("hunter2")
    assert digest == secret_digest("hunter2") and digest != secret_digest("hunter3")
    assert "hunter2" not in digest and digest.startswith("sha256:")


# ---------------------------------------------------------------- live files vs known-good copies

FILES = [
    {"name": "Caddyfile", "live": "/etc/caddy/Caddyfile", "good": "/etc/caddy/Caddyfile.good"},
    {"name": "drop-in", "live": "/etc/d/10.conf", "good": "/etc/caddy/known-good/10.conf"},
    {"name": "environment file", "live": "/etc/caddy/caddy.env", "good": "/etc/caddy/known-good/caddy.env"},
]


def test_changed_files_compares_live_and_good_checksums():
    out = ["aaa  /etc/caddy/Caddyfile", "bbb  /etc/d/10.conf", "ccc  /etc/caddy/caddy.env",
           "aaa  /etc/caddy/Caddyfile.good", "xxx  /etc/caddy/known-good/10.conf", "ccc  /etc/caddy/known-good/caddy.env"]
    assert known_good_differs(out, FILES) == ["drop-in"]
    assert known_good_differs("\n".join(out), FILES) == ["drop-in"]


def test_changed_files_missing_copies_or_live_files_differ():
    # No known-good copies yet (sha256sum reported only the live files).
    out = ["aaa  /etc/caddy/Caddyfile", "bbb  /etc/d/10.conf", "ccc  /etc/caddy/caddy.env"]
    assert known_good_differs(out, FILES) == ["Caddyfile", "drop-in", "environment file"]
    # Neither exists: still a difference, never "equal because both missing".
    assert known_good_differs([], FILES[:1]) == ["Caddyfile"]


def test_changed_files_bad_input():
    with pytest.raises(AnsibleFilterError, match="needs name, live and good"):
        known_good_differs([], [{"name": "x"}])
    with pytest.raises(AnsibleFilterError, match="expects a list"):
        known_good_differs([], {"name": "x"})
    with pytest.raises(AnsibleFilterError, match="expects sha256sum output"):
        known_good_differs(42, FILES)


def test_redacted_caddy_sites_keep_no_password_hash_but_tell_a_change():
    bcrypt = "$2a$14$" + "A" * 53
    sites = [{"address": "example.test", "routes": [
        {"path": "/status/*", "basic_auth": {"status": bcrypt}, "reverse_proxy": {"to": ["127.0.0.1:9090"]}},
        {"path": "/*", "reverse_proxy": {"to": ["127.0.0.1:8001"]}}]}]
    redacted = secrets_redacted(sites, "basic_auth")
    text = json.dumps(redacted)
    assert bcrypt not in text and bcrypt[:20] not in text
    assert redacted[0]["routes"][0]["basic_auth"] == {"status": secret_digest(bcrypt)}
    assert sites[0]["routes"][0]["basic_auth"]["status"] == bcrypt  # the input is left alone
    other = json.loads(json.dumps(sites))
    other[0]["routes"][0]["basic_auth"]["status"] = bcrypt[:-1] + "x"
    assert secrets_redacted(other, "basic_auth") != redacted
    assert redacted[0]["routes"][1] == sites[0]["routes"][1]
    assert secrets_redacted("plain", "basic_auth") == "plain"
