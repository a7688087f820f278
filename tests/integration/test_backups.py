"""``backup_<env>`` and ``restore_<env>`` against the real PostgreSQL server, with file:// backups.

The round trip is what a user relies on: data written, backed up, changed, restored, and equal to
the original (row counts and a content checksum of every table).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from airlock.core.backups import MANIFEST, BackupError, BackupVerificationError
from airlock.hooks.backup_store import BackupStore
from airlock.tasks.backup import apply_retention, newest_verified, take_backup, verify_backup
from tests.integration.releases import audit_rows
from tests.support import PROJECT, load_dag, run_dag

# Airlock's own tables, were an environment to keep them in the application database
# (ops_conn_id = conn_id): they are checked by their rows, not compared as application data.
OPS_SCHEMA = "airlock"


def table_fingerprints(url: str) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent checksum of the content of every application table."""
    with psycopg.connect(url) as connection:
        tables = connection.execute(
            "SELECT format('%%I.%%I', schemaname, relname) FROM pg_stat_user_tables WHERE schemaname <> %s "
            "ORDER BY 1",
            (OPS_SCHEMA,),
        ).fetchall()
        fingerprints = {}
        for (table,) in tables:
            count, digest = connection.execute(
                f"SELECT count(*), coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') "  # noqa: S608 - names from the catalog
                f"FROM {table} AS t"
            ).fetchone()
            fingerprints[table] = (count, digest)
    return fingerprints


@pytest.fixture(scope="module")
def customers(postgres_url) -> str:
    """A table with varied content in the application database."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS customers (id int PRIMARY KEY, name text, joined date, data jsonb)"
        )
        connection.execute("TRUNCATE customers")
        connection.execute(
            "INSERT INTO customers SELECT i, 'Ünïcode ' || i || E'\\ttab \"quote\"', "
            "date '2020-01-01' + i, jsonb_build_object('i', i) FROM generate_series(1, 5000) AS i"
        )
    return postgres_url


@pytest.fixture
def store(environment, redis_client) -> BackupStore:
    """The sandbox's backup directory (and Redis, for the environment lock the restore takes)."""
    return BackupStore.of(environment)


def test_a_scheduled_backup_is_dumped_verified_published_privately_and_pruned(
    environment, customers, store, slack_messages
):
    dag = load_dag(f"backup_{environment.name}")

    run_id, states, _ = run_dag(dag, {})

    assert states == {"dump": "success", "verify": "success", "prune": "success"}, states
    newest = newest_verified(environment)
    assert newest is not None
    assert newest.run_id == run_id
    assert newest.verified
    assert newest.row_counts["public.customers"] == 5000
    assert newest.database == customers.rsplit("/", 1)[1]
    assert newest.server_version
    assert newest.pg_dump_version.startswith("pg_dump")
    directory = store.local_root / newest.name
    for relative, digest in newest.files.items():
        path = directory / relative
        assert path.stat().st_size == digest.bytes
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / MANIFEST).stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.local_root.stat().st_mode) == 0o700
    manifest = json.loads((directory / MANIFEST).read_text())
    assert manifest["verified_at"]
    assert manifest["run_id"] == run_id
    assert manifest["bytes"] > 0
    assert not slack_messages.texts()


def test_the_verified_backup_asset_is_updated_with_the_backup_name(environment, customers):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    run_id, states, _ = run_dag(load_dag(f"backup_{environment.name}"), {})

    assert states["verify"] == "success"
    with create_session() as session:
        extras = session.scalars(
            select(AssetEvent.extra)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .where(AssetModel.name == f"airlock_verified_backup_{environment.name}")
            .where(AssetEvent.source_run_id == run_id)
        ).all()
    assert [extra["name"] for extra in extras] == [newest_verified(environment).name]


