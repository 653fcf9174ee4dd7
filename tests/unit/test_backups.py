"""Unit tests for filter_plugins/backups.py (retention, set names, compression)."""

import datetime as dt
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "filter_plugins"))

import pytest  # noqa: E402
from ansible.errors import AnsibleFilterError  # noqa: E402

import backups  # noqa: E402  pylint: disable=wrong-import-position


def names_every(start: dt.datetime, step: dt.timedelta, count: int) -> list[str]:
    return [backups.set_name(start - i * step) for i in range(count)]


# ---------------------------------------------------------------- set names

def test_set_name_round_trip_and_utc():
    aware = dt.datetime(2025, 3, 10, 3, 30, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert backups.set_name(aware) == "20250310T023000Z"
    assert backups.parse_set_name("20250310T023000Z") == dt.datetime(2025, 3, 10, 2, 30)


@pytest.mark.parametrize("bad", ["", "2025-03-10", "20250310T0230Z", "20251310T023000Z", None, 20250310])
def test_parse_set_name_rejects(bad):
    with pytest.raises(AnsibleFilterError, match="backup set"):
        backups.parse_set_name(bad)


# ---------------------------------------------------------------- policy

def test_policy_defaults_missing_keys_to_zero():
    assert backups.retention_policy({"daily": 7}) == {"daily": 7, "weekly": 0, "monthly": 0}


@pytest.mark.parametrize("policy, match", [
    ([], "must be a mapping"),
    ({"daily": -1}, r"backups_retention\.daily"),
    ({"daily": "7"}, r"backups_retention\.daily"),
    ({"daily": True}, r"backups_retention\.daily"),
    ({"yearly": 1}, "unknown key"),
    ({"daily": 0, "weekly": 0, "monthly": 0}, "at least one"),
])
def test_policy_rejects(policy, match):
    with pytest.raises(AnsibleFilterError, match=match):
        backups.retention_policy(policy)


# ---------------------------------------------------------------- retention

def test_daily_keeps_newest_per_day_for_n_days():
    # Two sets a day for ten days.
    names = names_every(dt.datetime(2025, 3, 10, 14), dt.timedelta(hours=12), 20)
    keep = backups.retention_keep(names, {"daily": 3})
    assert keep == ["20250310T140000Z", "20250309T140000Z", "20250308T140000Z"]
    assert set(backups.retention_prune(names, {"daily": 3})) == set(names) - set(keep)


def test_gfs_combination_matches_hand_computed_set():
    names = [
        "20250310T020000Z",  # Mon, ISO week 11 -> daily, weekly, monthly
        "20250309T020000Z",  # Sun, week 10 -> daily, weekly
        "20250309T010000Z",  # older the same day -> pruned
        "20250308T020000Z",  # Sat, week 10 -> daily
        "20250302T020000Z",  # Sun, week 9 -> weekly (3rd week)
        "20250215T020000Z",  # February -> monthly
        "20250110T020000Z",  # January -> monthly (3rd month)
        "20241201T020000Z",  # December: beyond every count -> pruned
    ]
    keep = backups.retention_keep(names, {"daily": 3, "weekly": 3, "monthly": 3})
    assert keep == ["20250310T020000Z", "20250309T020000Z", "20250308T020000Z",
                    "20250302T020000Z", "20250215T020000Z", "20250110T020000Z"]
    assert backups.retention_prune(names, {"daily": 3, "weekly": 3, "monthly": 3}) == [
        "20241201T020000Z", "20250309T010000Z"]


def test_weekly_uses_iso_weeks_across_new_year():
    # 2024-12-30 (Mon) and 2025-01-05 (Sun) share ISO week 2025-W01.
    names = ["20250105T000000Z", "20241230T000000Z", "20241229T000000Z"]
    assert backups.retention_keep(names, {"weekly": 2}) == ["20250105T000000Z", "20241229T000000Z"]


def test_periods_count_buckets_with_backups_not_calendar_days():
    # A pause of months: the last daily sets are still kept, not aged out.
    names = ["20250601T000000Z", "20250101T000000Z", "20241231T000000Z", "20241230T000000Z"]
    assert backups.retention_keep(names, {"daily": 3}) == names[:3]


def test_newest_always_kept_even_when_only_monthly():
    names = ["20250310T020000Z", "20250310T010000Z"]
    assert backups.retention_keep(names, {"monthly": 1}) == ["20250310T020000Z"]
    assert backups.retention_keep(["20250310T020000Z"], {"daily": 1}) == ["20250310T020000Z"]


def test_unsorted_input_and_duplicates():
    names = ["20250308T020000Z", "20250310T020000Z", "20250309T020000Z", "20250310T020000Z"]
    assert backups.retention_keep(names, {"daily": 2}) == ["20250310T020000Z", "20250309T020000Z"]
    assert backups.retention_prune(names, {"daily": 2}) == ["20250308T020000Z"]


def test_empty_list():
    assert not backups.retention_keep([], {"daily": 1})
    assert not backups.retention_prune([], {"daily": 1})


def test_foreign_name_is_an_error_not_a_deletion():
    with pytest.raises(AnsibleFilterError, match="not a backup set name"):
        backups.retention_prune(["20250310T020000Z", "lost+found"], {"daily": 1})


# ---------------------------------------------------------------- compression

@pytest.mark.parametrize("method, level, version, expected", [
    ("auto", None, 15, ["--compress=6"]),
    ("auto", None, "17", ["--compress=zstd:3"]),
    ("auto", 9, 16, ["--compress=zstd:9"]),
    ("gzip", 4, 15, ["--compress=4"]),
    ("gzip", None, 17, ["--compress=gzip:6"]),
    ("zstd", 19, 17, ["--compress=zstd:19"]),
    ("none", None, 15, ["--compress=0"]),
])
def test_compression_args(method, level, version, expected):
    assert backups.compression_args(method, level, version) == expected


@pytest.mark.parametrize("method, level, version, match", [
    ("zstd", None, 15, "needs pg_dump 16"),
    ("lz4", None, 17, "is not one of"),
    ("gzip", 10, 15, "backups_compression_level"),
    ("zstd", 0, 17, "backups_compression_level"),
    ("gzip", "x", 15, "backups_compression_level"),
    ("auto", None, "fifteen", "not a number"),
])
def test_compression_args_rejects(method, level, version, match):
    with pytest.raises(AnsibleFilterError, match=match):
        backups.compression_args(method, level, version)


def test_filter_module_maps_functions():
    filters = backups.FilterModule().filters()
    assert filters["backups_retention_keep"] is backups.retention_keep
    assert filters["backups_compression_args"] is backups.compression_args
