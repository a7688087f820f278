"""Applying migrations to a real PostgreSQL database.

Each test gets its own schema and its own Airflow connection whose ``search_path`` is that
schema, so the migration files use plain table names and the history table (and with it the
advisory lock key) is private to the test.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from airlock.config import MigrationSettings
from airlock.core.migrations import MigrationError, discover_migrations
from airlock.hooks.migrations import MigrationRunner

HISTORY_TABLE = "schema_history"


@dataclass(frozen=True)
class MigrationTarget:
    """A private schema of the session's test database, reachable as an Airflow connection."""

    url: str
    conn_id: str
    schema: str
    directory: Path

    def runner(self, **settings: object) -> MigrationRunner:
        return MigrationRunner(
            self.conn_id,
            MigrationSettings(history_schema=self.schema, history_table=HISTORY_TABLE, **settings),
        )

    def write(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            (self.directory / name).write_text(text)

    def tables(self) -> list[str]:
        with psycopg.connect(self.url) as connection:
            rows = connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                "AND table_name <> %s ORDER BY table_name",
                (self.schema, HISTORY_TABLE),
            ).fetchall()
        return [name for (name,) in rows]

    def columns(self, table: str) -> list[str]:
        with psycopg.connect(self.url) as connection:
            rows = connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                "AND table_name = %s ORDER BY ordinal_position",
                (self.schema, table),
            ).fetchall()
        return [name for (name,) in rows]

    def history(self) -> list[tuple]:
        """(version, description, checksum, applied_at, duration_ms, applied_by_run), by applied_at."""
        with psycopg.connect(self.url) as connection:
            return connection.execute(
                sql.SQL(
                    "SELECT version, description, checksum, applied_at, duration_ms, applied_by_run "
                    "FROM {} ORDER BY applied_at, version"
                ).format(sql.Identifier(self.schema, HISTORY_TABLE))
            ).fetchall()

    def applied_versions(self) -> list[str]:
        return [row[0] for row in self.history()]


@pytest.fixture
def target(postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MigrationTarget]:
    suffix = uuid.uuid4().hex[:12]
    schema = f"migrations_{suffix}"
    conn_id = f"airlock_migrations_{suffix}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    database = postgres_url.rsplit("/", 1)[1]
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": 5432,
                "login": "postgres",
                "schema": database,
                "extra": {"options": f"-c search_path={schema}"},
            }
        ),
    )
    directory = tmp_path / "migrations"
    directory.mkdir()
    yield MigrationTarget(url=postgres_url, conn_id=conn_id, schema=schema, directory=directory)
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


CREATE_ORDERS = {"V1__create_orders.sql": "CREATE TABLE orders (id bigint PRIMARY KEY);\n"}
ADD_STATUS = {
    "V1.1__add_order_status.sql": "ALTER TABLE orders ADD COLUMN status text NOT NULL DEFAULT 'new';\n"
}
CREATE_ITEMS = {
    "V2__create_items.sql": (
        "CREATE TABLE items (id bigint PRIMARY KEY, order_id bigint REFERENCES orders (id));\n"
        "INSERT INTO orders (id) VALUES (1);\n"
        "INSERT INTO items (id, order_id) VALUES (10, 1);\n"
    )
}


def test_apply_from_empty_creates_the_tables_and_one_history_row_per_version(
    target: MigrationTarget,
) -> None:
    target.write({**CREATE_ORDERS, **ADD_STATUS, **CREATE_ITEMS})
    migrations = discover_migrations(target.directory)

    applied = target.runner().apply(migrations, run_id="manual__first")

    assert applied == ["1", "1.1", "2"]
    assert target.tables() == ["items", "orders"]
    assert target.columns("orders") == ["id", "status"]
    history = target.history()
    assert [
        (version, description, checksum, run) for version, description, checksum, _, _, run in history
    ] == [
        (migration.version_text, migration.description, migration.checksum, "manual__first")
        for migration in migrations
    ]
    assert all(duration >= 0 for *_, duration, _ in history)


