"""Applying versioned SQL migrations to a PostgreSQL database, the way teams trust Flyway to.

The files themselves (names, versions, checksums, statements) are read by
:mod:`airlock.core.migrations`; this module is the part that talks to the database.

The target database keeps a history table (``MigrationSettings.history_schema`` /
``history_table``) with one row per applied version. Before anything runs, the files are
validated against it: an applied file that changed or disappeared, or a new version lower than
the highest applied one, stops the run with an error naming the file and nothing is applied.

Each migration runs in its own transaction together with its history row, so a failure leaves
neither its changes nor its row behind. A file containing the line ``-- airlock:no-transaction``
(for ``CREATE INDEX CONCURRENTLY`` and the like) runs statement by statement in autocommit mode
and gets its history row afterwards; PostgreSQL cannot roll such a file back, so keep it to one
idempotent statement (``CREATE INDEX CONCURRENTLY IF NOT EXISTS``). A session-level advisory lock
keyed on the history table serializes runs against the same database; ``lock_timeout`` and
``statement_timeout`` keep a migration from hanging production behind another session's lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from airlock.config import MigrationSettings
from airlock.core.migrations import (
    AppliedMigration,
    Migration,
    MigrationError,
    advisory_lock_key,
    expected_filename,
    parse_version,
    split_statements,
)
from airlock.hooks.postgres import session


def _milliseconds(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def partial_failure(pending: Sequence[Migration], applied: Sequence[Migration]) -> str:
    """Which of ``pending`` a failed run applied (they stay applied) and which it did not."""
    names = {migration.filename for migration in applied}
    done = ", ".join(m.filename for m in applied) or "none"
    left = ", ".join(m.filename for m in pending if m.filename not in names)
    return f"Applied by this run before it (kept): {done}; not applied: {left}"


class MigrationRunner:
    """Validates and applies migrations to the database of one Airflow connection.

    :param conn_id: Airflow Postgres connection of the target database
    :param settings: where the history table lives and the timeouts each migration runs under
    """

    def __init__(self, conn_id: str, settings: MigrationSettings) -> None:
        self.conn_id = conn_id
        self.settings = settings
        self.history = sql.Identifier(settings.history_schema, settings.history_table)

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection[Any]]:
        """An autocommit session: each migration opens its own transaction (or runs without one).

        Rows are tuples whatever ``cursor`` extra the connection has: the runner unpacks them.
        """
        with session(self.conn_id, autocommit=True) as connection:
            connection.row_factory = tuple_row
            yield connection

    def ensure_history(self) -> None:
        """Create the history schema and table when missing."""
        with self._session() as connection:
            self._ensure_history(connection)

    def _ensure_history(self, connection: psycopg.Connection[Any]) -> None:
        with connection.transaction():
            connection.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.settings.history_schema))
            )
            connection.execute(
                sql.SQL(
                    """
                    CREATE TABLE IF NOT EXISTS {history} (
                        version text PRIMARY KEY,
                        description text NOT NULL,
                        checksum text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now(),
                        duration_ms integer NOT NULL,
                        applied_by_run text
                    )
                    """
                ).format(history=self.history)
            )

    def applied(self) -> list[AppliedMigration]:
        """The history table's rows by version; empty when the table does not exist yet."""
        with self._session() as connection:
            return self._applied(connection)

    def _applied(self, connection: psycopg.Connection[Any]) -> list[AppliedMigration]:
        exists = connection.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (self.history.as_string(connection),)
        ).fetchone()
        if not exists or not exists[0]:
            return []
        rows = connection.execute(
            sql.SQL("SELECT version, description, checksum FROM {}").format(self.history)
        ).fetchall()
        applied = [
            AppliedMigration(
                version=parse_version(version),
                version_text=version,
                description=description,
                checksum=checksum,
            )
            for version, description, checksum in rows
        ]
        return sorted(applied, key=lambda row: row.version)

    def applied_by_run(self, run_id: str) -> list[str]:
        """The migrations one run applied, as file names, in order; empty without a history."""
        with self._session() as connection:
            if not self._applied(connection):
                return []
            rows = connection.execute(
                sql.SQL("SELECT version, description FROM {} WHERE applied_by_run = %s").format(self.history),
                (run_id,),
            ).fetchall()
        ordered = sorted(rows, key=lambda row: parse_version(row[0]))
        return [expected_filename(version, description) for version, description in ordered]

    def validate(self, migrations: Sequence[Migration]) -> list[Migration]:
        """Check the files against the history and return the pending ones, in order.

        Raises :class:`MigrationError` naming the file when an applied file changed or is missing,
        or when a pending version is lower than the highest applied one.
        """
        with self._session() as connection:
            return self._validate(migrations, self._applied(connection))

    @staticmethod
    def _validate(migrations: Sequence[Migration], applied: Sequence[AppliedMigration]) -> list[Migration]:
        by_version = {migration.version: migration for migration in migrations}
        for row in applied:
            migration = by_version.get(row.version)
            if migration is None:
                raise MigrationError(
                    f"{expected_filename(row.version_text, row.description)}: version {row.version_text} "
                    "was applied but its file is missing; restore the file (applied migrations "
                    "are never deleted, add a new version instead)"
                )
            if migration.checksum != row.checksum:
                raise MigrationError(
                    f"{migration.filename}: changed after it was applied (checksum {migration.checksum} "
                    f"differs from the applied {row.checksum}); restore the applied content and put "
                    "the change in a new version"
                )
        applied_versions = {row.version for row in applied}
        pending = sorted(
            (migration for migration in migrations if migration.version not in applied_versions),
            key=lambda migration: migration.version,
        )
        if applied and pending and pending[0].version < applied[-1].version:
            raise MigrationError(
                f"{pending[0].filename}: version {pending[0].version_text} is lower than the highest "
                f"applied version {applied[-1].version_text}; give it a version above "
                f"{applied[-1].version_text}"
            )
        return pending

    def pending(self, migrations: Sequence[Migration]) -> list[Migration]:
        """The migrations not applied yet, in order, after :meth:`validate`; changes nothing."""
        return self.validate(migrations)

    def apply(
        self,
        migrations: Sequence[Migration],
        run_id: str,
        *,
        before_each: Callable[[], None] = lambda: None,
    ) -> list[str]:
        """Apply the pending migrations in order under the advisory lock; return their versions.

        A second run against the same database waits for the lock, then finds nothing pending.
        ``before_each`` runs before each migration and raises to stop before it (the run's locks
        are no longer held).
        """
        key = advisory_lock_key(self.settings.history_schema, self.settings.history_table)
        with self._session() as connection:
            connection.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                self._ensure_history(connection)
                pending = self._validate(migrations, self._applied(connection))
                applied: list[Migration] = []
                for migration in pending:
                    before_each()
                    self._set_timeouts(connection)
                    try:
                        self._apply_one(connection, migration, run_id)
                    except MigrationError as error:
                        raise MigrationError(f"{error}. {partial_failure(pending, applied)}") from error
                    applied.append(migration)
                return [migration.version_text for migration in applied]
            finally:
                if not connection.closed and not connection.broken:
                    connection.execute("SELECT pg_advisory_unlock(%s)", (key,))

    def _set_timeouts(self, connection: psycopg.Connection[Any]) -> None:
        for name, value in (
            ("lock_timeout", self.settings.lock_timeout),
            ("statement_timeout", self.settings.statement_timeout),
        ):
            connection.execute(
                "SELECT set_config(%s, %s, false)", (name, _milliseconds(value.total_seconds()))
            )

    def _apply_one(self, connection: psycopg.Connection[Any], migration: Migration, run_id: str) -> None:
        started = time.monotonic()
        try:
            if migration.transactional:
                with connection.transaction():
                    connection.execute(migration.sql.encode())
                    self._record(connection, migration, run_id, started)
            else:
                for statement in split_statements(migration.sql):
                    connection.execute(statement.encode())
                self._record(connection, migration, run_id, started)
        except psycopg.Error as error:
            outcome = (
                "rolled back"
                if migration.transactional
                else "not recorded; it ran outside a transaction, so check what it left behind"
            )
            raise MigrationError(
                f"{migration.filename}: failed and was {outcome}; later migrations were not applied: "
                f"{type(error).__name__}: {str(error).strip()}"
            ) from error

    def _record(
        self, connection: psycopg.Connection[Any], migration: Migration, run_id: str, started: float
    ) -> None:
        connection.execute(
            sql.SQL(
                "INSERT INTO {} (version, description, checksum, duration_ms, applied_by_run) "
                "VALUES (%s, %s, %s, %s, %s)"
            ).format(self.history),
            (
                migration.version_text,
                migration.description,
                migration.checksum,
                round((time.monotonic() - started) * 1000),
                run_id,
            ),
        )
