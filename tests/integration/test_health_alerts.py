"""Health alerts against real PostgreSQL (the ops store), Redis and the Slack receiver.

What an operator relies on: one message per environment and run, no alert for a flapping
check, no alert lost when Slack refuses (429, 500), when Redis is stopped, when the ops database
is down, or when Redis and Slack are down together; a rate limit that says so once; silences that
mute, then expire. Time is the run's ``now`` (the alert task's clock, injected here), not sleeps.
A stopped Redis or PostgreSQL is a connection pointing at a loopback port nobody listens on (the
shared servers are never stopped).
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml

from airlock.config import load_environment
from airlock.core.health import CheckResult, Status
from airlock.hooks.ops_store import record_health_results
from airlock.tasks.health import check_database, send_alerts
from airlock_dev.hosts import free_port
from tests.support import load_dag, run_dag

START = datetime.now(UTC).replace(second=0, microsecond=0)


def at(minutes: float) -> datetime:
    return START + timedelta(minutes=minutes)


def app(host: str, status: Status) -> CheckResult:
    message = "healthy in 3 ms, version 1.0.0" if status is Status.OK else "GET /health got no answer"
    return CheckResult("app", host, status, None, "status 200", message, 1.0)


def write_alerting_environment(directory: Path, name: str, **changes) -> object:
    """The session's sandbox environment under another name, without backups, with ``changes``
    merged into its document (``health`` merged key by key)."""
    document = yaml.safe_load((Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"]) / "sandbox.yaml").read_text())
    document.pop("backup", None)
    document["health"] = {**document.get("health", {}), **changes.pop("health", {})}
    document.pop("name", None)
    document.update(changes)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_environment(path)


@pytest.fixture
def services(environment, postgres_url, redis_client, slack_messages):
    """The sandbox environment file, the session's PostgreSQL and Redis, and an emptied Slack receiver."""
    return slack_messages


@pytest.fixture
def closed_port_connections(monkeypatch):
    """``airlock_redis_stopped`` and ``airlock_ops_stopped``: Redis and PostgreSQL that refuse."""
    for conn_id, connection in (
        ("airlock_redis_stopped", {"conn_type": "redis", "host": "127.0.0.1", "port": free_port()}),
        (
            "airlock_ops_stopped",
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": free_port(),
                "login": "postgres",
                "schema": "x",
            },
        ),
    ):
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))


def alert_row(ops_url: str, environment: str, check: str, target: str) -> dict:
    with psycopg.connect(ops_url) as connection:
        row = connection.execute(
            "SELECT status, pending, attempts, state FROM airlock.health_alerts"
            " WHERE environment = %s AND check_name = %s AND target = %s",
            (environment, check, target),
        ).fetchone()
    assert row is not None, f"no alert state for {check} on {target}"
    status, pending, attempts, state = row
    return {"status": status, "pending": pending, "attempts": attempts, "state": state}


def notified(ops_url: str, run_id: str) -> dict[tuple[str, str], tuple[str, str | None]]:
    with psycopg.connect(ops_url) as connection:
        rows = connection.execute(
            "SELECT check_name, target, status, notified FROM airlock.health_checks WHERE run_id = %s",
            (run_id,),
        ).fetchall()
    return {(check, target): (status, how) for check, target, status, how in rows}


def alert_run(environment, results, minutes: float, run_id: str | None = None) -> list[str]:
    """One run of the ``alert`` step at ``START + minutes``, its history recorded first."""
    run_id = run_id or f"{environment.name}-{minutes}"
    # Where the ops database is the one down, record fails as it would in the DAG.
    with contextlib.suppress(psycopg.OperationalError):
        record_health_results(
            environment, dag_id=f"health_{environment.name}", run_id=run_id, results=results
        )
    return send_alerts(environment, results, run_id=run_id, now=at(minutes))


@pytest.mark.parametrize(
    "status", [pytest.param(429, id="rate-limited"), pytest.param(500, id="server-error")]
)
def test_a_message_slack_refuses_stays_pending_with_its_attempts_and_goes_out_with_the_next_run(
    services, postgres_url, tmp_path, status, ops_url
):
    environment = write_alerting_environment(tmp_path, f"refused-{status}")
    down = [app("web-2", Status.CRITICAL)]
    services.refuse(status)

    assert alert_run(environment, down, 0) == []
    assert alert_run(environment, down, 5) == []
    refused = [text for _, text in services.refused]
    held = alert_row(ops_url, environment.name, "app", "web-2")
    history = notified(ops_url, f"{environment.name}-5")
    services.accept()
    [delivered] = alert_run(environment, down, 10)
    after = alert_row(ops_url, environment.name, "app", "web-2")
    quiet = alert_run(environment, down, 15)

    assert len(refused) == 2
    assert all("app on web-2 is CRITICAL (was ok)" in text for text in refused)
    assert (held["status"], held["pending"], held["attempts"]) == ("critical", True, 2)
    assert history["app", "web-2"] == ("critical", "pending")
    assert "app on web-2 is CRITICAL (was ok): GET /health got no answer" in delivered
    assert f"(not delivered since {at(0):%H:%M} UTC, attempt 2)" in delivered
    assert services.texts() == [delivered]
    assert (after["pending"], after["attempts"]) == (False, 0)
    assert notified(ops_url, f"{environment.name}-10")["app", "web-2"] == ("critical", "sent")
    assert quiet == []


