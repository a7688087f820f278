"""Restoring an environment's database from a backup, without ever losing the database it replaces.

The backup is restored into a new database next to the live one and checked (SHA-256 of every
file before, row counts against the manifest after). Only then are the two swapped by renaming:
the live database becomes ``<db>_before_restore_<stamp>`` and is kept, the restored one takes its
name. The environment's SQL smoke tests then run against it; if one fails, the swap is undone.
A failure before the swap leaves the live database untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from time import monotonic, sleep
from typing import Any

from psycopg import sql

from airlock.config import Environment, SqlSmokeTest
from airlock.tasks.backup import (
    BackupError,
    BackupManifest,
    BackupStore,
    DatabaseAddress,
    backup_settings,
    check_files,
    compare_row_counts,
    count_rows,
    newest_verified,
    restore_into,
)
from airlock.tasks.smoke import SmokeTestFailed, run_sql_test

log = logging.getLogger(__name__)


def choose_backup(environment: Environment, name: str | None) -> BackupManifest:
    """The named backup, or the newest verified one."""
    if name:
        return BackupStore.of(environment).manifest(name)
    newest = newest_verified(environment)
    if newest is None:
        raise BackupError(f"{environment.name} has no verified backup to restore")
    return newest


@dataclass(frozen=True)
class RestorePlan:
    environment: str
    database: str
    backup: dict[str, Any]
    triggered_by: str
    reason: str

    def to_markdown(self) -> str:
        backup = self.backup
        verified = (
            f"verified at {backup['verified_at']}"
            if backup["verified_at"]
            else "**not verified**: its checksums and row counts are checked before the swap"
        )
        return "\n".join(
            [
                f"## Restore the {self.environment} database `{self.database}`",
                "",
                f"- Requested by **{self.triggered_by}**" + (f": {self.reason}" if self.reason else ""),
                f"- Backup `{backup['name']}` ({backup['kind']}), taken {backup['finished_at']}, {verified}",
                f"- {backup['tables']} tables, {backup['rows']} rows, {backup['bytes']} bytes",
                "",
                "### What happens",
                "",
                f"1. A safety backup of `{self.database}` as it is now (kind pre-restore).",
                f"2. The backup is restored into a new database next to `{self.database}`; its row counts "
                "must equal the backup's manifest. Nothing live changes until here.",
                f"3. Swap: `{self.database}` is renamed `{self.database}_before_restore_<time>` and kept; "
                "the restored database takes its name. Open connections are closed; applications reconnect.",
                "4. The environment's SQL smoke tests run; if one fails the swap is undone.",
                "",
                f"**Writes made after {backup['finished_at']} will not be in `{self.database}`** "
                "(they stay in the kept database).",
            ]
        )


def _database_owner(admin: DatabaseAddress, database: str) -> str:
    with admin.connect(autocommit=True) as connection:
        row = connection.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
    if row is None:
        raise BackupError(f"Database {database} does not exist on {admin.host}:{admin.port}")
    return row[0]


def _sibling(database: str, suffix: str) -> str:
    """``<database><suffix>`` within PostgreSQL's 63-byte limit (it would cut the name silently)."""
    return database.encode()[: 63 - len(suffix.encode())].decode(errors="ignore") + suffix


def _swap(admin: DatabaseAddress, closing: str, renames: list[tuple[str, str]]) -> None:
    """Close ``closing`` to new sessions, end its sessions, apply ``renames`` in one transaction.

    Either every rename happens or none does; whatever name ``closing`` ends up with, it is open
    to connections again afterwards (found by its OID, not by a name that may not exist).
    """
    with admin.connect(autocommit=True) as connection:
        row = connection.execute("SELECT oid FROM pg_database WHERE datname = %s", (closing,)).fetchone()
        if row is None:
            raise BackupError(f"Database {closing} does not exist")
        oid = row[0]
        connection.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(closing))
        )
        try:
            renamed = [source for source, _ in renames]
            deadline = monotonic() + 30
            while connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
                (renamed,),
            ).fetchone()[0]:
                if monotonic() > deadline:
                    raise BackupError(
                        f"Sessions of {', '.join(renamed)} did not end within 30 s; nothing was renamed"
                    )
                connection.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    (closing,),
                )
                sleep(0.2)
            with connection.transaction():
                for source, target in renames:
                    connection.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                            sql.Identifier(source), sql.Identifier(target)
                        )
                    )
        finally:
            (current,) = connection.execute(
                "SELECT datname FROM pg_database WHERE oid = %s", (oid,)
            ).fetchone()
            connection.execute(
                sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(current))
            )


def restore_database(environment: Environment, name: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Restore backup ``name`` in place of the environment's database; see the module docstring."""
    settings = backup_settings(environment)
    store = BackupStore.of(environment)
    manifest = store.manifest(name)
    live = DatabaseAddress.of(environment.database.conn_id)
    admin = live.on("postgres")
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    restored_name = _sibling(live.dbname, f"_restore_{stamp}")
    kept_name = _sibling(live.dbname, f"_before_restore_{stamp}")
    owner = _database_owner(admin, live.dbname)

    with store.local_copy(name) as directory:
        check_files(directory, manifest)
        with admin.connect(autocommit=True) as connection:
            connection.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 OWNER {}").format(
                    sql.Identifier(restored_name), sql.Identifier(owner)
                )
            )
        try:
            restore_into(
                directory,
                manifest,
                live.on(restored_name),
                jobs=settings.jobs,
                timeout=settings.timeout,
                keep_ownership=True,  # the application's grants come back with its tables
            )
            compare_row_counts(manifest, count_rows(live.on(restored_name), settings.jobs))
        except BaseException:
            with admin.connect(autocommit=True) as connection:
                connection.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(restored_name))
                )
            raise
    log.info("Backup %s restored into %s with equal row counts; swapping", name, restored_name)

    _swap(admin, live.dbname, [(live.dbname, kept_name), (restored_name, live.dbname)])
    log.info("%s now holds backup %s; the previous database is kept as %s", live.dbname, name, kept_name)

    results = [
        run_sql_test(test, environment.database.conn_id)
        for test in environment.smoke_tests
        if isinstance(test, SqlSmokeTest)
    ]
    failures = [r for r in results if not r.passed]
    if failures:
        failed_name = _sibling(live.dbname, f"_failed_restore_{stamp}")
        _swap(admin, live.dbname, [(live.dbname, failed_name), (kept_name, live.dbname)])
        raise SmokeTestFailed(
            f"SQL smoke test(s) failed on the restored database, so the swap was undone: {live.dbname} "
            f"is as before and the restored copy is kept as {failed_name}: "
            + "; ".join(f"{r.test}: {r.detail}" for r in failures)
        )
    return {
        "database": live.dbname,
        "backup": manifest.summary(),
        "previous_kept_as": kept_name,
        "smoke_tests": [f"{r.test}: {r.detail}" for r in results],
    }
