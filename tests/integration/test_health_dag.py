"""``health_<env>`` end to end on real sshd hosts, the demo app, PostgreSQL, Redis and Slack.

The module serves 1.0.0 on every sandbox host and writes two environment files next to the
session's ``sandbox`` one, on the same hosts: ``watched`` (without backups; load, memory and
connection limits raised because the sandbox hosts share this machine with whatever else runs
on it) and ``strained`` (a disk threshold below the current use and a 1 s long-query limit).
Each test runs the DAG with ``dag.test()`` and checks what an operator sees: the run's result,
the history table and the Slack messages.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import yaml

from airlock.core.health import CheckResult, Status
from airlock.hooks.artifacts import release_artifact
from airlock.hooks.hosts import deploy_to_host, host_hook, serving_version
from airlock.tasks.backup import newest_verified, take_backup, verify_backup
from airlock.tasks.health import check_airflow, check_backup, check_database, send_alerts
from airlock_dev.hosts import free_port
from include.demo_app.build import build_artifact
from tests.support import load_dag, run_dag, write_environment

VERSION = "1.0.0"
RELAXED = {
    "load_per_core": {"warn": 50, "critical": 100},
    "memory_available_percent": {"warn": 1, "critical": 0.5},
    "db_connections_percent": {"warn": 95, "critical": 99},
    "http_latency_ms": {"warn": 3000, "critical": 8000},
}


def environment_file(name: str, **health: object):
    directory = Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"])
    document = yaml.safe_load((directory / "sandbox.yaml").read_text())
    document.pop("backup", None)
    document["health"] = {"mounts": ["/"], **RELAXED, **health}
    return write_environment(directory / f"{name}.yaml", document)


@pytest.fixture(scope="module")
def watched(environment, sandbox, postgres_url, redis_client, slack):
    """Every sandbox host serving 1.0.0, and the ``watched`` and ``strained`` environments."""
    directory = Path(urlsplit(environment.deploy.artifact_url).path).parent
    build_artifact(VERSION, directory)
    artifact = release_artifact(environment.deploy, VERSION)
    for host in environment.hosts:
        deploy_to_host(environment, host, VERSION, artifact)
    watched = environment_file("watched")
    environment_file(
        "strained", disk_used_percent={"warn": 1, "critical": 100}, long_query="1s", alert_after=1
    )
    yield watched
    for name in ("watched", "strained"):
        (Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"]) / f"{name}.yaml").unlink()


def history(ops_url: str, run_id: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(check, target) -> (status, message) recorded by one run, from the ops database."""
    with psycopg.connect(ops_url) as connection:
        rows = connection.execute(
            "SELECT check_name, target, status, message FROM airlock.health_checks WHERE run_id = %s",
            (run_id,),
        ).fetchall()
    return {(check, target): (status, message) for check, target, status, message in rows}


def notified_of(ops_url: str, run_id: str) -> dict[tuple[str, str], str | None]:
    """(check, target) -> whether Slack heard of that result of one run (the history's ``notified``)."""
    with psycopg.connect(ops_url) as connection:
        rows = connection.execute(
            "SELECT check_name, target, notified FROM airlock.health_checks WHERE run_id = %s", (run_id,)
        ).fetchall()
    return {(check, target): how for check, target, how in rows}


def run_health(name: str):
    """A fresh parse per run: ``dag.test()`` leaves a run's state on the DAG object."""
    run_id, states, _ = run_dag(load_dag(f"health_{name}"), {})
    return run_id, states


def demo_app(environment, host_name: str, command: str) -> None:
    host = environment.host(host_name)
    root = environment.root_of(host)
    hook = host_hook(environment, host)
    try:
        hook.run([f"{root}/current/bin/demo-app", "--root", root, command])
    finally:
        hook.close()


