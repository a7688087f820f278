"""The restore's swap with its task process SIGKILLed at each step, against the real PostgreSQL server.

The task process runs the real :func:`airlock.tasks.restore.restore_database`; one function of
the swap is wrapped (in that process only: the test seam is the module attribute, no switch in
the product) to halt right before or after it runs, so the test kills the process at exactly that
step: no ``finally`` and no cleanup runs. Then it checks what an operator would: the live database
accepts connections, it holds either all the old data (and settings) or all the restored, and a
second restore converges.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import psycopg
import pytest

from airlock.hooks.backup_store import BackupStore
from airlock.tasks.backup import take_backup
from airlock.tasks.restore import restore_database
from tests.support import PROJECT, wait_until

SERVER = "postgresql://postgres@127.0.0.1:5432"
ADMIN = f"{SERVER}/postgres"

#: The task process: ``restore_database`` of argv[2] in environment argv[1], halted (never
#: returning) at the step argv[3]; argv[4] is the file it writes once halted there.
RESTORE = """
import pathlib, sys, threading
from airlock.config import load_environments
from airlock.hooks import postgres
from airlock.tasks import restore

environment_name, backup, step, marker = sys.argv[1:5]

def halt():
    pathlib.Path(marker).write_text(step)
    threading.Event().wait()  # until SIGKILL

def halting_before(function):
    def wrapper(*args, **kwargs):
        halt()
    return wrapper

def halting_after(function, calls):
    made = []
    def wrapper(*args, **kwargs):
        result = function(*args, **kwargs)
        made.append(1)
        if len(made) == calls:
            halt()
        return result
    return wrapper

module, name, wrap = {
    "before-the-swap": (restore, "swap_databases", halting_before),
    "after-ending-the-live-sessions": (postgres, "end_sessions", lambda f: halting_after(f, 1)),
    "after-renaming-the-live-database": (postgres, "rename_database", lambda f: halting_after(f, 1)),
    "after-renaming-the-restored-copy": (postgres, "rename_database", lambda f: halting_after(f, 2)),
    "after-the-settings-and-acl": (postgres, "apply_database_properties", lambda f: halting_after(f, 1)),
    "after-the-commit": (restore, "swap_databases", lambda f: halting_after(f, 1)),
    "during-the-smoke-tests": (restore, "run_sql_test", halting_before),
}[step]
setattr(module, name, wrap(getattr(module, name)))
restore.restore_database(load_environments().environments[environment_name], backup)
"""


def execute(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement)


def databases_like(prefix: str) -> dict[str, bool]:
    """Each database whose name starts with ``prefix``, and whether it accepts connections."""
    with psycopg.connect(ADMIN) as connection:
        rows = connection.execute(
            "SELECT datname, datallowconn FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1",
            (prefix,),
        ).fetchall()
    return dict(rows)


def state_of(url: str) -> tuple[int, list[str]]:
    """What the application sees: its rows, and the database's settings in a new session."""
    with psycopg.connect(url) as connection:
        (orders,) = connection.execute("SELECT count(*) FROM orders").fetchone()
        (timeout,) = connection.execute("SHOW statement_timeout").fetchone()
        (public_connect,) = connection.execute(
            "SELECT has_database_privilege('public', current_database(), 'CONNECT')"
        ).fetchone()
    return orders, [timeout, f"public connect: {public_connect}"]


@pytest.fixture
def live_database(environment, monkeypatch):
    """The environment's database replaced by one of this test's (with settings and an ACL)."""
    name = f"airlock_r15_swap_{uuid.uuid4().hex[:8]}"
    connection = {
        "conn_type": "postgres",
        "host": "127.0.0.1",
        "port": 5432,
        "login": "postgres",
        "schema": name,
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{environment.database.conn_id.upper()}", json.dumps(connection))
    execute(ADMIN, f"CREATE DATABASE {name}")
    yield name
    for database in databases_like(name):
        execute(ADMIN, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    store = BackupStore.of(environment)
    for backup in store.backups():
        if backup.database == name:
            store.remove(backup.name)


@pytest.mark.parametrize(
    "step",
    [
        pytest.param("before-the-swap", id="killed-before-the-swap"),
        pytest.param("after-ending-the-live-sessions", id="killed-after-ending-sessions"),
        pytest.param("after-renaming-the-live-database", id="killed-after-renaming-the-live-database"),
        pytest.param("after-renaming-the-restored-copy", id="killed-after-renaming-the-restored-copy"),
        pytest.param("after-the-settings-and-acl", id="killed-after-the-settings-and-acl"),
        pytest.param("after-the-commit", id="killed-after-the-commit"),
        pytest.param("during-the-smoke-tests", id="killed-during-the-smoke-tests"),
    ],
)
def test_a_swap_killed_at_any_step_leaves_the_live_database_open_and_whole_and_a_rerun_converges(
    environment, live_database, tmp_path, step
):
    name = live_database
    url = f"{SERVER}/{name}"
    execute(
        url,
        "CREATE TABLE orders (id int)",
        "INSERT INTO orders SELECT generate_series(1, 100)",
        f"ALTER DATABASE {name} SET statement_timeout = '7s'",
        f"REVOKE CONNECT ON DATABASE {name} FROM PUBLIC",
    )
    backup = take_backup(environment, kind="manual")
    execute(
        url,
        "DELETE FROM orders WHERE id > 40",
        f"ALTER DATABASE {name} SET statement_timeout = '9s'",
        f"GRANT CONNECT ON DATABASE {name} TO PUBLIC",
    )
    old, restored = (40, ["9s", "public connect: True"]), (100, ["7s", "public connect: False"])
    assert state_of(url) == old
    marker = tmp_path / "halted"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT / "plugins"), str(PROJECT)])}
    task = subprocess.Popen(
        [sys.executable, "-c", RESTORE, environment.name, backup.name, step, str(marker)],
        env=env,
        cwd=PROJECT,
    )
    try:
        wait_until(lambda: marker.exists() or task.poll() is not None, limit=120)
        assert marker.exists(), f"the restore process ended ({task.returncode}) before {step}"
    finally:
        if task.poll() is None:
            os.kill(task.pid, signal.SIGKILL)  # the worker died mid-swap: no finally, no cleanup
        task.wait()
    assert task.returncode == -signal.SIGKILL

    swapped = step in ("after-the-commit", "during-the-smoke-tests")
    assert state_of(url) == (restored if swapped else old)  # and it accepts connections
    databases = databases_like(name)
    assert all(databases.values()), databases  # nothing is left closed to connections
    left = sorted(database.removeprefix(name).rstrip("0123456789") for database in databases)
    # The documented states: the unswapped copy (dropped by the next restore), or the previous
    # database marked unchecked (the next restore runs the smoke tests and keeps or undoes it).
    assert left == (["", "_unchecked_restore_"] if swapped else ["", "_restore_"])

    restore_database(environment, backup.name)  # the operator's re-run

    assert state_of(url) == restored
    left = sorted(database.removeprefix(name).rstrip("0123456789") for database in databases_like(name))
    assert left == (["", "_before_restore_", "_before_restore_"] if swapped else ["", "_before_restore_"])