def test_rerun_applies_nothing_and_leaves_history_unchanged(target: MigrationTarget) -> None:
    target.write({**CREATE_ORDERS, **CREATE_ITEMS})
    migrations = discover_migrations(target.directory)
    target.runner().apply(migrations, run_id="run_1")
    before = target.history()

    applied = target.runner().apply(migrations, run_id="run_2")

    assert applied == []
    assert target.runner().pending(migrations) == []
    assert target.history() == before


def test_pending_lists_what_apply_would_run_without_changing_the_database(target: MigrationTarget) -> None:
    target.write(CREATE_ORDERS)
    target.runner().apply(discover_migrations(target.directory), run_id="run_1")
    target.write({**ADD_STATUS, **CREATE_ITEMS})

    pending = target.runner().pending(discover_migrations(target.directory))

    assert [migration.version_text for migration in pending] == ["1.1", "2"]
    assert target.tables() == ["orders"]
    assert target.applied_versions() == ["1"]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        pytest.param(
            lambda directory: (directory / "V1__create_orders.sql").write_text(
                "CREATE TABLE orders (id bigint PRIMARY KEY, note text);\n"
            ),
            r"^V1__create_orders\.sql: changed after it was applied",
            id="applied-file-edited",
        ),
        pytest.param(
            lambda directory: (directory / "V1__create_orders.sql").unlink(),
            r"^V1__create_orders\.sql: version 1 was applied but its file is missing",
            id="applied-file-deleted",
        ),
        pytest.param(
            lambda directory: (directory / "V0.9__create_customers.sql").write_text(
                "CREATE TABLE customers (id bigint);\n"
            ),
            r"^V0\.9__create_customers\.sql: version 0\.9 is lower than the highest applied version 1",
            id="new-version-below-applied",
        ),
    ],
)
def test_invalid_history_is_refused_before_anything_runs(
    target: MigrationTarget, change: Callable[[Path], object], error: str
) -> None:
    target.write(CREATE_ORDERS)
    target.runner().apply(discover_migrations(target.directory), run_id="run_1")
    before = target.history()
    target.write(CREATE_ITEMS)
    change(target.directory)
    migrations = discover_migrations(target.directory)

    with pytest.raises(MigrationError, match=error):
        target.runner().pending(migrations)
    with pytest.raises(MigrationError, match=error):
        target.runner().apply(migrations, run_id="run_2")

    assert target.tables() == ["orders"]
    assert target.history() == before


def test_failing_migration_leaves_schema_and_history_as_before_it_and_stops_the_run(
    target: MigrationTarget,
) -> None:
    target.write({**CREATE_ORDERS, **ADD_STATUS})
    target.runner().apply(discover_migrations(target.directory), run_id="run_1")
    tables_before, columns_before, history_before = (
        target.tables(),
        target.columns("orders"),
        target.history(),
    )
    target.write(
        {
            "V2__create_items.sql": (
                "CREATE TABLE items (id bigint PRIMARY KEY);\n"
                "ALTER TABLE orders ADD COLUMN total numeric;\n"
                "INSERT INTO missing_table VALUES (1);\n"
            ),
            "V3__create_invoices.sql": "CREATE TABLE invoices (id bigint);\n",
        }
    )

    with pytest.raises(
        MigrationError,
        match=r"^V2__create_items\.sql: failed and was rolled back; later migrations were not applied: "
        r"UndefinedTable: relation \"missing_table\" does not exist",
    ):
        target.runner().apply(discover_migrations(target.directory), run_id="run_2")

    assert target.tables() == tables_before == ["orders"]
    assert target.columns("orders") == columns_before
    assert target.history() == history_before


