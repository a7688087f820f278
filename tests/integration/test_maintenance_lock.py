"""The shared mode of the environment lock against real Redis and PostgreSQL: backups and
maintenance hold it, a migration closes the gate and waits for them, and succeeds after them.

Without the rule a migration's ``ALTER TABLE`` queues behind the dump's ACCESS SHARE locks (or
REINDEX CONCURRENTLY's SHARE UPDATE EXCLUSIVE) and fails on ``migrations.lock_timeout`` (5 s).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg
import pytest
import redis

from airlock.hooks.backup_store import BackupStore
from airlock.hooks.lock import (
    EnvironmentLock,
    LockHolder,
    LockUnavailableError,
    MaintenanceRunningError,
    MigrationGate,
    MigrationRunningError,
    SharedHold,
    SharedHolder,
    SharedLock,
)
from include.demo_app.build import artifact_files, tarball_bytes
from tests.integration.releases import GOOD_MIGRATION, served_versions
from tests.support import PROJECT, load_dag, run_dag, wait_until

OVERLAP = "2.6.0"  # ships V90, which alters the table a backup or maintenance step is working on
MIGRATION = "migrations/V90__add_maintained_note.sql"
SHORT = timedelta(seconds=1)


# -- the mechanism ---------------------------------------------------------------------------------


@pytest.fixture
def shared(redis_client) -> SharedLock:
    lock = SharedLock(environment=f"shared-{uuid.uuid4().hex[:6]}", redis_conn_id="airlock_redis")
    yield lock
    redis_client.delete(lock.holders_key, lock.gate_key)


def holder(purpose: str = "scheduled backup dump", run_id: str = "scheduled__1") -> SharedHolder:
    since = datetime.now(UTC).isoformat(timespec="seconds")
    return SharedHolder(
        token=uuid.uuid4().hex, dag_id="backup_x", run_id=run_id, purpose=purpose, since=since
    )


def migrating(run_id: str = "manual__release") -> LockHolder:
    return LockHolder(
        token=uuid.uuid4().hex, run_id=run_id, purpose="release 2.6.0", triggered_by="alice", since="now"
    )


def test_a_migration_waits_for_a_live_holder_and_fails_naming_it_without_opening_for_newcomers(shared):
    with SharedHold(
        shared, dag_id="backup_x", run_id="scheduled__1", purpose="scheduled backup dump", wait=SHORT
    ):
        with pytest.raises(
            MaintenanceRunningError, match=r"scheduled backup dump \(run scheduled__1 of backup_x"
        ):
            MigrationGate(
                shared, migrating(), wait=timedelta(seconds=2), poll=timedelta(seconds=0.2)
            ).__enter__()
        assert shared.gate() is None  # a migration that gave up opens the gate again
    assert shared.holders() == []


def test_no_holder_joins_while_the_gate_is_closed_and_one_joins_once_it_opens(shared):
    release = migrating()
    with MigrationGate(shared, release, wait=SHORT):
        with pytest.raises(
            MigrationRunningError, match=r"the migration of release 2\.6\.0 \(run manual__release"
        ):
            SharedHold(
                shared, dag_id="db_maintenance_x", run_id="r1", purpose="vacuum", wait=SHORT
            ).__enter__()
        assert shared.holders() == []
        opener = threading.Timer(0.5, lambda: shared.open_gate(release))
        opener.start()
        with SharedHold(
            shared, dag_id="db_maintenance_x", run_id="r2", purpose="vacuum", wait=timedelta(seconds=10)
        ):
            assert [h.run_id for h in shared.holders()] == ["r2"]
        opener.join()


def test_a_dead_holder_drops_out_after_its_ttl_and_the_migration_goes_on(redis_client):
    lock = SharedLock(environment=f"shared-{uuid.uuid4().hex[:6]}", redis_conn_id="airlock_redis", ttl=SHORT)
    dead = holder()
    try:
        assert lock.join(dead) is None  # registered, then its worker died: nobody renews it

        gate = MigrationGate(lock, migrating(), wait=timedelta(seconds=30), poll=timedelta(seconds=0.1))
        with gate:
            assert lock.holders() == []
        assert gate.waited_for == [dead]
    finally:
        redis_client.delete(lock.holders_key, lock.gate_key)


def test_a_live_holder_is_renewed_past_its_ttl(redis_client):
    lock = SharedLock(environment=f"shared-{uuid.uuid4().hex[:6]}", redis_conn_id="airlock_redis", ttl=SHORT)
    try:
        with SharedHold(lock, dag_id="backup_x", run_id="r", purpose="dump", wait=SHORT) as hold:
            started = datetime.now(UTC)
            wait_until(lambda: datetime.now(UTC) - started > 3 * SHORT, limit=10)
            assert lock.holders() == [hold.holder]
            hold.check()
    finally:
        redis_client.delete(lock.holders_key, lock.gate_key)


def test_redis_unreachable_stops_both_sides_fail_closed(redis_client, monkeypatch):
    down_url = f"redis://127.0.0.1:{_closed_port()}/0"
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOCK_REDIS_DOWN", down_url)
    down = SharedLock(environment="shared-down", redis_conn_id="airlock_redis_down")

    with pytest.raises(LockUnavailableError, match="did not answer"):
        SharedHold(down, dag_id="backup_x", run_id="r", purpose="dump", wait=SHORT).__enter__()
    with pytest.raises(LockUnavailableError, match="did not answer"):
        MigrationGate(down, migrating(), wait=SHORT).__enter__()


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- backups and maintenance over a migration, for real ---------------------------------------------


@pytest.fixture
def maintained(postgres_url, environment, artifacts, redis_client):
    """Table ``maintained`` (with an index) that version 2.6.0's migration V90 alters; afterwards
    the table and V90's history row go, so the session's other migrations stay in order."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE maintained (id int PRIMARY KEY)")
        connection.execute("INSERT INTO maintained SELECT generate_series(1, 1000)")
        connection.execute("CREATE TABLE zz_dump_blocker (id int)")  # after `maintained`: dumped later
        applied = _applied(connection)
    files = artifact_files(OVERLAP)
    if "4" in applied:  # the session already applied 2.4.0's V4: this version ships it too
        with tarfile.open(artifacts / f"demo-app-{GOOD_MIGRATION}.tar.gz") as archive:
            v4 = next(m for m in archive.getmembers() if m.name.startswith("migrations/V4__"))
            files[v4.name] = archive.extractfile(v4).read()
    files[MIGRATION] = b"ALTER TABLE maintained ADD COLUMN note text;\n"
    tarball = artifacts / f"demo-app-{OVERLAP}.tar.gz"
    tarball.write_bytes(tarball_bytes(files))
    Path(f"{tarball}.sha256").write_text(
        f"{hashlib.sha256(tarball.read_bytes()).hexdigest()}  {tarball.name}\n"
    )
    yield postgres_url
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("DROP TABLE IF EXISTS maintained, zz_dump_blocker")
        if connection.execute("SELECT to_regclass('public.airlock_schema_history')").fetchone()[0]:
            connection.execute("DELETE FROM public.airlock_schema_history WHERE version = '90'")
    lock = SharedLock(environment=environment.name, redis_conn_id="airlock_redis")
    redis_client.delete(lock.holders_key, lock.gate_key)