def test_a_healthy_sandbox_is_all_ok_and_sends_nothing(watched, slack_messages, postgres_url, ops_url):
    run_id, states = run_health("watched")

    assert states["verdict"] == "success", states
    results = history(ops_url, run_id)
    for host in ("web-1", "web-2", "web-3"):
        for check, target in (
            ("app", host),
            ("ssh", host),
            ("disk", f"{host}:/"),
            ("inodes", f"{host}:/"),
            ("load", host),
            ("memory", host),
        ):
            assert results[check, target][0] == "ok", (check, target, results[check, target])
    assert results["app", "web-1"][1].endswith(f"version {VERSION}")
    for check in (
        "db_accepts_connections",
        "db_connect",
        "db_connections",
        "db_long_queries",
        "db_blocked",
        "db_size",
    ):
        assert results[check, "airlock_demo_db"][0] == "ok", results[check, "airlock_demo_db"]
    assert results["redis_ping", "airlock_redis"][0] == "ok"
    assert results["redis_memory", "airlock_redis"][0] == "ok"
    assert results["backup_age", "watched"] == (
        "skipped",
        "not configured: the environment has no backup section",
    )
    assert results["airflow", "airflow"][0] == "skipped"
    assert slack_messages.texts() == []


def test_a_stopped_app_alerts_once_stays_quiet_even_without_its_state_and_resolves_once(
    watched, slack_messages, redis_client, postgres_url, ops_url
):
    demo_app(watched, "web-2", "stop")
    try:
        first_run, first = run_health("watched")
        alerts = slack_messages.texts()
        run_health("watched")
        after_second = slack_messages.texts()
        for key in redis_client.scan_iter("airlock:health:watched:*"):
            redis_client.delete(key)
        run_health("watched")
        after_state_lost = slack_messages.texts()
    finally:
        demo_app(watched, "web-2", "start")
    assert serving_version(watched, watched.host("web-2"))[0]

    _, recovered = run_health("watched")
    after_one_pass = slack_messages.texts()
    run_health("watched")  # health.resolve_after: 2 passing runs in a row

    assert first["verdict"] == "failed"
    assert history(ops_url, first_run)["app", "web-2"][0] == "critical"
    assert notified_of(ops_url, first_run)["app", "web-2"] == "sent"
    [alert] = alerts
    assert alert.startswith(":rotating_light: *watched*: health: 1 new\n")
    assert "• app on web-2 is CRITICAL (was ok)" in alert
    assert "got no answer" in alert
    assert after_second == alerts
    assert after_state_lost == alerts
    assert recovered["verdict"] == "success"
    assert after_one_pass == alerts
    [resolved] = slack_messages.texts()[len(alerts) :]
    assert resolved.startswith(":white_check_mark: *watched*: health: 1 resolved\n")
    assert "• app on web-2 is ok again" in resolved


SLEEPING = "SELECT pg_sleep(120)"
WAITING = "SELECT count(*) FROM health_probe"


def run_until_cancelled(connection: psycopg.Connection, query: str) -> None:
    with contextlib.suppress(psycopg.errors.QueryCanceled):
        connection.execute(query)


@pytest.fixture
def long_query(postgres_url):
    """A query sleeping in the application database, and a session blocked on a table lock."""
    holder = psycopg.connect(postgres_url)
    holder.execute("CREATE TABLE IF NOT EXISTS health_probe (id int)")
    holder.commit()
    holder.execute("LOCK TABLE health_probe IN ACCESS EXCLUSIVE MODE")
    sleeper = psycopg.connect(postgres_url, autocommit=True)
    waiter = psycopg.connect(postgres_url, autocommit=True)
    threads = [
        threading.Thread(target=run_until_cancelled, args=(sleeper, SLEEPING), daemon=True),
        threading.Thread(target=run_until_cancelled, args=(waiter, WAITING), daemon=True),
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    with psycopg.connect(postgres_url, autocommit=True) as observer:
        # Start once both have run for more than the 1 s limit, as the server sees it.
        while observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
            " AND now() - query_start > interval '1.5 seconds' AND query IN (%s, %s)",
            (SLEEPING, WAITING),
        ).fetchone() != (2,):
            assert time.monotonic() < deadline, "the sleeping and the blocked query never both ran"
            time.sleep(0.2)
    yield
    for connection in (sleeper, waiter):
        connection.cancel_safe()
    holder.rollback()
    for thread in threads:
        thread.join(timeout=10)
    for connection in (holder, sleeper, waiter):
        connection.close()