def test_restore_brings_back_exactly_the_backed_up_data_after_a_safety_backup(
    environment, customers, store, slack_messages, ops_url
):
    reader = f"airlock_test_reader_{uuid.uuid4().hex[:8]}"  # the application's role and its grant
    with psycopg.connect(customers, autocommit=True) as connection:
        connection.execute(f"CREATE ROLE {reader}")
        connection.execute(f"GRANT SELECT ON customers TO {reader}")
    backup = take_backup(environment, kind="manual")
    verify_backup(environment, backup.name)
    original = table_fingerprints(customers)
    with psycopg.connect(customers, autocommit=True) as connection:
        connection.execute("DELETE FROM customers WHERE id % 3 = 0")
        connection.execute("UPDATE customers SET name = 'changed' WHERE id < 100")
        connection.execute("CREATE TABLE written_after_backup (id int)")
    changed = table_fingerprints(customers)
    assert changed != original

    run_id, states, answered = run_dag(
        load_dag(f"restore_{environment.name}"),
        {"backup": backup.name, "reason": "bad data import"},
        answer="Approve",
    )

    assert answered["ok"] is True
    assert states["restore"] == "success", states
    assert table_fingerprints(customers) == original
    # The restore's own audit row is in the ops database, which the restore never touches.
    assert audit_rows(ops_url, run_id, "action", "result") == [("restore", "succeeded")]
    with psycopg.connect(customers, autocommit=True) as connection:
        granted = connection.execute("SELECT has_table_privilege(%s, 'customers', 'SELECT')", (reader,))
        assert granted.fetchone()[0], "grants come back with the tables"
        connection.execute(f"REVOKE ALL ON customers FROM {reader}")
    safety = [b for b in store.backups() if b.kind == "pre-restore" and b.run_id == run_id]
    assert len(safety) == 1
    assert safety[0].row_counts["public.written_after_backup"] == 0
    assert safety[0].row_counts["public.customers"] == changed["public.customers"][0]
    database = customers.rsplit("/", 1)[1]
    [kept] = databases_like(f"{database}_before_restore_")
    assert table_fingerprints(customers.rsplit("/", 1)[0] + "/" + kept) == changed  # kept, not dropped
    assert databases_like(f"{database}_restore_") == []
    texts = slack_messages.texts()
    assert any(f"restored from backup {backup.name}" in text for text in texts), texts
    assert any("needs approval" in text for text in texts)
    drop_database(kept)
    with psycopg.connect(customers, autocommit=True) as connection:
        connection.execute(f"DROP ROLE {reader}")


def test_a_restore_whose_smoke_test_fails_is_swapped_back_and_the_live_database_stays(
    environment, customers, store
):
    from airlock.config import Environment
    from airlock.tasks.restore import restore_database
    from airlock.tasks.smoke import SmokeTestFailed

    backup = take_backup(environment, kind="manual")
    with psycopg.connect(customers, autocommit=True) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS needed_by_the_app (id int)")
    before = table_fingerprints(customers)
    # The smoke test needs a table the backup does not have: the restored database fails it.
    strict = Environment.model_validate(
        {
            **environment.model_dump(),
            "smoke_tests": [
                {
                    "kind": "sql",
                    "name": "app-table",
                    "query": "SELECT to_regclass('public.needed_by_the_app') IS NOT NULL",
                    "expect": True,
                }
            ],
        }
    )

    with pytest.raises(SmokeTestFailed, match="the swap was undone"):
        restore_database(strict, backup.name)

    assert table_fingerprints(customers) == before  # the live database is the one it was
    database = customers.rsplit("/", 1)[1]
    [failed] = databases_like(f"{database}_failed_restore_")
    assert "public.needed_by_the_app" not in table_fingerprints(customers.rsplit("/", 1)[0] + "/" + failed)
    assert databases_like(f"{database}_before_restore_") == []
    with psycopg.connect(customers) as connection:  # and open to connections again
        assert connection.execute("SELECT 1").fetchone() == (1,)
    drop_database(failed)
    store.remove(backup.name)