def _applied(connection) -> set[str]:
    if connection.execute("SELECT to_regclass('public.airlock_schema_history')").fetchone()[0] is None:
        return set()
    return {v for (v,) in connection.execute("SELECT version FROM public.airlock_schema_history")}


def _applied_at(url: str, version: str):
    with psycopg.connect(url) as connection:
        if connection.execute("SELECT to_regclass('public.airlock_schema_history')").fetchone()[0] is None:
            return None
        row = connection.execute(
            "SELECT applied_at FROM public.airlock_schema_history WHERE version = %s", (version,)
        ).fetchone()
    return row[0] if row else None


def _has_note_column(url: str) -> bool:
    with psycopg.connect(url) as connection:
        return bool(
            connection.execute(
                "SELECT 1 FROM information_schema.columns "
                "WHERE table_name = 'maintained' AND column_name = 'note'"
            ).fetchone()
        )


def _waiting(url: str, statement: str) -> bool:
    """A session of this database waits for a lock while running ``statement...``."""
    with psycopg.connect(url) as connection:
        return bool(
            connection.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND starts_with(query, %s)",
                (statement,),
            ).fetchone()
        )


def _holds_maintained(url: str, application: str) -> bool:
    with psycopg.connect(url) as connection:
        return bool(
            connection.execute(
                "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.relation = 'maintained'::regclass AND l.granted AND a.application_name = %s",
                (application,),
            ).fetchone()
        )


