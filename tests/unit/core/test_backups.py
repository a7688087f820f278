"""Backup retention: exactly the right backups stay, for any history of backups (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.config import BackupRetention
from airlock.tasks.backup import PERIODS, BackupManifest, plan_retention

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def backup(finished_at: datetime, *, verified: bool = True, kind: str = "scheduled") -> BackupManifest:
    return BackupManifest(
        name=f"demo-{finished_at:%Y%m%dT%H%M%SZ}" + ("" if kind == "scheduled" else f"-{kind}"),
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


histories = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=400 * 24 * 60),  # minutes before NOW: up to 400 days
        st.booleans(),
        st.sampled_from(["scheduled", "scheduled", "scheduled", "pre-release", "pre-restore"]),
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


def expected_keep(backups: list[BackupManifest], retention: BackupRetention) -> set[str]:
    """The rule, written independently: per period, the newest verified of the N newest buckets."""
    regular = [b for b in backups if b.kind == "scheduled"]
    verified = sorted((b for b in regular if b.verified), key=lambda b: b.finished_at)
    keep = {verified[-1].name} if verified else set()
    for period, bucket_of in PERIODS.items():
        newest_per_bucket: dict[tuple, BackupManifest] = {}
        for candidate in verified:
            newest_per_bucket[bucket_of(candidate.finished_at)] = candidate  # ascending: newest wins
        buckets = sorted(newest_per_bucket, reverse=True)[: getattr(retention, period)]
        keep |= {newest_per_bucket[bucket].name for bucket in buckets}
    if verified:
        keep |= {b.name for b in regular if not b.verified and b.finished_at > verified[-1].finished_at}
    else:
        keep |= {b.name for b in regular}
    keep |= {b.name for b in backups if b.kind != "scheduled" and NOW - b.finished_at <= retention.safety}
    return keep


@settings(max_examples=300, deadline=None)
@given(history=histories, retention=retentions)
def test_retention_keeps_exactly_the_newest_verified_backup_of_each_recent_period(history, retention):
    backups = [backup(NOW - timedelta(minutes=m), verified=v, kind=k) for m, v, k in history]

    plan = plan_retention(backups, retention, NOW)

    assert set(plan.keep) == expected_keep(backups, retention)
    assert set(plan.keep) | set(plan.remove) == {b.name for b in backups}
    assert not set(plan.keep) & set(plan.remove)
    verified = [b for b in backups if b.verified and b.kind == "scheduled"]
    if verified:
        assert max(verified, key=lambda b: b.finished_at).name in plan.keep


def test_daily_retention_keeps_one_backup_per_day_for_the_last_n_days():
    backups = [backup(NOW - timedelta(hours=hours)) for hours in range(0, 24 * 10, 6)]

    plan = plan_retention(backups, BackupRetention(hourly=0, daily=3, weekly=0, monthly=0), NOW)

    kept = sorted(plan.keep)
    assert kept == ["demo-20261124T180000Z", "demo-20261125T180000Z", "demo-20261126T120000Z"]


def test_the_newest_verified_backup_stays_even_when_every_limit_is_zero():
    backups = [backup(NOW - timedelta(days=40)), backup(NOW - timedelta(days=30), verified=False)]

    plan = plan_retention(backups, BackupRetention(hourly=0, daily=0, weekly=0, monthly=0), NOW)

    assert set(plan.keep) == {"demo-20261017T120000Z", "demo-20261027T120000Z"}
    assert plan.remove == []


@pytest.mark.parametrize(
    ("age", "kept"),
    [pytest.param(timedelta(days=6), True, id="young"), pytest.param(timedelta(days=8), False, id="old")],
)
def test_safety_backups_are_kept_for_the_safety_period_only(age, kept):
    safety = backup(NOW - age, verified=False, kind="pre-release")

    plan = plan_retention([backup(NOW), safety], BackupRetention(safety=timedelta(days=7)), NOW)

    assert (safety.name in plan.keep) is kept