def test_retention_removes_only_staging_leftovers_that_stopped_changing(environment, customers, store):
    from datetime import UTC, datetime, timedelta

    verify_backup(environment, take_backup(environment, kind="manual").name)
    old = (datetime.now(UTC) - environment.backup.timeout - timedelta(hours=1)).timestamp()
    abandoned = store.local_root / ".incomplete-sandbox-20260101T000000Z"
    growing = store.local_root / ".incomplete-sandbox-20260101T010000Z"
    other = store.local_root / ".incomplete-sandbox-eu-20260101T000000Z"  # another environment's
    for directory in (abandoned, growing, other):
        directory.mkdir()
        (directory / "database.dump").write_bytes(b"partial")
        os.utime(directory / "database.dump", (old, old))
        os.utime(directory, (old, old))
    os.utime(growing / "database.dump")  # pg_dump is still writing here

    result = apply_retention(environment, dry_run=False)

    assert result["incomplete_removed"] == [abandoned.name]
    assert not abandoned.exists()
    assert growing.exists()
    assert other.exists()
    for directory in (growing, other):
        subprocess.run(["rm", "-rf", str(directory)], check=True)


def test_environments_sharing_a_destination_never_see_each_others_backups(environment, customers, store):
    from airlock.config import Environment

    mine = take_backup(environment, kind="manual")
    other = Environment.model_validate({**environment.model_dump(), "name": "other"})

    assert mine.name in [b.name for b in store.backups()]
    assert BackupStore.of(other).backups() == []
    with pytest.raises(BackupError, match="is a backup of sandbox"):
        BackupStore.of(other).manifest(mine.name)
    store.remove(mine.name)


def test_a_rejected_restore_changes_nothing(environment, customers, store, ops_url):
    before = table_fingerprints(customers)
    backups_before = [b.name for b in store.backups()]

    run_id, states, _ = run_dag(load_dag(f"restore_{environment.name}"), {}, answer="Reject")

    assert states["approve"] == "failed"
    assert states.get("restore") in ("upstream_failed", None)
    assert table_fingerprints(customers) == before
    [(action, result)] = audit_rows(ops_url, run_id, "action", "result")
    assert result == "rejected", (action, result)
    assert [b.name for b in store.backups()] == backups_before


def test_a_corrupted_backup_fails_verification_and_stays_unverified(environment, customers, store):
    backup = take_backup(environment, kind="manual")
    dump = store.local_root / backup.name / backup.dump_path
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))

    with pytest.raises(BackupVerificationError, match="does not match its SHA-256"):
        verify_backup(environment, backup.name)

    assert not store.manifest(backup.name).verified
    store.remove(backup.name)


def test_a_killed_dump_leaves_no_backup_that_looks_complete(environment, customers, store):
    before = [b.name for b in store.backups()]
    # Hold a lock pg_dump must wait for, so the dump is surely in progress when it is killed.
    blocker = psycopg.connect(customers)
    blocker.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
    script = (
        "import sys; sys.path.insert(0, 'plugins');"
        "from airlock.config import load_environment; from airlock.tasks.backup import take_backup;"
        f"take_backup(load_environment(__import__('pathlib').Path({str(environment_file())!r})))"
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=PROJECT, start_new_session=True)
    try:
        staging = wait_for(lambda: list(store.local_root.glob(".incomplete-*")))
        assert staging, "the dump never started"
        wait_for(lambda: dumping(customers))
        os.killpg(child.pid, signal.SIGKILL)  # the worker dies with its pg_dump
        child.wait(timeout=10)
    finally:
        blocker.rollback()
        blocker.close()

    assert [b.name for b in store.backups()] == before
    assert not any((path / MANIFEST).exists() for path in store.local_root.glob(".incomplete-*"))
    for path in store.local_root.glob(".incomplete-*"):
        subprocess.run(["rm", "-rf", str(path)], check=True)


