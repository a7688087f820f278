"""PostgreSQL restarted while the pre-release backup's ``pg_dump`` runs, in a real release.

The release's application database lives on a PostgreSQL server of the test's own, so restarting
it disturbs nobody; the audit trail stays in the ops database (``airlock_ops``) on another server,
as production keeps it.
The restart is triggered by the dump itself: the moment the server lists a ``pg_dump`` session,
over a table big enough that the dump is still copying it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import psycopg
from airflow.models import TaskInstance
from airflow.utils.session import create_session
from sqlalchemy import select

from airlock.hooks.backup_store import INCOMPLETE_PREFIX, BackupStore
from airlock.hooks.postgres import BACKUP_APPLICATION_NAME
from airlock.tasks.backup import verify_backup
from tests.integration.releases import NEW, audit_rows, served_versions, task_times
from tests.support import load_dag, run_dag

HOSTS = ["web-1", "web-2", "web-3"]
BULK_ROWS = 1_500_000


def connect(conn_id: str, connection: dict, monkeypatch) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))


def pg_dump_is_copying(connection: psycopg.Connection) -> bool:
    """The backup's ``pg_dump`` is copying a table's rows out: mid-way through the dump."""
    return bool(
        connection.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND query ILIKE 'COPY %%'",
            (BACKUP_APPLICATION_NAME,),
        ).fetchone()
    )


def try_number(dag_id: str, run_id: str, task_id: str) -> int:
    with create_session() as session:
        return session.execute(
            select(TaskInstance.try_number).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id
            )
        ).scalar_one()


def test_postgresql_restarted_during_the_pre_release_backup_fails_that_try_and_the_retry_converges(
    hosts_on_old, private_postgres, monkeypatch, slack_messages, redis_client, host_load, ops_url
):
    environment = hosts_on_old
    server = private_postgres
    app_url = server.create_database("app")
    connect("airlock_demo_db", server.connection("app"), monkeypatch)
    with psycopg.connect(app_url) as connection:
        connection.execute(
            "CREATE TABLE bulk AS SELECT i, md5(i::text) AS digest FROM generate_series(1, %s) AS i",
            (BULK_ROWS,),
        )
    release = load_dag(f"release_{environment.name}")
    for task in release.tasks:
        task.retry_delay = timedelta(0)
    watcher = server.restart_when(pg_dump_is_copying)
    traffic = host_load(environment)

    run_id, states, _ = run_dag(release, {"version": NEW, "reason": "restart mid-dump"}, answer="Approve")
    traffic.stop()
    watcher.stop_watching.set()
    watcher.join(timeout=60)

    # The restart hit the first try's dump; the task's retry took the backup again, and the release
    # went on only after it: every deploy started after the backup step ended.
    assert server.restarts == 1
    assert states["backup"] == "success", states
    assert try_number(release.dag_id, run_id, "backup") == 2
    times = task_times(release.dag_id, run_id)
    backup_end = times["backup"][1]
    assert all(start > backup_end for task, (start, _) in times.items() if ".deploy" in task)
    assert states["conclude"] == "success", states
    assert served_versions(environment) == dict.fromkeys(HOSTS, NEW)

    # Exactly one pre-release backup of this run is published, complete (its files match the
    # manifest, written last) and restorable with every row; no half-written try is left behind.
    store = BackupStore.of(environment)
    [published] = [m for m in store.backups() if m.run_id == run_id]
    directory = Path(store.local_root) / published.name
    assert {
        name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in published.files
    } == {name: entry.sha256 for name, entry in published.files.items()}
    assert not [p.name for p in Path(store.local_root).iterdir() if p.name.startswith(INCOMPLETE_PREFIX)]
    assert published.row_counts["public.bulk"] == BULK_ROWS
    assert verify_backup(environment, published.name).verified

    # The lock is free, the audit row and Slack say the release went out, the hosts never stopped.
    assert redis_client.get(f"airlock:lock:{environment.name}") is None
    [(result, detail)] = audit_rows(ops_url, run_id, "result", "detail")
    assert (result, detail) == ("succeeded", None)
    assert any(f"release {NEW} is live" in text for text in slack_messages.texts())
    traffic.assert_every_request_answered()
