"""What the board computes from history rows: versions, host health, alerts, strips, trends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airlock.core.board import (
    HealthRow,
    HostChange,
    check_strips,
    host_health,
    host_version,
    latest_per_check,
    open_alerts,
    served_version,
    status_value,
    trend,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def row(
    check: str, target: str, status: str, minutes_ago: int, value: float | None = None, message: str = ""
):
    return HealthRow(NOW - timedelta(minutes=minutes_ago), check, target, status, value, message, "run")


@pytest.mark.parametrize(
    ("message", "version"),
    [
        pytest.param("healthy in 12 ms, version 1.2.0", "1.2.0", id="healthy"),
        pytest.param(
            "GET http://h/health answered 503 (draining), version 2.0.0-rc.1", "2.0.0-rc.1", id="503"
        ),
        pytest.param("healthy in 12 ms, version unknown", None, id="unknown"),
        pytest.param("GET http://h/health got no answer: refused", None, id="no-answer"),
    ],
)
def test_the_served_version_is_read_from_the_app_checks_message(message, version):
    assert served_version(message) == version


def test_the_newer_of_health_and_audit_says_which_version_a_host_serves():
    latest = latest_per_check([row("app", "web-1", "ok", 5, message="healthy in 3 ms, version 1.0.0")])
    released = [HostChange("1.1.0", frozenset({"web-1", "web-2"}), NOW - timedelta(minutes=1))]
    assert host_version("web-1", latest, released)["version"] == "1.1.0"
    older = [HostChange("0.9.0", frozenset({"web-1"}), NOW - timedelta(hours=1))]
    assert host_version("web-1", latest, older) == {
        "version": "1.0.0",
        "since": (NOW - timedelta(minutes=5)).isoformat(),
        "source": "health",
    }
    assert host_version("web-3", latest, released) is None


def test_a_host_is_as_healthy_as_its_worst_latest_check():
    latest = latest_per_check(
        [
            row("app", "web-1", "critical", 10),
            row("app", "web-1", "ok", 1),  # newer: the app recovered
            row("disk", "web-1:/", "warn", 2),
            row("disk", "web-10:/", "critical", 2),  # another host
        ]
    )
    health = host_health("web-1", latest)
    assert (health["status"], health["checks"]) == ("warn", ["disk (web-1:/)"])
    assert host_health("web-2", latest) is None


def test_open_alerts_are_the_failing_latest_results_worst_first():
    latest = latest_per_check(
        [row("disk", "web-1:/", "warn", 1), row("app", "web-2", "critical", 1), row("app", "web-1", "ok", 1)]
    )
    assert [(a["check"], a["status"]) for a in open_alerts(latest)] == [("app", "critical"), ("disk", "warn")]


def test_a_strip_holds_the_last_statuses_oldest_first():
    rows = [row("disk", "web-1:/", "ok" if m % 2 else "warn", m, value=float(m)) for m in range(30, 0, -1)]
    [strip] = check_strips(rows, length=4)
    assert strip["strip"] == ["warn", "ok", "warn", "ok"]  # 4, 3, 2 and 1 minutes ago
    assert strip["values"] == [4.0, 3.0, 2.0, 1.0]
    assert strip["trend"] == "falling"


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([10, 20, 30], "rising", id="rising"),
        pytest.param([30, 20, 10], "falling", id="falling"),
        pytest.param([50, 50.5, 50, 50.4], "steady", id="steady"),
        pytest.param([0, 0, 0], "steady", id="zeros"),
        pytest.param([1, 2], "unknown", id="too-few"),
    ],
)
def test_trend(values, expected):
    assert trend(values) == expected


def test_prometheus_gets_a_number_per_status_and_none_for_skipped():
    assert [status_value(s) for s in ("ok", "warn", "critical", "skipped")] == [0, 1, 2, None]
