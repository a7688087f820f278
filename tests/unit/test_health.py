"""Health checks without services: grading, the alert rules, parsing, backup age, collection."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from airlock.config import Thresholds
from airlock.tasks.health import (
    AlertState,
    CheckResult,
    Status,
    check_airflow,
    check_backup,
    collect_results,
    decide,
    grade,
    parse_df,
    parse_meminfo,
    render_notification,
    send_alerts,
)
from tests.support import demo_document, write_environment

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
FOUR_HOURS = timedelta(hours=4)


def result(status: Status, message: str = "disk used 91.0%") -> CheckResult:
    return CheckResult("disk", "web-1:/", status, 91.0, "warn 80%, critical 90%", message, 3.0)


def state(status: Status, since: datetime, notified_at: datetime | None = None) -> AlertState:
    return AlertState(status, since.isoformat(), (notified_at or since).isoformat())


@pytest.fixture
def environment(tmp_path):
    return write_environment(tmp_path / "demo.yaml", demo_document())


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
    first, alert = decide(result(Status.CRITICAL), None, NOW, FOUR_HOURS)
    later, quiet = decide(result(Status.CRITICAL), first, NOW + timedelta(hours=3), FOUR_HOURS)
    reminded, reminder = decide(result(Status.CRITICAL), later, NOW + timedelta(hours=4), FOUR_HOURS)

    assert alert.template == "health_alert"
    assert quiet is None
    assert reminder.template == "health_reminder"
    assert reminded.since == NOW.isoformat()
    assert reminded.notified_at == (NOW + timedelta(hours=4)).isoformat()


def test_getting_worse_alerts_but_getting_better_without_recovering_does_not():
    warned = state(Status.WARN, NOW)

    critical, worse = decide(result(Status.CRITICAL), warned, NOW + timedelta(minutes=5), FOUR_HOURS)
    _, better = decide(result(Status.WARN), critical, NOW + timedelta(minutes=10), FOUR_HOURS)

    assert worse.template == "health_alert"
    assert critical.since == NOW.isoformat()
    assert better is None


def test_recovery_sends_one_resolved_message_with_how_long_it_lasted(environment):
    failing = state(Status.CRITICAL, NOW)

    recovered, resolved = decide(
        result(Status.OK, "disk used 40.0%"), failing, NOW + timedelta(minutes=95), FOUR_HOURS
    )
    _, again = decide(result(Status.OK), recovered, NOW + timedelta(minutes=100), FOUR_HOURS)

    assert recovered.status is Status.OK
    assert again is None
    text = render_notification(environment, resolved, NOW + timedelta(minutes=95))
    assert text == (
        ":white_check_mark: *demo*: disk on web-1:/ is ok again (was critical for 1 h 35 min): "
        "disk used 40.0%."
    )


def test_a_skipped_check_keeps_its_state_and_says_nothing():
    failing = state(Status.WARN, NOW)

    kept, notification = decide(
        CheckResult("airflow", "airflow", Status.SKIPPED, None, None, "not configured", 0.0),
        failing,
        NOW,
        FOUR_HOURS,
    )

    assert (kept, notification) == (failing, None)


def test_an_alert_names_the_check_target_value_and_threshold(environment):
    _, alert = decide(result(Status.CRITICAL), None, NOW, FOUR_HOURS)

    text = render_notification(environment, alert, NOW)

    assert text.startswith(":rotating_light: *demo*: disk on web-1:/ is CRITICAL (was ok): disk used 91.0%")
    assert "(threshold: warn 80%, critical 90%)" in text
    assert "health_demo docs" in text


def test_df_and_meminfo_output_are_read():
    df = (
        "Filesystem     1024-blocks     Used Available Capacity Mounted on\n"
        "/dev/vda         264212084 24243292  82147620      23% /\n"
    )
    meminfo = "MemTotal:  24684092 kB\nMemFree:  100 kB\nMemAvailable:  24058920 kB\nHugePages_Total:  0\n"

    assert parse_df(df) == [(264212084, 24243292, 82147620)]
    assert parse_meminfo(meminfo)["MemAvailable"] == 24058920


@dataclass(frozen=True)
class FakeManifest:
    name: str
    finished_at: datetime


@pytest.fixture
def newest_backup(monkeypatch):
    """Stand-in for ``airlock.tasks.backup.newest_verified`` (its contract only)."""
    found: dict[str, FakeManifest | None] = {"manifest": None}
    module = types.ModuleType("airlock.tasks.backup")
    module.newest_verified = lambda environment: found["manifest"]
    monkeypatch.setitem(sys.modules, "airlock.tasks.backup", module)
    return found


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        pytest.param(timedelta(minutes=30), Status.OK, id="fresh"),
        pytest.param(timedelta(hours=3), Status.CRITICAL, id="older-than-max-age"),
    ],
)
def test_backup_age_is_compared_with_max_age(environment, newest_backup, age, expected):
    newest_backup["manifest"] = FakeManifest("demo-20261126T1130Z", NOW - age)

    [checked] = check_backup(environment, now=NOW)

    assert checked.status is expected
    assert checked.threshold == "critical above 2.0 h"
    assert f"demo-20261126T1130Z is {age.total_seconds() / 3600:.1f} h old" in checked.message


def test_no_verified_backup_is_critical(environment, newest_backup):
    [checked] = check_backup(environment, now=NOW)

    assert (checked.status, checked.message) == (Status.CRITICAL, "no verified backup found")


def test_backups_and_airflow_checks_are_skipped_not_ok_when_not_configured(tmp_path):
    document = demo_document()
    del document["backup"]
    del document["health"]["airflow_api_url"]
    environment = write_environment(tmp_path / "demo.yaml", document)

    [backup] = check_backup(environment)
    [airflow] = check_airflow(environment)

    assert backup.status is Status.SKIPPED
    assert airflow.status is Status.SKIPPED
    assert "health.airflow_api_url" in airflow.message


class RecordedXComs:
    """What ``ti.xcom_pull(task_ids=[...])`` answers: one value per task (and map index)."""

    def __init__(self, values: dict[str, list]) -> None:
        self.values = values

    def xcom_pull(self, task_ids):
        [task_id] = task_ids
        return self.values.get(task_id, [None])


def test_a_check_task_that_died_without_results_counts_as_critical(environment):
    app = CheckResult("app", "web-1", Status.OK, 3.0, None, "healthy", 3.0).to_dict()
    redis = CheckResult("redis_ping", "airlock_redis", Status.OK, 1.0, None, "PONG", 1.0).to_dict()
    ti = RecordedXComs({"check_host": [[app]], "check_redis": [[redis]]})

    results = collect_results(environment, ti)

    assert {(r.check, r.target) for r in results if r.status is Status.CRITICAL} == {
        ("task", "check_host[web-2]"),
        ("task", "check_host[web-3]"),
        ("task", "check_database"),
        ("task", "check_backup"),
        ("task", "check_airflow"),
    }
    assert {(r.check, r.target) for r in results if r.status is Status.OK} == {
        ("app", "web-1"),
        ("redis_ping", "airlock_redis"),
        ("task", "check_host[web-1]"),
        ("task", "check_redis"),
    }


def test_with_redis_unreachable_the_history_decides_and_alerts_still_go_out_on_change_only(environment):
    import redis

    from airlock_dev.hosts import free_port

    unreachable = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    previous = {("disk", "web-1:/"): state(Status.CRITICAL, NOW - timedelta(hours=1))}
    new_problem = CheckResult("load", "web-2", Status.WARN, 2.0, "warn 1.5, critical 3", "load 2.0", 1.0)
    delivered: list[str] = []

    sent = send_alerts(
        environment,
        [result(Status.CRITICAL), new_problem],
        run_id="scheduled__now",
        now=NOW,
        redis_client=unreachable,
        history=lambda: previous,
        deliver=lambda conn_id, text: delivered.append(text) or True,
    )

    assert sent == delivered
    [alert] = sent
    assert "load on web-2 is WARN (was ok)" in alert


class DictRedis:
    def __init__(self):
        self.values: dict[str, str] = {}

    def mget(self, keys):
        return [self.values.get(key) for key in keys]

    def set(self, key, value, ex=None):
        self.values[key] = value


def test_a_message_slack_did_not_take_is_sent_again_next_run(environment):
    store, outage, delivered = DictRedis(), [True], []

    def deliver(conn_id, text):
        if outage[0]:
            return False
        delivered.append(text)
        return True

    def run(status: Status, minutes: int) -> list[str]:
        return send_alerts(
            environment,
            [result(status)],
            run_id=f"run-{minutes}",
            now=NOW + timedelta(minutes=minutes),
            redis_client=store,
            history=dict,
            deliver=deliver,
        )

    assert run(Status.CRITICAL, 0) == []
    outage[0] = False
    [alert] = run(Status.CRITICAL, 5)
    assert "is CRITICAL (was ok)" in alert
    outage[0] = True
    assert run(Status.OK, 10) == []
    outage[0] = False
    [resolved] = run(Status.OK, 15)
    assert delivered == [alert, resolved]
    assert run(Status.OK, 20) == []
