"""Unit tests for filter_plugins/backups.py (retention, tagged sets, set names, compression)."""

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


@pytest.mark.parametrize("bad", ["", "2025-03-10", "20250310T0230Z", "20251310T023000Z", None, 20250310,
                                 "20250310T023000Z-", "20250310T023000Z-Pre", "20250310T023000Z_premigration",
                                 "20250310T023000Z-" + "a" * 32])
def test_parse_set_name_rejects(bad):
    with pytest.raises(AnsibleFilterError, match="backup set"):
        backups.parse_set_name(bad)


def test_tagged_set_name_round_trip_and_sort_order():
    when = dt.datetime(2025, 3, 10, 2, 30)
    assert backups.set_name(when, "premigration") == "20250310T023000Z-premigration"
    assert backups.split_set_name("20250310T023000Z-premigration") == (when, "premigration")
    assert backups.split_set_name("20250310T023000Z") == (when, "")
    assert backups.parse_set_name("20250310T023000Z-pre-upgrade-2") == when
    # Fixed-width times first: sorting names sorts sets by time, tagged or not.
    names = ["20250311T000000Z", "20250310T023000Z-premigration", "20250310T023001Z", "20250309T235959Z-x"]
    assert sorted(names) == sorted(names, key=backups.parse_set_name)


@pytest.mark.parametrize("tag", ["premigration", "a", "pre-upgrade-2", "a" + "b" * 30])
def test_set_tag_accepts(tag):
    assert backups.set_tag(tag) == tag


def test_set_tag_empty_is_an_ordinary_set():
    assert backups.set_tag("") == ""
    assert backups.set_name(dt.datetime(2025, 3, 10, 2, 30), "") == "20250310T023000Z"


@pytest.mark.parametrize("bad", ["Premigration", "1st", "-x", "pre_migration", "pre migration", "a" * 32,
                                 "pre/../x", None, 3])
def test_set_tag_rejects_naming_the_variable(bad):
    with pytest.raises(AnsibleFilterError, match=r"^backups_tag: .* must match \^\[a-z\]"):
        backups.set_tag(bad)
    with pytest.raises(AnsibleFilterError, match="backups_tag"):
        backups.set_name(dt.datetime(2025, 3, 10), bad or "X")


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


# ---------------------------------------------------------------- tagged sets

GFS = {"daily": 3, "weekly": 3, "monthly": 3}


def test_tagged_sets_are_not_counted_by_gfs():
    # A pre-migration set, then two ordinary runs the same day: the same-day
    # ordinary set is pruned as before, the tagged one is kept.
    names = ["20250310T020000Z", "20250310T100000Z-premigration", "20250310T110000Z", "20250310T120000Z"]
    tagged = {"premigration": 3}
    assert backups.retention_keep(names, {"daily": 1}, tagged=tagged) == [
        "20250310T120000Z", "20250310T100000Z-premigration"]
    assert backups.retention_prune(names, {"daily": 1}, tagged=tagged) == [
        "20250310T020000Z", "20250310T110000Z"]


def test_gfs_of_untagged_sets_unchanged_by_tagged_ones():
    untagged = ["20250310T020000Z", "20250309T020000Z", "20250309T010000Z", "20250308T020000Z",
                "20250302T020000Z", "20250215T020000Z", "20250110T020000Z", "20241201T020000Z"]
    # Tagged sets on days, weeks and months that would otherwise take GFS slots.
    tagged_sets = ["20250311T020000Z-premigration", "20250307T020000Z-premigration",
                   "20241115T020000Z-premigration"]
    keep = backups.retention_keep(untagged + tagged_sets, GFS, tagged={"premigration": 0})
    assert [n for n in keep if "-" not in n] == backups.retention_keep(untagged, GFS)
    # Count 0: only the newest set of all survives among them.
    assert [n for n in keep if "-" in n] == ["20250311T020000Z-premigration"]


def test_newest_sets_of_each_tag_kept_up_to_the_count():
    names = [backups.set_name(dt.datetime(2025, 3, day), "premigration") for day in range(1, 8)]
    names += [backups.set_name(dt.datetime(2025, 3, day, 12), "pre-upgrade") for day in range(1, 4)]
    names += ["20250308T020000Z"]
    keep = backups.retention_keep(names, {"daily": 7}, tagged={"premigration": 2, "pre-upgrade": 1})
    assert keep == ["20250308T020000Z", "20250307T000000Z-premigration", "20250306T000000Z-premigration",
                    "20250303T120000Z-pre-upgrade"]
    pruned = backups.retention_prune(names, {"daily": 7}, tagged={"premigration": 2, "pre-upgrade": 1})
    assert len(pruned) == 7 and pruned == sorted(pruned)


