"""Services that fail under a release: Redis (at lock time and mid-run), the Slack receiver, and
the task process killed mid-deploy. Two triggers at once are raced at the lock task's level in
``tests/integration/test_environment_lock.py``.

The shared Redis and PostgreSQL servers serve other test sessions at the same time, so they are
never stopped here: "Redis down" is a connection to a port nothing listens on (at lock time) or a
private ``redis-server`` that the test kills (mid-run). PostgreSQL restarted during the
pre-release backup runs on a server of the test's own: ``test_database_faults.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import psycopg.sql
import pytest
import redis
from airflow.sdk.exceptions import AirflowFailException

from airlock.hooks.postgres import DatabaseAddress
from airlock.notifications.slack import post
from airlock.tasks import environment as shared
from airlock.tasks.restore import restore_database
from airlock_dev.hosts import free_port
from airlock_dev.slack import SlackReceiver
from tests.integration.releases import NEW, OLD, audit_rows, served_versions
from tests.support import PROJECT, load_dag, run_dag, wait_until

HOSTS = ["web-1", "web-2", "web-3"]


def connect(conn_id: str, connection: dict, monkeypatch) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))


def public_tables(postgres_url: str) -> set[str]:
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {name for (name,) in rows}


@pytest.fixture
def database_as_before(postgres_url):
    """Drop the tables a test's release or setup created (its migrations, the history table), so
    the session's later tests find the application database as they expect it."""
    before = public_tables(postgres_url)
    yield
    created = public_tables(postgres_url) - before
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        for table in created:
            connection.execute(psycopg.sql.SQL("DROP TABLE {} CASCADE").format(psycopg.sql.Identifier(table)))


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test alone (killing it disturbs nobody); its port."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        try:
            return redis.Redis(port=port).ping()
        except redis.ConnectionError:
            return False

    wait_until(answers)
    yield server, port
    if server.poll() is None:
        server.kill()
    server.wait()


# -- Redis down at lock time: fail closed, with a clear message and an audit row ------------------


def test_with_redis_down_a_release_does_not_start_says_why_and_is_audited(
    hosts_on_old, postgres_url, monkeypatch, ops_url
):
    environment = hosts_on_old
    connect("airlock_redis", {"conn_type": "redis", "host": "127.0.0.1", "port": free_port()}, monkeypatch)

    run_id, states, _ = run_dag(load_dag(f"release_{environment.name}"), {"version": NEW, "reason": "CI"})

    assert states["lock"] == "failed", states
    assert states["check_artifact"] == "upstream_failed"
    assert not [task for task, state in states.items() if ".deploy" in task and state == "success"]
    assert served_versions(environment) == dict.fromkeys(HOSTS, OLD)
    [(action, version, result, detail)] = audit_rows(ops_url, run_id, "action", "version", "result", "detail")
    assert (action, version, result) == ("release", NEW, "failed")
    assert (
        f"not started: Cannot take the lock of {environment.name}: Redis (airlock_redis) did not answer"
        in detail
    )
    assert "Nothing was changed" in detail


# -- Redis down mid-run: the step that cannot confirm its lock stops before its change ------------


def test_a_restore_whose_redis_dies_mid_step_stops_before_the_swap(
    environment, verified_backup, postgres_url, private_redis, monkeypatch, database_as_before
):
    server, port = private_redis
    connect("airlock_redis_private", {"conn_type": "redis", "host": "127.0.0.1", "port": port}, monkeypatch)
    private = environment.model_copy(update={"redis_conn_id": "airlock_redis_private"})
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS after_backup (note text)")
        connection.execute("INSERT INTO after_backup VALUES ('written after the backup')")
    live = DatabaseAddress.of(environment.database.conn_id)
    shared.lock(
        private,
        dag_id=f"restore_{environment.name}",
        run_id="manual__restore-redis-dies",
        purpose="database restore",
        triggered_by="alice",
        run_state=lambda dag_id, run_id: "running",
    )

    def redis_dies_then_check(check) -> None:
        server.kill()  # during the long pg_restore, before the swap
        server.wait()
        check()

    with (
        pytest.raises(AirflowFailException, match=r"Redis \(airlock_redis_private\) did not answer"),
        shared.keep_lock(private, "manual__restore-redis-dies") as check,
    ):
        restore_database(private, verified_backup, before_change=lambda: redis_dies_then_check(check))

    with psycopg.connect(postgres_url) as connection:
        kept = connection.execute("SELECT note FROM after_backup").fetchall()
        siblings = connection.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{live.dbname}\\_%restore%",)
        ).fetchall()
    assert kept == [("written after the backup",)]  # the live database was never swapped
    assert siblings == []  # the restored copy was dropped


