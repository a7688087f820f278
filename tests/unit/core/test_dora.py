"""The DORA figures from audit rows: what counts as a deployment, a failure, a recovery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airlock.core.dora import AuditedRun, dora_report

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def run(result: str, hours_ago: float, *, action: str = "release", committed_hours_ago: float | None = None):
    return AuditedRun(
        action=action,
        version="1.0.0",
        result=result,
        finished_at=NOW - timedelta(hours=hours_ago),
        committed_at=None if committed_hours_ago is None else NOW - timedelta(hours=committed_hours_ago),
    )


def test_only_runs_that_switched_hosts_are_deployments():
    runs = [
        run("succeeded", 10),
        run("rolled_back", 9),
        run("rollback_incomplete", 8),
        run("failed", 7),  # stopped before any host
        run("rejected", 6),
        run("planned", 5),
        run("succeeded", 4, action="rollback"),  # a recovery, not a deployment
    ]
    report = dora_report(runs, days=2, now=NOW)
    assert (report.deployments, report.succeeded, report.failed) == (3, 1, 2)
    assert report.deployments_per_day == pytest.approx(0.5)
    assert report.change_failure_rate == pytest.approx(2 / 3)


def test_runs_outside_the_window_do_not_count():
    report = dora_report([run("succeeded", 24 * 8), run("succeeded", 1)], days=7, now=NOW)
    assert report.deployments == 1


def test_lead_time_is_the_median_from_commit_to_release_and_unknown_without_commits():
    with_commits = [
        run("succeeded", 1, committed_hours_ago=3),
        run("succeeded", 2, committed_hours_ago=3),
        run("succeeded", 3, committed_hours_ago=13),
        run("succeeded", 4),
    ]
    report = dora_report(with_commits, days=1, now=NOW)
    assert report.lead_time == timedelta(hours=2)
    assert report.lead_time_samples == 3
    unknown = dora_report([run("succeeded", 1)], days=1, now=NOW)
    assert unknown.lead_time is None
    assert unknown.to_dict()["lead_time"] == {"seconds": None, "samples": 0, "text": "unknown"}


def test_recovery_lasts_until_the_next_succeeded_release_or_rollback():
    runs = [
        run("rolled_back", 10),
        run("failed", 9),  # no host switched: not a recovery
        run("succeeded", 7),  # recovers the first failure after 3 h
        run("rollback_incomplete", 5),
        run("succeeded", 4, action="rollback"),  # recovers it after 1 h
        run("rolled_back", 2),  # not recovered yet
    ]
    report = dora_report(runs, days=1, now=NOW)
    assert report.recovery_time == timedelta(hours=2)
    assert (report.recovered, report.unrecovered) == (2, 1)
    assert report.to_dict()["recovery_time"]["text"] == "2 h"


def test_no_deployment_means_an_unknown_failure_rate_not_zero():
    report = dora_report([run("rejected", 1)], days=30, now=NOW)
    assert report.change_failure_rate is None
    assert report.to_dict()["change_failure_rate"]["text"] == "unknown"
    assert report.deployments_per_day == 0


def test_a_window_of_no_days_is_refused():
    with pytest.raises(ValueError, match="days must be at least 1"):
        dora_report([], days=0, now=NOW)
