"""Health grading and alert decisions without services: thresholds, parsing, each probe's
grading, the alert rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airlock.config import HealthSettings, Thresholds
from airlock.config.environment import AlertAfter
from airlock.core.health import (
    AlertRules,
    AlertState,
    CheckResult,
    Status,
    airflow_results,
    app_result,
    backup_age_result,
    database_results,
    decide,
    duration_text,
    failing_summary,
    grade,
    notification_fields,
    parse_df,
    parse_meminfo,
    redis_memory_result,
    replication_result,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
FOUR_HOURS = timedelta(hours=4)
#: The rules without hysteresis: every change is announced on the run that sees it.
AT_ONCE = AlertRules(FOUR_HOURS, AlertAfter(critical=1, warn=1), resolve_after=1)


def result(status: Status, message: str = "disk used 91.0%") -> CheckResult:
    return CheckResult("disk", "web-1:/", status, 91.0, "warn 80%, critical 90%", message, 3.0)


def state(status: Status, since: datetime, notified_at: datetime | None = None) -> AlertState:
    return AlertState(status, since.isoformat(), (notified_at or since).isoformat())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(79.9, Status.OK, id="below-warn"),
        pytest.param(80, Status.WARN, id="at-warn"),
        pytest.param(90, Status.CRITICAL, id="at-critical"),
    ],
)
def test_higher_values_are_worse_when_critical_is_above_warn(value, expected):
    assert grade(value, Thresholds(warn=80, critical=90)) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(50, Status.OK, id="plenty"),
        pytest.param(15, Status.WARN, id="at-warn"),
        pytest.param(4, Status.CRITICAL, id="below-critical"),
    ],
)
def test_lower_values_are_worse_when_critical_is_below_warn(value, expected):
    assert grade(value, Thresholds(warn=15, critical=5)) is expected


def test_a_new_problem_alerts_once_and_then_stays_quiet_until_the_reminder():
    first, alert = decide(result(Status.CRITICAL), None, NOW, AT_ONCE)
    later, quiet = decide(result(Status.CRITICAL), first, NOW + timedelta(hours=3), AT_ONCE)
    reminded, reminder = decide(result(Status.CRITICAL), later, NOW + timedelta(hours=4), AT_ONCE)

    assert alert.template == "health_alert"
    assert quiet is None
    assert reminder.template == "health_reminder"
    assert reminded.since == NOW.isoformat()
    assert reminded.notified_at == (NOW + timedelta(hours=4)).isoformat()


def test_getting_worse_alerts_but_getting_better_without_recovering_does_not():
    warned = state(Status.WARN, NOW)

    critical, worse = decide(result(Status.CRITICAL), warned, NOW + timedelta(minutes=5), AT_ONCE)
    _, better = decide(result(Status.WARN), critical, NOW + timedelta(minutes=10), AT_ONCE)

    assert worse.template == "health_alert"
    assert critical.since == NOW.isoformat()
    assert better is None


def test_recovery_sends_one_resolved_message_saying_how_long_it_lasted():
    failing = state(Status.CRITICAL, NOW)
    later = NOW + timedelta(minutes=95)

    recovered, resolved = decide(result(Status.OK, "disk used 40.0%"), failing, later, AT_ONCE)
    _, again = decide(result(Status.OK), recovered, NOW + timedelta(minutes=100), AT_ONCE)

    assert recovered.status is Status.OK
    assert again is None
    assert resolved.template == "health_resolved"
    assert notification_fields("demo", resolved, later) == {
        "environment": "demo",
        "dag_id": "health_demo",
        "check": "disk",
        "target": "web-1:/",
        "status": "OK",
        "previous": "critical",
        "message": "disk used 40.0%",
        "threshold": "warn 80%, critical 90%",
        "duration": "1 h 35 min",
    }


@pytest.mark.parametrize(
    ("lasted", "text"),
    [
        pytest.param(timedelta(minutes=35, seconds=59), "35 min", id="minutes"),
        pytest.param(timedelta(hours=2), "2 h", id="whole-hours"),
        pytest.param(timedelta(hours=8, minutes=1), "8 h 1 min", id="hours-and-minutes"),
    ],
)
def test_durations_read_in_minutes_then_hours(lasted, text):
    assert duration_text(lasted) == text


def test_a_skipped_check_keeps_its_state_and_says_nothing():
    failing = state(Status.WARN, NOW)

    kept, notification = decide(
        CheckResult("airflow", "airflow", Status.SKIPPED, None, None, "not configured", 0.0),
        failing,
        NOW,
        AT_ONCE,
    )

    assert (kept, notification) == (failing, None)


def test_df_and_meminfo_output_are_read():
    df = (
        "Filesystem     1024-blocks     Used Available Capacity Mounted on\n"
        "/dev/vda         264212084 24243292  82147620      23% /\n"
    )
    meminfo = "MemTotal:  24684092 kB\nMemFree:  100 kB\nMemAvailable:  24058920 kB\nHugePages_Total:  0\n"

    assert parse_df(df) == [(264212084, 24243292, 82147620)]
    assert parse_meminfo(meminfo)["MemAvailable"] == 24058920


def test_an_app_answering_other_than_200_is_critical_with_its_reason_and_version():
    checked = app_result(
        "web-2",
        "http://127.0.0.1:8001/health",
        503,
        {"reason": "draining"},
        "1.0.0",
        12.0,
        Thresholds(warn=500, critical=2000),
    )

    assert checked.status is Status.CRITICAL
    assert checked.message == "GET http://127.0.0.1:8001/health answered 503 (draining), version 1.0.0"


def test_a_slow_app_is_graded_on_its_latency():
    checked = app_result(
        "web-1", "http://x/health", 200, None, None, 750.0, Thresholds(warn=500, critical=2000)
    )

    assert (checked.status, checked.message) == (Status.WARN, "healthy in 750 ms, version unknown")
    assert checked.threshold == "warn 500 ms, critical 2000 ms"


def test_database_statistics_grade_connections_long_queries_and_blocked_sessions():
    health = HealthSettings(long_query="60s")
    stats = (90, 100, 50 * 2**20, 1, "pid 7 for 75 s: SELECT pg_sleep(120)", 2, 61.0)

    results = {r.check: r for r in database_results("airlock_demo_db", health, stats, 4.0)}

    assert results["db_connections"].message == "90 of 100 connections used (90%)"
    assert results["db_long_queries"].status is Status.WARN
    assert results["db_long_queries"].message == (
        "1 queries running longer than 60 s: pid 7 for 75 s: SELECT pg_sleep(120)"
    )
    assert results["db_blocked"].status is Status.CRITICAL
    assert results["db_blocked"].message == "2 sessions waiting on a lock, the longest for 61 s"
    assert results["db_size"].message == "50.0 MB"


def test_sessions_blocked_for_less_than_the_long_query_limit_only_warn():
    stats = (1, 100, 0, 0, "", 1, 5.0)

    results = {r.check: r for r in database_results("db", HealthSettings(long_query="60s"), stats, 1.0)}

    assert results["db_blocked"].status is Status.WARN
    assert results["db_long_queries"].status is Status.OK


def test_replication_lag_is_critical_at_four_times_the_limit_and_when_not_a_replica():
    limit = timedelta(seconds=30)

    assert replication_result("replica", 29, limit, 1.0).status is Status.OK
    assert replication_result("replica", 30, limit, 1.0).status is Status.WARN
    assert replication_result("replica", 120, limit, 1.0).status is Status.CRITICAL
    not_replica = replication_result("replica", None, limit, 1.0)
    assert (not_replica.status, not_replica.message) == (
        Status.CRITICAL,
        "this server is not a replica (not in recovery)",
    )


def test_redis_memory_without_maxmemory_is_ok_and_with_it_is_graded():
    thresholds = Thresholds(warn=80, critical=90)

    unlimited = redis_memory_result("airlock_redis", 3 * 2**20, 0, thresholds, 1.0)
    full = redis_memory_result("airlock_redis", 95, 100, thresholds, 1.0)

    assert unlimited.status is Status.OK
    assert "no maxmemory set" in unlimited.message
    assert (full.status, full.message) == (Status.CRITICAL, "of maxmemory used 95.0%")


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        pytest.param(timedelta(minutes=30), Status.OK, id="fresh"),
        pytest.param(timedelta(hours=2), Status.OK, id="exactly-max-age"),
        pytest.param(timedelta(hours=3), Status.CRITICAL, id="older-than-max-age"),
    ],
)
def test_the_newest_backups_age_is_compared_with_max_age(age, expected):
    newest = ("demo-20261126T1130Z", NOW - age)

    checked = backup_age_result("demo", newest, timedelta(hours=2), NOW, 1.0)

    assert checked.status is expected
    assert checked.threshold == "critical above 2.0 h"
    assert (
        checked.message
        == f"newest verified backup demo-20261126T1130Z is {age.total_seconds() / 3600:.1f} h old"
    )


def test_no_verified_backup_is_critical():
    checked = backup_age_result("demo", None, timedelta(hours=2), NOW, 1.0)

    assert (checked.status, checked.message) == (Status.CRITICAL, "no verified backup found")


def test_each_airflow_component_is_ok_when_healthy_warn_when_never_run_critical_otherwise():
    payload = {
        "metadatabase": {"status": "healthy"},
        "scheduler": {
            "status": "healthy",
            "latest_scheduler_heartbeat": (NOW - timedelta(seconds=12)).isoformat(),
        },
        "dag_processor": {"status": "unhealthy", "latest_dag_processor_heartbeat": "2026-11-26T11:50:00"},
        "triggerer": {"status": None, "latest_triggerer_heartbeat": None},
    }

    results = {r.target: r for r in airflow_results(payload, NOW, 5.0)}

    assert results["metadatabase"].status is Status.OK
    assert results["scheduler"].message == "healthy, last heartbeat 12 s ago"
    assert (results["dag_processor"].status, results["dag_processor"].message) == (
        Status.CRITICAL,
        "unhealthy, last heartbeat 600 s ago",
    )
    assert (results["triggerer"].status, results["triggerer"].message) == (Status.WARN, "has never run")


def test_the_verdict_summary_names_each_check_of_a_status():
    results = [result(Status.CRITICAL), CheckResult("load", "web-2", Status.WARN, 2.0, None, "load 2.0", 1.0)]

    assert failing_summary(results) == ["disk on web-1:/: disk used 91.0%"]
    assert failing_summary(results, Status.WARN) == ["load on web-2: load 2.0"]