# -- the Slack receiver down: the release goes on; every failure to notify is logged -------------


def test_with_slack_down_the_release_goes_on_and_the_failures_are_logged(
    hosts_on_old, postgres_url, monkeypatch, caplog, database_as_before, host_load, ops_url
):
    environment = hosts_on_old
    with SlackReceiver() as gone:
        down = gone.connection()
    connect("airlock_slack", down, monkeypatch)
    caplog.set_level(logging.WARNING, logger="airlock.notifications.slack")

    traffic = host_load(environment)
    run_id, states, answered = run_dag(
        load_dag(f"release_{environment.name}"), {"version": NEW, "reason": "Slack is down"}, answer="Approve"
    )
    traffic.stop()

    assert answered["ok"] is True
    assert states["conclude"] == "success", states
    assert served_versions(environment) == dict.fromkeys(HOSTS, NEW)
    traffic.assert_every_request_answered()  # every host went 1.0.0 -> 2.0.0 by a reload
    assert all(traffic.versions_served(host) == {OLD, NEW} for host in HOSTS), traffic.answers[-3:]
    [(result,)] = audit_rows(ops_url, run_id, "result")
    assert result == "succeeded"
    undelivered = [
        r.getMessage() for r in caplog.records if "Could not deliver Slack message" in r.getMessage()
    ]
    assert any(f"release {NEW} started" in message for message in undelivered), undelivered
    assert any(f"release {NEW} is live" in message for message in undelivered), undelivered


def test_post_to_a_receiver_that_is_down_reports_it_and_logs_the_text(monkeypatch, caplog):
    with SlackReceiver() as gone:
        down = gone.connection()
    connect("airlock_slack_down", down, monkeypatch)
    caplog.set_level(logging.WARNING, logger="airlock.notifications.slack")

    assert post("airlock_slack_down", "release 2.0.0 started") is False
    assert "Could not deliver Slack message through airlock_slack_down: release 2.0.0 started" in caplog.text


# -- the task process SIGKILLed mid-deploy: the retry converges ---------------------------------

#: The deploy task's process: the real ``deploy_to_host``, halted (never returning) right after
#: the step named in argv[3], so the test kills it at exactly that point.
DEPLOY = """
import pathlib, sys, threading
from airlock.config import load_environments
from airlock.hooks import hosts
from airlock.hooks.artifacts import release_artifact
from airlock.hooks.ssh import HostSSHHook

name, version, halt_after, marker = sys.argv[1:5]
owner = {"upload": HostSSHHook, "install": hosts.HostLayout, "switch_current": hosts.HostLayout}[halt_after]
original = getattr(owner, halt_after)

def halting(*args, **kwargs):
    original(*args, **kwargs)
    pathlib.Path(marker).write_text(halt_after)
    threading.Event().wait()  # until SIGKILL

setattr(owner, halt_after, halting)
environment = load_environments().environments[name]
artifact = release_artifact(environment.deploy, version)
hosts.deploy_to_host(environment, environment.host("web-1"), version, artifact)
"""