def test_threshold_crossings_long_queries_and_blocked_sessions_alert_and_survive_a_lost_state(
    watched, long_query, slack_messages, redis_client, postgres_url, ops_url
):
    run_id, states = run_health("strained")
    alerts = slack_messages.texts()
    for key in redis_client.scan_iter("airlock:health:strained:*"):
        redis_client.delete(key)
    run_health("strained")

    results = history(ops_url, run_id)
    assert {results["disk", f"web-{n}:/"][0] for n in (1, 2, 3)} == {"warn"}
    assert results["db_long_queries", "airlock_demo_db"][0] == "warn"
    assert "pg_sleep(120)" in results["db_long_queries", "airlock_demo_db"][1]
    assert results["db_blocked", "airlock_demo_db"][0] == "critical"
    assert states["verdict"] == "failed"
    [alert] = alerts  # one message per run, every change in it
    lines = alert.splitlines()
    assert sum(line.startswith("• disk on web-") and "is WARN" in line for line in lines) == 3
    assert sum(line.startswith("• db_long_queries on airlock_demo_db is WARN") for line in lines) == 1
    assert sum(line.startswith("• db_blocked on airlock_demo_db is CRITICAL") for line in lines) == 1
    assert sum(line.startswith("• ") for line in lines) == 5, alert
    assert slack_messages.texts() == alerts


def test_a_lasting_problem_is_repeated_only_after_the_reminder_interval(
    watched, slack_messages, redis_client, ops_url
):
    failing = CheckResult("load", "web-1", Status.CRITICAL, 4.2, "warn 1.5, critical 3", "load 4.2", 1.0)
    start = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)

    sent = [
        send_alerts(watched, [failing], run_id=f"run-{minutes}", now=start + timedelta(minutes=minutes))
        for minutes in (0, 5, 235, 240, 245, 480)
    ]

    assert [len(texts) for texts in sent] == [1, 0, 0, 1, 0, 1]
    assert "load on web-1 is still CRITICAL after 4 h" in sent[3][0]
    assert "load on web-1 is still CRITICAL after 8 h" in sent[5][0]
    assert len(slack_messages.texts()) == 3
    redis_client.delete("airlock:health:watched:load:web-1")
    with psycopg.connect(ops_url) as connection:  # the later runs of health_watched start afresh
        connection.execute(
            "DELETE FROM airlock.health_alerts WHERE environment = 'watched' AND check_name = 'load'"
        )


def test_backup_age_comes_from_the_newest_verified_backup(environment, sandbox, postgres_url):
    backup = take_backup(environment, kind="manual")
    verify_backup(environment, backup.name)
    newest = newest_verified(environment)

    [fresh] = check_backup(environment)
    [stale] = check_backup(
        environment, now=newest.finished_at + environment.backup.max_age + timedelta(minutes=1)
    )

    assert fresh.status is Status.OK
    assert f"newest verified backup {newest.name} is" in fresh.message
    assert stale.status is Status.CRITICAL


@pytest.fixture
def airflow_api(watched, monkeypatch):
    """Airflow's own API app (the api-server's code) on a free port, over this session's metadata DB."""
    import uvicorn
    from airflow.api_fastapi.app import create_app

    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "health-check-test-secret")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app("core"), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the Airflow API failed to start (see the log above)"
        assert time.monotonic() < deadline, "the Airflow API did not start within 60 s"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_the_airflow_check_reads_each_components_heartbeat_from_the_api(watched, airflow_api):
    from airflow.jobs.job import Job, JobState
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    scheduler = Job(job_type="SchedulerJob", state=JobState.RUNNING, latest_heartbeat=datetime.now(UTC))
    with create_session() as session:
        session.add(scheduler)
        session.flush()
        scheduler_id = scheduler.id
    configured = watched.model_copy(
        update={"health": watched.health.model_copy(update={"airflow_api_url": airflow_api})}
    )

    results = {r.target: r for r in check_airflow(configured)}

    assert results["metadatabase"].status is Status.OK
    assert results["scheduler"].status is Status.OK
    assert "last heartbeat" in results["scheduler"].message
    assert results["triggerer"].status is Status.WARN
    assert results["triggerer"].message == "has never run"
    with create_session() as session:  # the session's metadata DB has no scheduler again
        session.execute(delete(Job).where(Job.id == scheduler_id))


def test_a_replica_that_is_not_in_recovery_is_critical(watched, postgres_url):
    pointed_at_primary = watched.model_copy(
        update={"health": watched.health.model_copy(update={"replica_conn_id": "airlock_demo_db"})}
    )

    [lag] = [r for r in check_database(pointed_at_primary) if r.check == "db_replication_lag"]

    assert lag.status is Status.CRITICAL
    assert lag.message == "this server is not a replica (not in recovery)"