def test_with_redis_stopped_the_ops_store_keeps_the_state_so_an_alert_goes_out_once_and_resolves_once(
    services, postgres_url, tmp_path, closed_port_connections
):
    environment = write_alerting_environment(tmp_path, "no-redis", redis_conn_id="airlock_redis_stopped")

    sent = [
        alert_run(environment, [app("web-1", status)], minutes)
        for minutes, status in ((0, Status.CRITICAL), (5, Status.CRITICAL), (10, Status.OK), (15, Status.OK))
    ]

    assert [len(texts) for texts in sent] == [1, 0, 0, 1]
    assert "app on web-1 is CRITICAL (was ok)" in sent[0][0]
    assert "app on web-1 is ok again (was critical for 15 min)" in sent[3][0]
    assert services.texts() == [sent[0][0], sent[3][0]]


def test_with_the_ops_database_down_redis_carries_the_state_and_nothing_repeats(
    services, redis_client, tmp_path, closed_port_connections
):
    environment = write_alerting_environment(
        tmp_path,
        "no-ops",
        database={**load_environment_document()["database"], "ops_conn_id": "airlock_ops_stopped"},
    )
    down = [app("web-3", Status.CRITICAL)]

    sent = [alert_run(environment, down, minutes) for minutes in (0, 5, 10)]

    assert [len(texts) for texts in sent] == [1, 0, 0]
    cached = json.loads(redis_client.get("airlock:health:no-ops:app:web-3"))
    assert (cached["status"], cached["pending"]) == ("critical", None)


