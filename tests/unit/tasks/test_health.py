"""The tasks of ``health_<env>`` without services: Slack texts (one message per run), backup age
from a real backup store, collection of the check tasks' results. Alerting against real
PostgreSQL, Redis and Slack receivers is in ``tests/integration/test_health_alerts.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from airlock.config.environment import AlertAfter
from airlock.core.backups import BackupManifest
from airlock.core.health import AlertRules, AlertState, CheckResult, Silence, Status, decide
from airlock.tasks.health import (
    check_airflow,
    check_backup,
    collect_results,
    compose_message,
    render_notification,
)
from tests.support import demo_document, write_environment

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
FOUR_HOURS = timedelta(hours=4)
AT_ONCE = AlertRules(FOUR_HOURS, AlertAfter(critical=1, warn=1), resolve_after=1)


def result(status: Status, message: str = "disk used 91.0%") -> CheckResult:
    return CheckResult("disk", "web-1:/", status, 91.0, "warn 80%, critical 90%", message, 3.0)


def state(status: Status, since: datetime, notified_at: datetime | None = None) -> AlertState:
    return AlertState(status, since.isoformat(), (notified_at or since).isoformat())


@pytest.fixture
def backups(tmp_path):
    return tmp_path / "backups"


@pytest.fixture
def environment(tmp_path, backups):
    document = demo_document()
    document["backup"]["destination"] = f"file://{backups}"
    return write_environment(tmp_path / "demo.yaml", document)


def test_recovery_sends_one_resolved_message_with_how_long_it_lasted(environment):
    _, resolved = decide(
        result(Status.OK, "disk used 40.0%"),
        state(Status.CRITICAL, NOW),
        NOW + timedelta(minutes=95),
        AT_ONCE,
    )
    later = NOW + timedelta(minutes=95)

    text = compose_message(
        environment,
        {resolved.result.key: ("health_resolved", render_notification(environment, resolved, later))},
        {},
        [],
        [],
        later,
    )

    assert text == (
        ":white_check_mark: *demo*: health: 1 resolved\n*Resolved*\n"
        "• disk on web-1:/ is ok again (was critical for 1 h 35 min): disk used 40.0%\n"
        "What to do: health_demo docs, one section per check."
    )


def test_an_alert_names_the_check_target_value_and_threshold(environment):
    _, alert = decide(result(Status.CRITICAL), None, NOW, AT_ONCE)

    text = render_notification(environment, alert, NOW)

    assert text.startswith("disk on web-1:/ is CRITICAL (was ok): disk used 91.0%")
    assert "(threshold: warn 80%, critical 90%)" in text


def test_one_message_groups_new_problems_still_failing_and_resolved_and_names_active_silences(environment):
    lines = {
        ("app", "web-2"): ("health_alert", "app on web-2 is CRITICAL (was ok): no answer"),
        ("disk", "web-1:/"): ("health_reminder", "disk on web-1:/ is still WARN after 4 h: 85%"),
        ("load", "web-3"): ("health_resolved", "load on web-3 is ok again (was warn for 10 min): 0.2"),
    }
    silence = Silence(7, "db_*", "*", NOW - timedelta(hours=1), NOW + timedelta(hours=1), "vacuum", "alice")
    muted = [(decide(result(Status.CRITICAL), None, NOW, AT_ONCE)[1], silence)]

    text = compose_message(environment, lines, {}, [silence], muted, NOW)

    assert text.splitlines() == [
        ":rotating_light: *demo*: health: 1 new, 1 still failing, 1 resolved",
        "*New problems*",
        "• app on web-2 is CRITICAL (was ok): no answer",
        "*Still failing*",
        "• disk on web-1:/ is still WARN after 4 h: 85%",
        "*Resolved*",
        "• load on web-3 is ok again (was warn for 10 min): 0.2",
        ":no_bell: Silence #7 db_* on * until 2026-11-26 13:00 UTC by alice: vacuum (muted 1 in this run)",
        "What to do: health_demo docs, one section per check.",
    ]


def publish_backup(backups, name: str, finished_at: datetime, *, verified: bool) -> None:
    """A backup as the backup DAG leaves it: its directory with the manifest written last."""
    manifest = BackupManifest(
        name=name,
        environment="demo",
        kind="scheduled",
        database="app",
        server_version="16",
        pg_dump_version="pg_dump 16",
        format="custom",
        compression=6,
        started_at=finished_at - timedelta(minutes=1),
        finished_at=finished_at,
        files={},
        row_counts={},
        verified_at=finished_at + timedelta(minutes=1) if verified else None,
    )
    (backups / name).mkdir(parents=True)
    (backups / name / "manifest.json").write_text(manifest.to_json())


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        pytest.param(timedelta(minutes=30), Status.OK, id="fresh"),
        pytest.param(timedelta(hours=3), Status.CRITICAL, id="older-than-max-age"),
    ],
)
def test_backup_age_is_the_newest_verified_backups_in_the_store(environment, backups, age, expected):
    publish_backup(backups, "demo-20261126T040000Z", NOW - timedelta(hours=8), verified=True)
    publish_backup(backups, "demo-20261126T113000Z", NOW - age, verified=True)
    publish_backup(backups, "demo-20261126T115500Z", NOW - timedelta(minutes=5), verified=False)

    [checked] = check_backup(environment, now=NOW)

    assert checked.status is expected
    assert checked.threshold == "critical above 2.0 h"
    assert checked.message == (
        f"newest verified backup demo-20261126T113000Z is {age.total_seconds() / 3600:.1f} h old"
    )


def test_a_store_without_verified_backups_is_critical(environment, backups):
    publish_backup(backups, "demo-20261126T115500Z", NOW - timedelta(minutes=5), verified=False)

    [checked] = check_backup(environment, now=NOW)

    assert (checked.status, checked.message) == (Status.CRITICAL, "no verified backup found")


def test_backups_and_airflow_checks_are_skipped_not_ok_when_not_configured(tmp_path):
    document = demo_document()
    del document["backup"]
    del document["health"]["airflow_api_url"]
    environment = write_environment(tmp_path / "demo.yaml", document)

    [backup] = check_backup(environment)
    [airflow] = check_airflow(environment)

    assert (backup.status, backup.message) == (
        Status.SKIPPED,
        "not configured: the environment has no backup section",
    )
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


@pytest.fixture
def api_answering_503():
    """A local HTTP server whose every GET answers 503 Service Unavailable."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Unavailable(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_error(503)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=5)


def test_an_airflow_api_answering_an_error_is_one_critical_result(environment, api_answering_503):
    configured = environment.model_copy(
        update={"health": environment.health.model_copy(update={"airflow_api_url": api_answering_503})}
    )

    [checked] = check_airflow(configured)

    assert (checked.check, checked.target, checked.status) == ("airflow", "api-server", Status.CRITICAL)
    assert checked.message == (
        f"GET {api_answering_503}/api/v2/monitor/health failed: HTTP Error 503: Service Unavailable"
    )