def test_fixed_migration_applies_after_a_failure(target: MigrationTarget) -> None:
    target.write({**CREATE_ORDERS, "V2__broken.sql": "SELECT * FROM missing_table;\n"})
    with pytest.raises(MigrationError, match=r"^V2__broken\.sql: failed"):
        target.runner().apply(discover_migrations(target.directory), run_id="run_1")

    (target.directory / "V2__broken.sql").write_text("CREATE TABLE fixed (id bigint);\n")
    applied = target.runner().apply(discover_migrations(target.directory), run_id="run_2")

    assert applied == ["2"]
    assert target.applied_versions() == ["1", "2"]


def test_concurrent_runs_serialize_and_apply_each_version_once(target: MigrationTarget) -> None:
    target.write(
        {
            **CREATE_ORDERS,
            "V2__slow_backfill.sql": "SELECT pg_sleep(1);\nALTER TABLE orders ADD COLUMN note text;\n",
            "V3__create_items.sql": "CREATE TABLE items (id bigint);\n",
        }
    )
    migrations = discover_migrations(target.directory)
    start = threading.Barrier(2)
    results: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def run(run_id: str) -> None:
        start.wait()
        try:
            results[run_id] = target.runner().apply(migrations, run_id=run_id)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(f"run_{number}",)) for number in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(results.values()) == [[], ["1", "2", "3"]]
    assert target.applied_versions() == ["1", "2", "3"]
    assert len({run_id for *_, run_id in target.history()}) == 1
    assert target.columns("orders") == ["id", "note"]


def test_no_transaction_migration_builds_an_index_concurrently(target: MigrationTarget) -> None:
    target.write(
        {
            **CREATE_ORDERS,
            **ADD_STATUS,
            "V1.2__index_order_status.sql": (
                "-- airlock:no-transaction\n"
                "-- CREATE INDEX CONCURRENTLY cannot run inside a transaction block.\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_status ON orders (status);\n"
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_status_id ON orders (status, id);\n"
            ),
        }
    )
    migrations = discover_migrations(target.directory)

    applied = target.runner().apply(migrations, run_id="run_1")

    assert migrations[-1].transactional is False
    assert applied == ["1", "1.1", "1.2"]
    with psycopg.connect(target.url) as connection:
        indexes = connection.execute(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
            "AND c.relname LIKE 'orders_status%%' ORDER BY c.relname",
            (target.schema,),
        ).fetchall()
    assert indexes == [("orders_status", True), ("orders_status_id", True)]


def test_lock_timeout_fails_a_blocked_migration_quickly_with_a_clear_error(target: MigrationTarget) -> None:
    target.write(CREATE_ORDERS)
    target.runner().apply(discover_migrations(target.directory), run_id="run_1")
    target.write({"V2__add_order_note.sql": "ALTER TABLE orders ADD COLUMN note text;\n"})
    migrations = discover_migrations(target.directory)

    with psycopg.connect(target.url) as blocker:
        blocker.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(target.schema, "orders"))
        )
        started = time.monotonic()
        with pytest.raises(
            MigrationError,
            match=r"^V2__add_order_note\.sql: failed and was rolled back.*LockNotAvailable: "
            r"canceling statement due to lock timeout",
        ):
            target.runner(lock_timeout="1s").apply(migrations, run_id="run_2")
        elapsed = time.monotonic() - started
        blocker.rollback()

    assert elapsed < 10
    assert target.applied_versions() == ["1"]
    assert target.columns("orders") == ["id"]
    assert target.runner(lock_timeout="1s").apply(migrations, run_id="run_3") == ["2"]


def test_statement_timeout_stops_a_migration_that_runs_too_long(target: MigrationTarget) -> None:
    target.write({**CREATE_ORDERS, "V2__slow.sql": "SELECT pg_sleep(30);\n"})

    started = time.monotonic()
    with pytest.raises(MigrationError, match=r"^V2__slow\.sql: failed.*QueryCanceled: canceling statement"):
        target.runner(statement_timeout="1s").apply(discover_migrations(target.directory), run_id="run_1")

    assert time.monotonic() - started < 10
    assert target.applied_versions() == ["1"]