def load_environment_document() -> dict:
    return yaml.safe_load((Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"]) / "sandbox.yaml").read_text())


def test_with_redis_and_slack_down_nothing_is_lost_and_the_first_run_that_reaches_slack_sends_it(
    services, postgres_url, tmp_path, closed_port_connections, ops_url
):
    cut_off = write_alerting_environment(
        tmp_path / "down", "both-down", redis_conn_id="airlock_redis_stopped"
    )
    back = write_alerting_environment(tmp_path / "back", "both-down")
    down = [app("web-1", Status.CRITICAL), app("web-2", Status.OK)]
    services.refuse(500)

    assert alert_run(cut_off, down, 0) == []
    assert alert_run(cut_off, down, 5) == []
    services.accept()
    [delivered] = alert_run(back, down, 10)
    again = [alert_run(back, down, 15), alert_run(cut_off, down, 20)]

    assert "app on web-1 is CRITICAL (was ok)" in delivered
    assert "attempt 2)" in delivered
    assert "web-2" not in delivered
    assert services.texts() == [delivered]
    assert again == [[], []]
    assert alert_row(ops_url, "both-down", "app", "web-1")["pending"] is False


def test_a_flapping_check_with_alert_after_2_stays_silent_and_alerts_once_it_fails_twice_in_a_row(
    services, postgres_url, tmp_path
):
    environment = write_alerting_environment(tmp_path, "flapping", health={"alert_after": 2})
    flips = (Status.CRITICAL, Status.OK, Status.CRITICAL, Status.OK)

    flapping = [alert_run(environment, [app("web-1", status)], 5 * n) for n, status in enumerate(flips)]
    lasting = [alert_run(environment, [app("web-1", Status.CRITICAL)], 20 + 5 * n) for n in range(2)]

    assert flapping == [[], [], [], []]
    assert services.texts() == lasting[1]
    assert lasting[0] == []
    assert "app on web-1 is CRITICAL (was ok)" in lasting[1][0]


def test_the_rate_limit_sends_one_summary_then_holds_every_change_until_the_hour_has_room(
    services, postgres_url, tmp_path, ops_url
):
    environment = write_alerting_environment(tmp_path, "chatty", health={"max_messages_per_hour": 2})

    sent = [alert_run(environment, [app(f"web-{n}", Status.CRITICAL)], 5 * n) for n in range(4)]
    held = alert_row(ops_url, "chatty", "app", "web-3")
    [released] = alert_run(environment, [], 61)

    assert [len(texts) for texts in sent] == [1, 1, 1, 0]
    assert "reached 2 Slack messages this hour; 1 changes are held" in sent[2][0]
    assert f"from {at(60):%H:%M} UTC" in sent[2][0]
    assert (held["pending"], held["attempts"]) == (True, 0)
    assert "app on web-2 is CRITICAL" in released
    assert "app on web-3 is CRITICAL" in released
    assert len(services.texts()) == 4


@pytest.fixture
def crowd(sandbox, services, monkeypatch):
    """``crowd``: 12 hosts whose SSH and app ports nobody listens on, in the DAGs' folder."""
    directory = Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"])
    document = load_environment_document()
    document.pop("backup", None)
    document["hosts"] = [
        {
            "name": f"web-{n}",
            "address": "127.0.0.1",
            "ssh_port": free_port(),
            "app_url": f"http://127.0.0.1:{free_port()}",
            "root": f"/srv/crowd/web-{n}",
        }
        for n in range(1, 13)
    ]
    document["rollout"] = {"waves": [12]}
    document["health"] = {"mounts": ["/"], "db_connections_percent": {"warn": 95, "critical": 99}}
    path = directory / "crowd.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    yield load_environment(path)
    path.unlink()


def test_twelve_hosts_failing_at_once_send_exactly_one_message(crowd, services):
    _, states, _ = run_dag(load_dag("health_crowd"), {})

    [message] = services.texts()
    lines = message.splitlines()
    assert states["verdict"] == "failed"
    assert lines[0] == ":rotating_light: *crowd*: health: 24 new"
    for n in range(1, 13):
        assert sum(line.startswith(f"• app on web-{n} is CRITICAL") for line in lines) == 1
        assert sum(line.startswith(f"• ssh on web-{n} is CRITICAL") for line in lines) == 1


@pytest.fixture
def hushed(services):
    """``hushed``, in the DAGs' folder so that ``silence_hushed`` exists."""
    path = Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"])
    environment = write_alerting_environment(path, "hushed")
    yield environment
    (path / "hushed.yaml").unlink()


def silences(ops_url: str, environment: str) -> list[tuple]:
    with psycopg.connect(ops_url) as connection:
        return connection.execute(
            "SELECT check_pattern, host_pattern, ends_at, reason FROM airlock.health_silences"
            " WHERE environment = %s",
            (environment,),
        ).fetchall()


def test_a_silence_mutes_matching_alerts_then_expires_and_the_alert_comes(
    hushed, services, postgres_url, ops_url
):
    conf = {"check": "disk", "host": "web-1", "duration": "30m", "reason": "resizing / on web-1"}
    _, states, _ = run_dag(load_dag("silence_hushed"), conf)
    [(check, host, ends_at, reason)] = silences(ops_url, "hushed")
    [announced] = services.texts()
    services.clear()
    disk = CheckResult(
        "disk", "web-1:/", Status.CRITICAL, 95.0, "warn 80%, critical 90%", "/: disk used 95.0%", 1.0
    )
    load = CheckResult("load", "web-2", Status.CRITICAL, 4.0, "warn 1.5, critical 3", "load 4.0", 1.0)
    now = datetime.now(UTC)

    during = send_alerts(hushed, [disk, load], run_id="hushed-during", now=now)
    after = send_alerts(hushed, [disk, load], run_id="hushed-after", now=ends_at + timedelta(minutes=1))

    assert states == {"validate_request": "success", "add_silence": "success"}
    assert (check, host, reason) == ("disk", "web-1", "resizing / on web-1")
    assert ":no_bell: *hushed*:" in announced
    assert "silenced disk on web-1 until" in announced
    [message] = during
    assert "load on web-2 is CRITICAL" in message
    assert "disk on web-1:/" not in message
    assert "Silence #" in message
    assert "disk on web-1 until" in message
    assert "(muted 1 in this run)" in message
    [expired] = after
    assert "disk on web-1:/ is CRITICAL (was ok)" in expired
    assert "load on web-2" not in expired
    assert "Silence" not in expired
    assert silences(ops_url, "hushed") == []
    assert services.texts() == [message, expired]


def test_a_silence_longer_than_seven_days_is_refused_before_anything_is_stored(hushed, postgres_url, ops_url):
    conf = {"check": "*", "host": "*", "duration": "8d", "reason": "going on holiday"}

    _, states, _ = run_dag(load_dag("silence_hushed"), conf)

    assert states["validate_request"] == "failed"
    assert states["add_silence"] == "upstream_failed"
    assert silences(ops_url, "hushed") == []


@pytest.fixture
def closed_database(postgres_url, monkeypatch, tmp_path):
    """An application database left refusing connections, as a failed restore swap leaves it."""
    name = f"airlock_closed_{os.getpid()}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
        connection.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    connection_uri = {
        "conn_type": "postgres",
        "host": "127.0.0.1",
        "port": 5432,
        "login": "postgres",
        "schema": name,
    }
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOCK_CLOSED_DB", json.dumps(connection_uri))
    database = {
        **load_environment_document()["database"],
        "conn_id": "airlock_closed_db",
        "ops_conn_id": "airlock_ops",
    }
    yield write_alerting_environment(tmp_path, "closed", database=database)
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_an_application_database_that_refuses_connections_is_critical_read_through_postgres(closed_database):
    results = {r.check: r for r in check_database(closed_database)}

    refused = results["db_accepts_connections"]
    assert refused.status is Status.CRITICAL
    assert refused.target == "airlock_closed_db"
    assert "refuses connections (datallowconn = false, read through postgres)" in refused.message
    assert results["db_connect"].status is Status.CRITICAL


def test_an_application_database_that_accepts_connections_is_ok(environment, postgres_url):
    [accepts] = [r for r in check_database(environment) if r.check == "db_accepts_connections"]

    assert accepts.status is Status.OK
    assert accepts.message == f"database {postgres_url.rsplit('/', 1)[1]} accepts connections"