def test_a_release_over_a_backup_dump_waits_for_it_then_migrates_and_goes_out(
    maintained, hosts_on_old, environment, redis_client
):
    """A backup run's pg_dump is stopped (SIGSTOP) mid-dump with its locks on ``maintained``; the
    release is approved, its migrate step closes the gate and waits; only then is the dump let go."""
    url = maintained
    release = load_dag(f"release_{environment.name}")
    shared = SharedLock(environment=environment.name, redis_conn_id="airlock_redis")
    dump: dict = {}
    script = (
        "import sys; sys.path[:0] = ['plugins', 'tools', '.'];"
        "from pathlib import Path; from airlock.config import load_environment;"
        "from airlock.tasks.backup import back_up;"
        f"env = load_environment(Path({str(_environment_file())!r}));"
        "print(back_up(env, kind='manual', dag_id='backup_sandbox', run_id='manual__overlap').name)"
    )

    def start_a_backup_then_approve(dag_id: str, run_id: str, task_id: str):
        from tests.support import respond_to_approval

        blocker = psycopg.connect(url)
        blocker.execute("LOCK TABLE zz_dump_blocker IN ACCESS EXCLUSIVE MODE")
        dump["process"] = child = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        wait_until(lambda: _waiting(url, "LOCK TABLE"), limit=60)  # pg_dump is locking the tables
        [pg_dump] = [p for p in psutil.Process(child.pid).children() if p.name() == "pg_dump"]
        pg_dump.suspend()  # the dump stays in progress, holding what it locked
        dump["pg_dump"] = pg_dump
        blocker.rollback()
        blocker.close()
        wait_until(lambda: _holds_maintained(url, "airlock-backup"))
        assert [h.run_id for h in shared.holders()] == ["manual__overlap"]
        respond_to_approval(dag_id, run_id, task_id, "Approve", "admin")
        threading.Thread(target=let_the_dump_go_once_the_migration_waits, daemon=True).start()

    def let_the_dump_go_once_the_migration_waits():
        try:
            wait_until(lambda: shared.gate() is not None, limit=120)
            dump["migrated_while_dumping"] = _applied_at(url, "90") is not None
        finally:
            dump["pg_dump"].resume()

    try:
        _, states, answered = run_dag(release, {"version": OVERLAP}, answer=start_a_backup_then_approve)
        output, _ = dump["process"].communicate(timeout=120)
    finally:
        if "pg_dump" in dump and dump["pg_dump"].is_running():
            dump["pg_dump"].resume()
        if "process" in dump and dump["process"].poll() is None:
            os.killpg(dump["process"].pid, signal.SIGKILL)

    assert "error" not in answered, answered
    assert states["migrate"] == "success", states
    assert states["conclude"] == "success", states
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OVERLAP)
    assert dump["process"].returncode == 0
    assert dump["migrated_while_dumping"] is False
    backup = BackupStore.of(environment).manifest(output.strip().splitlines()[-1])
    assert backup.row_counts["public.maintained"] == 1000
    assert backup.finished_at < _applied_at(url, "90")  # the migration ran after the dump
    assert _has_note_column(url)
    assert shared.holders() == []
    assert shared.gate() is None
    BackupStore.of(environment).remove(backup.name)