def test_tag_without_a_count_is_never_pruned():
    names = ["20250310T020000Z", "20250301T000000Z-manual", "20240101T000000Z-manual"]
    assert backups.retention_prune(names, {"daily": 1}, tagged={"premigration": 1}) == []
    assert backups.retention_prune(names, {"daily": 1}) == []


def test_newest_set_is_never_pruned_even_tagged_with_count_zero():
    names = ["20250310T020000Z", "20250310T030000Z-premigration"]
    assert backups.retention_keep(names, {"daily": 1}, tagged={"premigration": 0}) == names[::-1]
    # The next run (any) prunes it.
    names.append("20250310T040000Z")
    assert backups.retention_prune(names, {"daily": 1}, tagged={"premigration": 0}) == [
        "20250310T020000Z", "20250310T030000Z-premigration"]


def test_only_tagged_sets():
    names = ["20250310T020000Z-premigration", "20250309T020000Z-premigration"]
    assert backups.retention_keep(names, {"daily": 7}, tagged={"premigration": 1}) == names[:1]


@pytest.mark.parametrize("tagged, match", [
    ([], "must be a mapping"),
    ({"premigration": -1}, "premigration sets to keep must be a whole number"),
    ({"premigration": "3"}, "premigration sets to keep must be a whole number"),
    ({"premigration": True}, "premigration sets to keep must be a whole number"),
    ({"Pre": 1}, "is not a tag"),
])
def test_tagged_policy_rejects(tagged, match):
    with pytest.raises(AnsibleFilterError, match=match):
        backups.retention_keep(["20250310T020000Z"], {"daily": 1}, tagged=tagged)


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
    assert filters["backups_set_tag"] is backups.set_tag
    assert filters["backups_compression_args"] is backups.compression_args


# --------------------------------------------------------- point-in-time target
def _info(*stops, stanza="main"):
    return [{"name": stanza, "backup": [{"label": f"B{i}", "timestamp": {"start": stop - 10, "stop": stop}}
                                         for i, stop in enumerate(stops)]}]


T0 = 1_790_000_000  # 2026-09-21 14:13:20 UTC


def test_pitr_target_time_picks_the_newest_backup_that_ended_before_it():
    plan = backups.pitr_target(_info(T0, T0 + 3600), restore_time="2026-09-21 15:00:00+00", now=T0 + 7200)
    assert plan["type"] == "time"
    assert plan["set"] == "B0"
    assert plan["target"] == "2026-09-21 15:00:00.000000+00"
    plan = backups.pitr_target(_info(T0, T0 + 3600), restore_time="2026-09-21T17:14:00+02:00", now=T0 + 7200)
    assert plan["set"] == "B1" and plan["target"] == "2026-09-21 15:14:00.000000+00"
    assert plan["oldest_backup"] == "2026-09-21 14:13:20+00"


@pytest.mark.parametrize("value, message", [
    ("2026-09-21 16:00:00+00", "is in the future"),
    ("2026-09-21 14:00:00Z", "before the end of the oldest backup"),
    ("2026-09-21 15:00:00", "has no time zone"),
    ("yesterday", "is not a time"),
])
def test_pitr_target_refuses_bad_times_naming_the_variable(value, message):
    with pytest.raises(AnsibleFilterError, match=f"backups_restore_time: .*{message}"):
        backups.pitr_target(_info(T0), restore_time=value, now=T0 + 3600)


def test_pitr_target_point_latest_and_the_choice():
    assert backups.pitr_target(_info(T0), restore_point="before_cleanup")["type"] == "name"
    assert backups.pitr_target(_info(T0), latest=True)["type"] == "default"
    with pytest.raises(AnsibleFilterError, match="backups_restore_point"):
        backups.pitr_target(_info(T0), restore_point="drop table; --")
    with pytest.raises(AnsibleFilterError, match="exactly one of"):
        backups.pitr_target(_info(T0), restore_point="x", latest=True)
    with pytest.raises(AnsibleFilterError, match="holds no backup"):
        backups.pitr_target(_info(T0, stanza="other"), latest=True)
