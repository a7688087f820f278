"""``airflow_housekeeping`` for real: a task log folder and a metadata database of its own.

The metadata database is a copy of the pre-migrated SQLite template the test session is built
from, reached through the ``airflow_metadata_db`` connection as in production; the log folder
is a temporary one set as Airflow's ``[logging] base_log_folder``.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sqlite3
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support import PROJECT, run_dag

DAY = 86400
ARCHIVE = "_airflow_deleted__log__20250101000000"


def load_dag(dag_id: str):
    """A freshly parsed DAG from its own file (other DAG files being edited cannot break it)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=PROJECT / "dags" / "airflow_housekeeping.py")
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def write(path: Path, days_old: float, content: str = "log line\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    stamp = time.time() - days_old * DAY
    os.utime(path, (stamp, stamp))
    return path


def tree(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) + ("@" if p.is_symlink() else "/" if p.is_dir() else "")
        for p in folder.rglob("*")
    )


@pytest.fixture
def metadata_db(tmp_path, monkeypatch) -> Path:
    """A migrated metadata DB with one old and one recent audit log row and an old archive table."""
    version = importlib.metadata.version("apache-airflow-core")
    database = tmp_path / "metadata.db"
    shutil.copy(PROJECT / ".cache" / f"airflow-{version}" / "airflow.db", database)
    now = datetime.now(UTC).replace(tzinfo=None)
    with sqlite3.connect(database) as connection:
        connection.executemany(
            "INSERT INTO log (dttm, event) VALUES (?, ?)",
            # Airflow's audit log is approval evidence: kept 365 days (audit_retention_days).
            [(now - timedelta(days=400), "old-event"), (now - timedelta(days=10), "recent-event")],
        )
        connection.execute(f"CREATE TABLE {ARCHIVE} (id INTEGER)")
    monkeypatch.setenv("AIRFLOW_CONN_AIRFLOW_METADATA_DB", f'{{"conn_type": "sqlite", "host": "{database}"}}')
    return database


