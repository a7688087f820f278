"""Backup manifests, names, row-count comparison, freshness and retention (``airlock.core.backups``).

Retention is checked against an oracle written here from the documented rule (newest verified
backup of each of the last N UTC hours, days, ISO weeks and months), with its own period
definitions, so a wrong bucket in the code fails the property test.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.config import BackupRetention
from airlock.core.backups import (
    BackupError,
    BackupFile,
    BackupManifest,
    BackupVerificationError,
    backup_name,
    backup_settings,
    compare_row_counts,
    plan_retention,
    require_fresh,
)
from tests.support import demo_document, write_environment

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def backup(finished_at: datetime, *, verified: bool = True, kind: str = "scheduled") -> BackupManifest:
    return BackupManifest(
        name=f"demo-{finished_at.astimezone(UTC):%Y%m%dT%H%M%SZ}" + ("" if kind in REGULAR else f"-{kind}"),
        environment="demo",
        kind=kind,
        database="app",
        server_version="15",
        pg_dump_version="pg_dump 15",
        format="custom",
        compression=6,
        started_at=finished_at - timedelta(minutes=1),
        finished_at=finished_at,
        files={},
        row_counts={},
        verified_at=finished_at + timedelta(minutes=1) if verified else None,
    )


# -- the retention oracle: the rule as the runbook states it, nothing taken from the code ---------

REGULAR = ("scheduled", "manual")
SAFETY = ("pre-release", "pre-restore")
# Period -> how two backups fall into the same one: the same UTC hour, day, ISO week or month.
BUCKET_FORMATS = {"hourly": "%Y-%m-%d %H", "daily": "%Y-%m-%d", "weekly": "%G-W%V", "monthly": "%Y-%m"}


def limit_of(retention: BackupRetention, period: str) -> int:
    return {
        "hourly": retention.hourly,
        "daily": retention.daily,
        "weekly": retention.weekly,
        "monthly": retention.monthly,
    }[period]


def expected_keep(backups: list[BackupManifest], retention: BackupRetention) -> set[str]:
    """The rule, written independently: per period, the newest verified of the N newest buckets."""
    regular = [b for b in backups if b.kind in REGULAR]
    verified = sorted((b for b in regular if b.verified), key=lambda b: b.finished_at)
    keep = {verified[-1].name} if verified else set()
    for period, bucket_format in BUCKET_FORMATS.items():
        newest_per_bucket: dict[str, BackupManifest] = {}
        for candidate in verified:  # ascending: the newest of a bucket is written last and wins
            newest_per_bucket[candidate.finished_at.astimezone(UTC).strftime(bucket_format)] = candidate
        buckets = sorted(newest_per_bucket, reverse=True)[: limit_of(retention, period)]
        keep |= {newest_per_bucket[bucket].name for bucket in buckets}
    if verified:
        keep |= {b.name for b in regular if not b.verified and b.finished_at > verified[-1].finished_at}
    else:
        keep |= {b.name for b in regular}
    keep |= {b.name for b in backups if b.kind in SAFETY and NOW - b.finished_at <= retention.safety}
    return keep


histories = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=400 * 24 * 60),  # minutes before NOW: up to 400 days
        st.booleans(),
        st.sampled_from(["scheduled", "scheduled", "scheduled", "manual", "pre-release", "pre-restore"]),
        # finished_at as a worker may write it: buckets are UTC whatever the offset
        st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]),
    ),
    max_size=60,
    unique_by=lambda item: item[0],
)
retentions = st.builds(
    BackupRetention,
    hourly=st.integers(0, 6),
    daily=st.integers(0, 10),
    weekly=st.integers(0, 6),
    monthly=st.integers(0, 14),
    safety=st.integers(1, 30).map(lambda days: timedelta(days=days)),
)


@settings(max_examples=300, deadline=None)
@given(history=histories, retention=retentions)
def test_retention_keeps_exactly_the_newest_verified_backup_of_each_recent_period(history, retention):
    backups = [
        backup((NOW - timedelta(minutes=m)).astimezone(zone), verified=v, kind=k) for m, v, k, zone in history
    ]

    plan = plan_retention(backups, retention, NOW)

    assert set(plan.keep) == expected_keep(backups, retention)
    assert set(plan.keep) | set(plan.remove) == {b.name for b in backups}
    assert not set(plan.keep) & set(plan.remove)
    verified = [b for b in backups if b.verified and b.kind in REGULAR]
    if verified:
        assert max(verified, key=lambda b: b.finished_at).name in plan.keep


def test_daily_retention_keeps_one_backup_per_day_for_the_last_n_days():
    backups = [backup(NOW - timedelta(hours=hours)) for hours in range(0, 24 * 10, 6)]

    plan = plan_retention(backups, BackupRetention(hourly=0, daily=3, weekly=0, monthly=0), NOW)

    kept = sorted(plan.keep)
    assert kept == ["demo-20261124T180000Z", "demo-20261125T180000Z", "demo-20261126T120000Z"]


def test_weekly_retention_counts_iso_weeks_that_start_on_monday():
    sunday, monday, tuesday = (datetime(2026, 11, day, 12, tzinfo=UTC) for day in (22, 23, 24))
    backups = [backup(sunday - timedelta(days=1)), backup(sunday), backup(monday), backup(tuesday)]

    plan = plan_retention(backups, BackupRetention(hourly=0, daily=0, weekly=2, monthly=0), tuesday)

    assert sorted(plan.keep) == ["demo-20261122T120000Z", "demo-20261124T120000Z"]
    assert plan.remove == ["demo-20261121T120000Z", "demo-20261123T120000Z"]


def test_monthly_retention_buckets_by_utc_month_even_for_times_written_with_an_offset():
    east = timezone(timedelta(hours=3))
    last_of_october = datetime(2026, 10, 31, 22, 30, tzinfo=UTC).astimezone(east)  # 1 November locally
    backups = [backup(datetime(2026, 10, 1, tzinfo=UTC)), backup(last_of_october), backup(NOW)]

    plan = plan_retention(backups, BackupRetention(hourly=0, daily=0, weekly=0, monthly=2), NOW)

    assert sorted(plan.keep) == ["demo-20261031T223000Z", "demo-20261126T120000Z"]
    assert plan.keep["demo-20261031T223000Z"] == "newest verified of its month"


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"hourly": 2}, "newest verified of its hour"),
        ({"daily": 2}, "newest verified of its day"),
        ({"weekly": 2}, "newest verified of its week"),
        ({"monthly": 2}, "newest verified of its month"),
    ],
)
def test_a_kept_backup_says_which_period_keeps_it(limits, reason):
    older = backup(NOW - timedelta(days=40))
    plan = plan_retention(
        [older, backup(NOW)],
        BackupRetention(**{"hourly": 0, "daily": 0, "weekly": 0, "monthly": 0, **limits}),
        NOW,
    )

    assert plan.keep[older.name] == reason


def test_the_newest_verified_backup_stays_even_when_every_limit_is_zero():
    backups = [backup(NOW - timedelta(days=40)), backup(NOW - timedelta(days=30), verified=False)]

    plan = plan_retention(backups, BackupRetention(hourly=0, daily=0, weekly=0, monthly=0), NOW)

    assert set(plan.keep) == {"demo-20261017T120000Z", "demo-20261027T120000Z"}
    assert plan.keep["demo-20261017T120000Z"] == "newest verified backup"
    assert plan.remove == []


@pytest.mark.parametrize(
    ("age", "kept"),
    [pytest.param(timedelta(days=6), True, id="young"), pytest.param(timedelta(days=8), False, id="old")],
)
def test_safety_backups_are_kept_for_the_safety_period_only(age, kept):
    safety = backup(NOW - age, verified=False, kind="pre-release")

    plan = plan_retention([backup(NOW), safety], BackupRetention(safety=timedelta(days=7)), NOW)

    assert (safety.name in plan.keep) is kept


# -- manifests and names --------------------------------------------------------------------------


def test_a_manifest_survives_its_json_file_and_states_its_total_size():
    manifest = BackupManifest(
        name="demo-20261126T120000Z",
        environment="demo",
        kind="manual",
        database="app",
        server_version="16.4",
        pg_dump_version="pg_dump (PostgreSQL) 16.4",
        format="directory",
        compression=6,
        started_at=NOW - timedelta(minutes=2),
        finished_at=NOW,
        files={"dump/toc.dat": BackupFile("a" * 64, 100), "dump/3001.dat.gz": BackupFile("b" * 64, 23)},
        row_counts={"public.customers": 5000, "public.orders": 0},
        run_id="manual__1",
        verified_at=NOW + timedelta(minutes=3),
        verified_by="scheduled__2",
    )

    text = manifest.to_json()

    assert json.loads(text)["bytes"] == 123
    assert json.loads(text)["finished_at"] == "2026-11-26T12:00:00+00:00"
    assert BackupManifest.from_json(text) == manifest
    assert manifest.dump_path == "dump"
    assert manifest.summary() == {
        "name": "demo-20261126T120000Z",
        "kind": "manual",
        "finished_at": "2026-11-26T12:00:00+00:00",
        "bytes": 123,
        "tables": 2,
        "rows": 5000,
        "verified_at": "2026-11-26T12:03:00+00:00",
    }


def test_an_unverified_custom_format_manifest_says_so_and_names_its_dump_file():
    manifest = backup(NOW, verified=False)

    assert BackupManifest.from_json(manifest.to_json()).verified is False
    assert manifest.dump_path == "database.dump"
    assert manifest.summary()["verified_at"] is None


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        pytest.param("scheduled", "demo-20261126T093000Z", id="scheduled"),
        pytest.param("manual", "demo-20261126T093000Z", id="manual"),
        pytest.param("pre-release", "demo-20261126T093000Z-pre-release", id="pre-release"),
        pytest.param("pre-restore", "demo-20261126T093000Z-pre-restore", id="pre-restore"),
    ],
)
def test_a_backup_is_named_by_its_utc_time_and_safety_backups_by_their_kind(kind, name):
    moment = datetime(2026, 11, 26, 11, 30, tzinfo=timezone(timedelta(hours=2)))

    assert backup_name("demo", moment, kind) == name


def test_an_environment_without_a_backup_section_says_where_to_add_one(tmp_path):
    document = demo_document()
    del document["backup"]
    document["ssh"]["known_hosts"] = str(tmp_path / "known_hosts")
    environment = write_environment(tmp_path / "nobackup.yaml", document)

    with pytest.raises(BackupError, match="Environment nobackup has no backup section: add one"):
        backup_settings(environment)


# -- verification and freshness -------------------------------------------------------------------


def test_equal_row_counts_verify():
    manifest = replace_counts(backup(NOW), {"public.a": 3, "public.b": 0})

    compare_row_counts(manifest, {"public.b": 0, "public.a": 3})


def test_differing_row_counts_name_every_table_and_side():
    manifest = replace_counts(backup(NOW), {"public.a": 3, "public.gone": 1})

    with pytest.raises(BackupVerificationError) as raised:
        compare_row_counts(manifest, {"public.a": 2, "public.new": 7})

    assert str(raised.value) == (
        "Backup demo-20261126T120000Z restored with different row counts: "
        "public.a: 3 in the backup, 2 restored; public.gone: 1 in the backup, absent restored; "
        "public.new: absent in the backup, 7 restored"
    )


def test_a_row_count_report_names_at_most_twenty_tables():
    manifest = replace_counts(backup(NOW), {f"public.t{n:02}": 1 for n in range(30)})

    with pytest.raises(BackupVerificationError) as raised:
        compare_row_counts(manifest, {})

    assert re.findall(r"public\.t\d\d", str(raised.value)) == [f"public.t{n:02}" for n in range(20)]


def test_a_fresh_backup_passes_the_release_preflight():
    newest = backup(NOW - timedelta(hours=1))

    assert require_fresh("demo", newest, timedelta(hours=2), NOW) is newest


def test_a_missing_backup_fails_the_release_preflight_and_says_what_to_run():
    with pytest.raises(BackupError, match=r"^demo has no verified backup: run backup_demo before releasing$"):
        require_fresh("demo", None, timedelta(hours=2), NOW)


def test_a_stale_backup_fails_the_release_preflight_naming_it_and_both_ages():
    newest = backup(NOW - timedelta(hours=3))

    with pytest.raises(BackupError) as raised:
        require_fresh("demo", newest, timedelta(hours=2), NOW)

    assert str(raised.value) == (
        "The newest verified backup of demo (demo-20261126T090000Z) is 3.0 h old, "
        "older than backup.max_age (2.0 h): run backup_demo first"
    )


def replace_counts(manifest: BackupManifest, counts: dict[str, int]) -> BackupManifest:
    return replace(manifest, row_counts=counts)
