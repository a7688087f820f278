"""Versioned SQL migrations, applied the way teams trust Flyway to apply them.

A release artifact ships ``migrations/`` holding ``V<version>__<description>.sql`` files and,
optionally, ``U<version>__<description>.sql`` undo scripts. Versions are dotted (or underscored)
numbers compared part by part as numbers, so ``V2 < V10`` and ``V1.1 < V1.10``.

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

import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
from airflow.providers.postgres.hooks.postgres import PostgresHook
from psycopg import sql
from psycopg.rows import tuple_row

from airlock.config import MigrationSettings

NO_TRANSACTION_MARKER = "-- airlock:no-transaction"

_MIGRATION_NAME = re.compile(r"^(?P<kind>[VU])(?P<version>\d+(?:[._]\d+)*)__(?P<description>[^.].*)\.sql$")
_NO_TRANSACTION_LINE = re.compile(r"^[ \t]*--[ \t]*airlock:no-transaction[ \t]*$", re.MULTILINE)
_ADVISORY_LOCK_NAMESPACE = "airlock.migrations"

Version = tuple[int, ...]


class MigrationError(RuntimeError):
    """Migrations cannot be read, validated or applied; the message names the file and what to do."""


@dataclass(frozen=True)
class Migration:
    """One ``V<version>__<description>.sql`` file, read and fingerprinted.

    ``version_text`` is the canonical dotted form (``V2_1`` gives ``"2.1"``, ``V3.0`` gives ``"3"``);
    it is what the history table stores. ``checksum`` is the SHA-256 of the file's bytes.
    """

    version: Version
    version_text: str
    description: str
    path: Path
    sql: str
    checksum: str
    transactional: bool = True
    undo_sql: str | None = None
    undo_path: Path | None = None

    @property
    def filename(self) -> str:
        return self.path.name


def parse_version(text: str) -> Version:
    """``"1.10"`` or ``"1_10"`` -> ``(1, 10)``; trailing zeros drop, as in Flyway (``1.0`` is ``1``)."""
    parts = [int(part) for part in re.split(r"[._]", text)]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def version_label(version: Version) -> str:
    return ".".join(str(part) for part in version)


def is_transactional(sql_text: str) -> bool:
    """False when the script has a line ``-- airlock:no-transaction``."""
    return _NO_TRANSACTION_LINE.search(sql_text) is None


def read_migration(path: Path) -> Migration:
    """Read one ``V...`` file; raise :class:`MigrationError` naming it when its name or text is bad."""
    match = _MIGRATION_NAME.match(path.name)
    if match is None or match.group("kind") != "V":
        raise MigrationError(
            f"{path.name}: not a migration file name; use V<version>__<description>.sql, "
            "e.g. V1.2__add_orders_status.sql"
        )
    content = path.read_bytes()
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MigrationError(f"{path.name}: not valid UTF-8 ({error}); save the file as UTF-8") from None
    version = parse_version(match.group("version"))
    return Migration(
        version=version,
        version_text=version_label(version),
        description=match.group("description").replace("_", " "),
        path=path,
        sql=text,
        checksum=hashlib.sha256(content).hexdigest(),
        transactional=is_transactional(text),
    )


def discover_migrations(directory: Path) -> list[Migration]:
    """Every migration in ``directory`` (not subdirectories), sorted by version, undo scripts attached.

    Every ``*.sql`` file must be a ``V`` or ``U`` script; two files of one version (``V1.1`` and
    ``V1_1`` count as one) or an undo script without its migration are refused.
    """
    if not directory.is_dir():
        raise MigrationError(f"{directory}: migrations directory does not exist")
    migrations: dict[Version, Migration] = {}
    undo_paths: dict[Version, Path] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is not None and match.group("kind") == "U":
            version = parse_version(match.group("version"))
            if version in undo_paths:
                raise MigrationError(
                    f"{path.name}: undo script for version {version_label(version)} already given by "
                    f"{undo_paths[version].name}; keep one"
                )
            undo_paths[version] = path
            continue
        migration = read_migration(path)
        if migration.version in migrations:
            raise MigrationError(
                f"{path.name}: version {migration.version_text} already used by "
                f"{migrations[migration.version].filename}; give one of them a new version"
            )
        migrations[migration.version] = migration
    for version, path in undo_paths.items():
        if version not in migrations:
            raise MigrationError(
                f"{path.name}: undo script without a migration V{version_label(version)}__*.sql"
            )
        migrations[version] = _with_undo(migrations[version], path)
    return [migrations[version] for version in sorted(migrations)]


def _with_undo(migration: Migration, path: Path) -> Migration:
    try:
        undo_sql = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise MigrationError(f"{path.name}: not valid UTF-8 ({error}); save the file as UTF-8") from None
    return replace(migration, undo_sql=undo_sql, undo_path=path)


def split_statements(script: str) -> list[str]:
    """Split a script on top-level ``;`` (ignoring quotes, comments and dollar quotes).

    Used for ``-- airlock:no-transaction`` files only: PostgreSQL runs a multi-statement query
    in one implicit transaction, which ``CREATE INDEX CONCURRENTLY`` refuses. Pieces holding
    only comments and whitespace are dropped.
    """
    statements: list[str] = []
    start = 0
    has_code = False
    index = 0
    length = len(script)
    while index < length:
        char = script[index]
        if script.startswith("--", index):
            newline = script.find("\n", index)
            index = length if newline == -1 else newline + 1
            continue
        if script.startswith("/*", index):
            end = script.find("*/", index + 2)
            index = length if end == -1 else end + 2
            continue
        if char in ("'", '"'):
            index = _end_of_quoted(script, index, char)
            has_code = True
            continue
        if char == "$" and (tag := re.match(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$", script[index:])):
            end = script.find(tag.group(0), index + len(tag.group(0)))
            index = length if end == -1 else end + len(tag.group(0))
            has_code = True
            continue
        if char == ";":
            if has_code:
                statements.append(script[start : index + 1].strip())
            start, has_code = index + 1, False
        elif not char.isspace():
            has_code = True
        index += 1
    if has_code:
        statements.append(script[start:].strip())
    return statements


def _end_of_quoted(script: str, index: int, quote: str) -> int:
    """Index just past the quoted literal starting at ``index`` (a doubled quote stays inside)."""
    position = index + 1
    while True:
        end = script.find(quote, position)
        if end == -1:
            return len(script)
        if script.startswith(quote * 2, end):
            position = end + 2
            continue
        return end + 1


def expected_filename(version_text: str, description: str) -> str:
    """The file name an applied history row came from (descriptions keep ``_`` as spaces)."""
    return f"V{version_text}__{description.replace(' ', '_')}.sql"


def advisory_lock_key(schema: str, table: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock``, the same for every run against one history table."""
    digest = hashlib.sha256(f"{_ADVISORY_LOCK_NAMESPACE}:{schema}.{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class AppliedMigration:
    """One row of the history table."""

    version: Version
    version_text: str
    description: str
    checksum: str


def _milliseconds(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class MigrationRunner:
    """Validates and applies migrations to the database of one Airflow connection.

    :param conn_id: Airflow Postgres connection of the target database
    :param settings: where the history table lives and the timeouts each migration runs under
    """

    def __init__(self, conn_id: str, settings: MigrationSettings) -> None:
        self.conn_id = conn_id
        self.settings = settings
        self.history = sql.Identifier(settings.history_schema, settings.history_table)

    def _connect(self) -> psycopg.Connection[Any]:
        connection = PostgresHook(postgres_conn_id=self.conn_id).get_conn()
        connection.autocommit = True
        connection.row_factory = tuple_row
        return connection

    def ensure_history(self) -> None:
        """Create the history schema and table when missing."""
        with self._connect() as connection:
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
        with self._connect() as connection:
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

    def validate(self, migrations: Sequence[Migration]) -> list[Migration]:
        """Check the files against the history and return the pending ones, in order.

        Raises :class:`MigrationError` naming the file when an applied file changed or is missing,
        or when a pending version is lower than the highest applied one.
        """
        with self._connect() as connection:
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

    def apply(self, migrations: Sequence[Migration], run_id: str) -> list[str]:
        """Apply the pending migrations in order under the advisory lock; return their versions.

        A second run against the same database waits for the lock, then finds nothing pending.
        """
        connection = self._connect()
        key = advisory_lock_key(self.settings.history_schema, self.settings.history_table)
        try:
            connection.execute("SELECT pg_advisory_lock(%s)", (key,))
            try:
                self._ensure_history(connection)
                pending = self._validate(migrations, self._applied(connection))
                applied = []
                for migration in pending:
                    self._set_timeouts(connection)
                    self._apply_one(connection, migration, run_id)
                    applied.append(migration.version_text)
                return applied
            finally:
                if not connection.closed and not connection.broken:
                    connection.execute("SELECT pg_advisory_unlock(%s)", (key,))
        finally:
            connection.close()

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

    @staticmethod
    def plan_markdown(pending: Sequence[Migration]) -> str:
        """The pending migrations with their SQL, for the approver to read."""
        if not pending:
            return "No pending migrations: the database is up to date."
        sections = [f"**{len(pending)} pending migration{'s' if len(pending) != 1 else ''}**, in order:"]
        for migration in pending:
            fence = "`" * max(3, _longest_backtick_run(migration.sql) + 1)
            mode = "" if migration.transactional else " (runs outside a transaction)"
            sections.append(
                f"### V{migration.version_text}: {migration.description}{mode}\n\n"
                f"`{migration.filename}`\n\n{fence}sql\n{migration.sql.rstrip()}\n{fence}"
            )
        return "\n\n".join(sections) + "\n"


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)