@pytest.fixture
def log_folder(tmp_path, monkeypatch) -> Path:
    """Task logs as Airflow lays them out, some older than 30 days, and a link to a file outside."""
    folder = tmp_path / "logs"
    old_run = folder / "dag_id=release_demo" / "run_id=manual__2026-01-01" / "task_id=plan"
    new_run = folder / "dag_id=release_demo" / "run_id=manual__2026-11-20" / "task_id=plan"
    write(old_run / "attempt=1.log", 45)
    write(old_run / "attempt=2.log", 31)
    write(new_run / "attempt=1.log", 5)
    write(folder / "dag_processor" / "2026-01-01" / "release.py.log", 60)
    write(folder / "dag_processor" / "2026-11-25" / "release.py.log", 1)
    outside = write(tmp_path / "outside" / "keep.log", 90)
    (folder / "linked.log").symlink_to(outside)
    monkeypatch.setenv("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(folder))
    return folder


def events(database: Path) -> list[str]:
    with sqlite3.connect(database) as connection:
        return sorted(
            event
            for (event,) in connection.execute(
                "SELECT event FROM log WHERE event IN ('old-event', 'recent-event')"
            )
        )


def tables(database: Path) -> set[str]:
    with sqlite3.connect(database) as connection:
        return {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_a_dry_run_changes_nothing_and_a_run_removes_only_what_is_older_than_the_limits(
    metadata_db, log_folder, tmp_path
):
    before = tree(log_folder)
    retention = {"log_retention_days": 30, "metadata_retention_days": 90}

    _, dry_states, _ = run_dag(load_dag("airflow_housekeeping"), {"dry_run": True, **retention})

    assert set(dry_states.values()) == {"success"}, dry_states
    assert tree(log_folder) == before
    assert events(metadata_db) == ["old-event", "recent-event"]
    assert ARCHIVE in tables(metadata_db)

    _, states, _ = run_dag(load_dag("airflow_housekeeping"), retention)

    assert set(states.values()) == {"success"}, states
    remaining = [entry for entry in tree(log_folder) if "attempt=" in entry or "release.py" in entry]
    assert remaining == [
        "dag_id=release_demo/run_id=manual__2026-11-20/task_id=plan/attempt=1.log",
        "dag_processor/2026-11-25/release.py.log",
    ]
    assert not (log_folder / "dag_id=release_demo" / "run_id=manual__2026-01-01").exists()
    assert not (log_folder / "dag_processor" / "2026-01-01").exists()
    assert (log_folder / "linked.log").is_symlink()
    assert (tmp_path / "outside" / "keep.log").read_text() == "log line\n"
    assert events(metadata_db) == ["recent-event"]
    assert ARCHIVE not in tables(metadata_db)


def add_approval(database: Path, run_id: str, days_old: int) -> None:
    """A manual release run whose approval task has its HITL row (who approved what), aged."""
    when = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=days_old)
    ti_id = uuid.uuid4().hex
    with sqlite3.connect(database) as connection:
        connection.execute(
            "INSERT INTO dag_run (dag_id, run_id, run_type, run_after, start_date, logical_date) "
            "VALUES ('release_demo', ?, 'manual', ?, ?, ?)",
            (run_id, when, when, when),
        )
        connection.execute(
            "INSERT INTO task_instance (id, task_id, dag_id, run_id, start_date, try_number, pool, "
            "pool_slots, state) VALUES (?, 'approve', 'release_demo', ?, ?, 1, 'default_pool', 1, 'success')",
            (ti_id, run_id, when),
        )
        connection.execute(
            "INSERT INTO hitl_detail (ti_id, options, subject, params, created_at, responded_at, "
            'responded_by, chosen_options, params_input) VALUES (?, \'["Approve", "Reject"]\', '
            "'Release 2.0.0', '{}', ?, ?, '{\"id\": \"alice\"}', '[\"Approve\"]', '{}')",
            (ti_id, when, when),
        )
        connection.execute(
            "INSERT INTO job (dag_id, state, job_type, latest_heartbeat) "
            "VALUES (?, 'success', 'scheduler', ?)",
            (run_id, when),
        )


def approvals(database: Path) -> list[tuple]:
    with sqlite3.connect(database) as connection:
        return connection.execute(
            "SELECT ti.run_id, h.chosen_options FROM hitl_detail h JOIN task_instance ti ON ti.id = h.ti_id "
            "ORDER BY ti.run_id"
        ).fetchall()


def jobs(database: Path) -> list[str]:
    with sqlite3.connect(database) as connection:
        return sorted(
            dag_id for (dag_id,) in connection.execute("SELECT dag_id FROM job WHERE dag_id LIKE 'run-%'")
        )


def test_approvals_younger_than_the_audit_retention_survive_a_run_that_trims_older_metadata(
    metadata_db, log_folder
):
    # 120 days: past metadata_retention_days (90), inside audit_retention_days (365).
    add_approval(metadata_db, "run-120-days", 120)
    add_approval(metadata_db, "run-400-days", 400)

    _, states, _ = run_dag(load_dag("airflow_housekeeping"), {})

    assert set(states.values()) == {"success"}, states
    assert approvals(metadata_db) == [("run-120-days", '["Approve"]')]
    assert jobs(metadata_db) == []  # not evidence: trimmed at 90 days as before
    assert events(metadata_db) == ["recent-event"]


@pytest.mark.parametrize("field", ["log_retention_days", "metadata_retention_days"])
def test_a_trigger_asking_to_keep_one_day_is_refused_and_nothing_is_deleted(metadata_db, log_folder, field):
    from airflow.sdk.exceptions import ParamValidationError

    add_approval(metadata_db, "run-120-days", 120)
    before = tree(log_folder)

    with pytest.raises(ParamValidationError, match=field):
        run_dag(load_dag("airflow_housekeeping"), {field: 1})

    assert tree(log_folder) == before
    assert approvals(metadata_db) == [("run-120-days", '["Approve"]')]