@pytest.mark.parametrize(
    "halt_after",
    [
        pytest.param("upload", id="killed-after-the-upload"),
        pytest.param("install", id="killed-after-unpacking"),
        pytest.param("switch_current", id="killed-after-the-switch-before-activation"),
    ],
)
def test_a_deploy_killed_mid_way_converges_when_run_again(hosts_on_old, tmp_path, halt_after, host_load):
    from airlock.hooks.artifacts import release_artifact
    from airlock.hooks.hosts import deploy_to_host

    environment = hosts_on_old
    host = environment.host("web-1")
    root = Path(environment.root_of(host))
    marker = tmp_path / "halted"
    shutil.rmtree(root / "releases" / NEW, ignore_errors=True)  # as on a host that never had it
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT / "plugins"), str(PROJECT)])}
    traffic = host_load(environment)
    task = subprocess.Popen(
        [sys.executable, "-c", DEPLOY, environment.name, NEW, halt_after, str(marker)], env=env, cwd=PROJECT
    )
    try:
        wait_until(lambda: marker.exists() or task.poll() is not None, limit=180)  # a loaded CI box
        assert marker.exists(), f"the deploy process ended ({task.returncode}) before {halt_after}"
    finally:
        if task.poll() is None:
            os.kill(task.pid, signal.SIGKILL)  # the worker died mid-deploy: no cleanup ran
        task.wait()
    assert task.returncode == -signal.SIGKILL

    release = deploy_to_host(environment, host, NEW, release_artifact(environment.deploy, NEW))  # the retry
    traffic.stop()

    assert release.version == NEW
    assert served_versions(environment) == {"web-1": NEW, "web-2": OLD, "web-3": OLD}
    entries = sorted(p.name for p in (root / "releases").iterdir())
    assert {OLD, NEW} <= set(entries)
    assert [name for name in entries if name.startswith(".")] == []  # no partial upload or unpacking
    assert (root / "current").resolve().name == NEW
    # The killed try never took the app down, switched or not; the retry's reload swapped it.
    traffic.assert_every_request_answered()
    assert traffic.versions_served("web-1") == {OLD, NEW}


# -- audit everywhere: runs that stopped before the plan, and migrate_ runs -----------------------


def test_a_release_stopped_by_a_host_key_mismatch_before_the_plan_leaves_an_audit_row(
    hosts_on_old, postgres_url, ops_url
):
    environment = hosts_on_old
    known_hosts = environment.ssh.known_hosts
    pinned = known_hosts.read_text()
    lines = pinned.splitlines()
    web_1, web_2 = (f"[127.0.0.1]:{environment.host(name).ssh_port} " for name in ("web-1", "web-2"))
    key_of_web_1 = next(line for line in lines if line.startswith(web_1)).removeprefix(web_1)
    # web-2 now answers with a key that is not the pinned one (as after a rebuild, or a MITM)
    known_hosts.write_text(
        "\n".join(web_2 + key_of_web_1 if line.startswith(web_2) else line for line in lines) + "\n"
    )
    try:
        run_id, states, _ = run_dag(load_dag(f"release_{environment.name}"), {"version": NEW, "reason": "x"})
    finally:
        known_hosts.write_text(pinned)

    assert states["check_host[1]"] == "failed", states
    assert states["plan"] == "upstream_failed"
    assert served_versions(environment) == dict.fromkeys(HOSTS, OLD)
    [(action, version, result, detail, reason)] = audit_rows(
        ops_url, run_id, "action", "version", "result", "detail", "reason"
    )
    assert (action, version, result, reason) == ("release", NEW, "failed", "x")
    assert detail.startswith("failed at check_host_1")


def test_a_migrate_dry_run_leaves_an_audit_row(hosts_on_old, postgres_url, ops_url):
    environment = hosts_on_old

    run_id, states, _ = run_dag(load_dag(f"migrate_{environment.name}"), {"version": NEW, "dry_run": True})

    assert states["apply"] == "skipped", states
    [(action, version, result)] = audit_rows(ops_url, run_id, "action", "version", "result")
    assert (action, version, result) == ("migrate", NEW, "planned")