def test_a_migration_over_reindex_concurrently_waits_for_it_then_applies(
    maintained, environment, redis_client
):
    """REINDEX INDEX CONCURRENTLY, held by the maintenance step's shared hold, waits for an older
    snapshot (a transaction left open); the migrate step waits for the maintenance, then applies."""
    from airlock.tasks.db_maintenance import reindex_concurrently
    from airlock.tasks.migrate import apply_migrations
    from airlock.tasks.shared_lock import hold_shared

    url = maintained
    patient = environment.model_copy(
        update={
            "db_maintenance": environment.db_maintenance.model_copy(
                update={"lock_timeout": timedelta(minutes=2)}
            )
        }
    )
    index = {"schema": "public", "index": "maintained_pkey", "bloat_percent": 90.0, "bytes": 0}
    snapshot = psycopg.connect(url)
    snapshot.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    snapshot.execute("SELECT 1")
    maintenance: dict = {}

    def maintain():
        with hold_shared(
            patient,
            dag_id="db_maintenance_sandbox",
            run_id="scheduled__reindex",
            purpose="database maintenance (reindex)",
        ):
            maintenance["results"] = reindex_concurrently(patient, [index])
            maintenance["finished"] = datetime.now(UTC)

    worker = threading.Thread(target=maintain)
    worker.start()
    wait_until(lambda: _waiting(url, "REINDEX"), limit=60)
    lock = EnvironmentLock(
        environment=environment.name, redis_conn_id="airlock_redis", ttl=timedelta(minutes=10)
    )
    lock.acquire(run_id="manual__migrate", purpose="migrations of 2.6.0", triggered_by="alice")
    shared = SharedLock(environment=environment.name, redis_conn_id="airlock_redis")

    def end_the_snapshot_once_the_migration_waits():
        wait_until(lambda: shared.gate() is not None, limit=60)
        maintenance["migrated_while_reindexing"] = _applied_at(url, "90") is not None
        snapshot.rollback()

    releaser = threading.Thread(target=end_the_snapshot_once_the_migration_waits)
    releaser.start()
    try:
        applied = apply_migrations(environment, version=OVERLAP, run_id="manual__migrate")
    finally:
        releaser.join(timeout=60)
        snapshot.close()
        worker.join(timeout=60)
        lock.release_for_run("manual__migrate")

    assert "90" in applied
    assert maintenance["migrated_while_reindexing"] is False
    assert [r["outcome"] for r in maintenance["results"]] == ["rebuilt"]
    assert maintenance["finished"] < _applied_at(url, "90")
    assert _has_note_column(url)
    assert shared.holders() == []
    assert shared.gate() is None


@pytest.mark.parametrize(
    ("dag_id", "purposes"),
    [
        pytest.param("backup", {"manual backup dump"}, id="backup"),
        # The demo sets no reindex_bloat_percent: its reindex step has nothing to do, and holds nothing.
        pytest.param(
            "db_maintenance",
            {"database maintenance (inspect)", "database maintenance (vacuum)"},
            id="maintenance",
        ),
    ],
)
def test_backup_and_maintenance_runs_hold_the_shared_lock_while_they_work(
    environment, redis_client, postgres_url, dag_id, purposes
):
    """Each step that works on the database registers as a shared holder, and leaves, during the run.

    Redis's MONITOR stream records every join and leave, however short the step: a vacuum of the
    demo database can take less time than any poll of the holders would need to see it.
    """
    shared = SharedLock(environment=environment.name, redis_conn_id="airlock_redis")
    events: list[tuple[str, str]] = []
    stop = threading.Event()
    # Its own connection, which waits as long as the run takes for the next command.
    watching = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=None, decode_responses=True)
    monitor = watching.monitor().__enter__()  # attached once MONITOR answered OK

    def watch():
        while not stop.is_set():
            command = monitor.next_command()["command"]
            if shared.holders_key not in command:
                continue
            kind = "join" if command.startswith("EVAL") and shared.gate_key in command else None
            kind = "leave" if command.startswith("ZREM") else kind
            if kind is not None:
                events.extend((kind, purpose) for purpose in purposes_in(command))

    def purposes_in(command: str) -> list[str]:
        return re.findall(r'purpose\\*": \\*"([^"\\]+)', command)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _, states, _ = run_dag(load_dag(f"{dag_id}_{environment.name}"), {})
    finally:
        stop.set()
        redis_client.ping()  # one more command, so the watcher wakes up and sees the stop
        watcher.join(timeout=10)
        monitor.__exit__(None, None, None)
        watching.close()

    assert set(states.values()) == {"success"}, states
    joined = {purpose for kind, purpose in events if kind == "join"}
    assert purposes <= joined, events
    for purpose in joined:  # every hold ends, after it began
        assert events.index(("join", purpose)) < events.index(("leave", purpose)), events
    assert shared.holders() == []


def _environment_file() -> Path:
    return Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"]) / "sandbox.yaml"