def test_release_preflight_refuses_a_stale_backup_and_names_it(environment, customers, store):
    from dataclasses import replace
    from datetime import timedelta

    from airflow.sdk.exceptions import AirflowFailException

    from airlock.tasks import release as release_steps

    newest = verify_backup(environment, take_backup(environment, kind="manual").name)
    assert release_steps.require_recent_backup(environment)["name"] == newest.name
    verified = [b for b in store.backups() if b.verified]
    for manifest in verified:
        store.write_manifest(replace(manifest, finished_at=manifest.finished_at - timedelta(hours=3)))
    try:
        with pytest.raises(AirflowFailException, match=rf"newest verified backup .*\({newest.name}\)"):
            release_steps.require_recent_backup(environment)
    finally:
        for manifest in verified:
            store.write_manifest(manifest)


def test_releases_check_backups_before_the_plan_and_back_up_between_approval_and_migrations(environment):
    release = load_dag(f"release_{environment.name}")

    assert "check_backup" in release.get_task("plan").upstream_task_ids
    assert release.get_task("backup").upstream_task_ids == {"approve"}
    assert release.get_task("migrate").upstream_task_ids == {"backup", "validate_request"}


# -- helpers ---------------------------------------------------------------------------------------


def environment_file() -> Path:
    return Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"]) / "sandbox.yaml"


def wait_for(condition, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    return None


def dumping(url: str) -> bool:
    with psycopg.connect(url) as connection:
        return bool(
            connection.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE%'"
            ).fetchone()
        )


def databases_like(prefix: str) -> list[str]:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres") as connection:
        rows = connection.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY datname", (prefix,)
        ).fetchall()
    return [name for (name,) in rows]


def drop_database(name: str) -> None:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_backups_work_the_same_on_an_object_store(environment, customers, monkeypatch):
    """fsspec's in-memory filesystem stands in for S3 (which cannot run here), registered the way
    a provider registers its store: the same ObjectStoragePath code path as any remote store."""
    from airflow.sdk.io import fs
    from fsspec.implementations.memory import MemoryFileSystem

    from airlock.config import Environment

    monkeypatch.setitem(fs._register_filesystems(), "memory", lambda conn_id, options: MemoryFileSystem())

    remote = Environment.model_validate(
        {
            **environment.model_dump(),
            "backup": {**environment.backup.model_dump(), "destination": "memory://airlock-backups/sandbox"},
        }
    )
    store = BackupStore.of(remote)
    assert store.local_root is None

    backup = take_backup(remote, kind="manual")
    verified = verify_backup(remote, backup.name)
    names = [b.name for b in store.backups()]
    plan = apply_retention(remote, dry_run=False)

    assert names == [backup.name]
    assert verified.verified
    assert store.manifest(backup.name).verified
    assert (store.root / backup.name / backup.dump_path).exists()
    assert plan["remove"] == []
    store.remove(backup.name)
    assert store.backups() == []


def test_a_directory_format_backup_is_dumped_in_parallel_and_verifies(environment, customers, store):
    from airlock.config import Environment

    parallel = Environment.model_validate(
        {**environment.model_dump(), "backup": {**environment.backup.model_dump(), "format": "directory"}}
    )

    backup = take_backup(parallel, kind="manual")
    verified = verify_backup(parallel, backup.name)

    assert verified.verified
    assert backup.dump_path == "dump"
    assert "dump/toc.dat" in backup.files
    assert len(backup.files) == 1 + len(backup.row_counts)  # the table of contents, a file per table
    store.remove(backup.name)


def test_a_failed_backup_is_announced_in_slack_with_the_step_and_the_reason(
    environment, customers, store, slack_messages, monkeypatch
):
    before = [b.name for b in store.backups()]
    monkeypatch.setenv(
        "AIRFLOW_CONN_AIRLOCK_DEMO_DB",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": 5432,
                "login": "postgres",
                "schema": "airlock_no_such_database",
            }
        ),
    )

    _, states, _ = run_dag(load_dag(f"backup_{environment.name}"), {})

    assert states["dump"] == "failed"
    assert states["verify"] == "upstream_failed"
    assert [b.name for b in store.backups()] == before
    assert slack_messages.wait_for(lambda texts: any("task dump failed" in text for text in texts))
    [message] = [text for text in slack_messages.texts() if "task dump failed" in text]
    assert "backup_sandbox" in message
    assert "airlock_no_such_database" in message
