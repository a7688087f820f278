"""PostgreSQL sessions: the one place an Airflow Postgres connection id becomes a database session.

Every reader and writer of an environment's databases (the application database, the ops tables,
maintenance sessions, smoke queries, health probes) comes through here, so timeouts, autocommit
and the ``application_name`` seen in ``pg_stat_activity`` are set in one way.

Backups and restores reach a server through a :class:`DatabaseAddress` instead (read once from
the connection): ``pg_dump`` and ``pg_restore`` need it as libpq environment variables, and
restores open sessions on sibling databases of the connection's one (``postgres``, scratch and
restored copies). Their tool runners, database creation, renaming and row counting live here too.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from time import monotonic, sleep
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from airlock.config import PROJECT_ROOT
from airlock.core.backups import BackupError

log = logging.getLogger(__name__)

# Every ordinary user table: what a backup counts and its verification compares.
ROW_COUNT_TABLES = (PROJECT_ROOT / "include" / "sql" / "backup_tables.sql").read_text()
BACKUP_APPLICATION_NAME = "airlock-backup"


def _milliseconds(value: timedelta) -> str:
    return f"{int(value.total_seconds() * 1000)}ms"


@contextmanager
def session(
    conn_id: str,
    *,
    autocommit: bool = False,
    rows_as_dicts: bool = False,
    application_name: str | None = None,
    timeouts: Mapping[str, timedelta] | None = None,
) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection for ``conn_id``, closed on exit.

    Without autocommit the block runs in one transaction, committed when it ends and rolled back
    when it raises. ``timeouts`` maps settings such as ``lock_timeout`` or ``statement_timeout``
    to their values for this session.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    connection = PostgresHook(postgres_conn_id=conn_id).get_conn()
    try:
        connection.autocommit = autocommit
        if rows_as_dicts:
            connection.row_factory = dict_row
        settings = {name: _milliseconds(value) for name, value in (timeouts or {}).items()}
        if application_name:
            settings["application_name"] = application_name
        for name, value in settings.items():
            connection.execute("SELECT set_config(%s, %s, false)", (name, value))
        if autocommit:
            yield connection
        else:
            with connection.transaction():
                yield connection
            connection.commit()
    finally:
        connection.close()


def first_row(conn_id: str, query: str, parameters: Sequence[Any] | Mapping[str, Any] | None = None) -> Any:
    """The first row of ``query`` (a tuple), or None when it returns no rows."""
    with session(conn_id, autocommit=True) as connection:
        return connection.execute(query, parameters).fetchone()


# -- addresses and sessions of backups and restores ----------------------------------------------


#: The SSL settings of a connection's extra that reach every libpq client Airlock runs, as the
#: environment variables libpq reads (never a command-line argument: ``ps`` would show them).
SSL_SETTINGS = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
}


@dataclass(frozen=True)
class DatabaseAddress:
    """How libpq reaches one database of an Airflow Postgres connection; the password stays in env.

    ``ssl`` holds the connection extra's SSL settings (:data:`SSL_SETTINGS`), as (name, value).
    """

    host: str
    port: int
    user: str
    password: str | None = field(repr=False)
    dbname: str
    ssl: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, conn_id: str) -> DatabaseAddress:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        connection = PostgresHook.get_connection(conn_id)
        if not connection.schema:
            raise BackupError(f"Connection {conn_id} names no database (its schema field is empty)")
        extra = connection.extra_dejson or {}
        return cls(
            host=connection.host or "localhost",
            port=connection.port or 5432,
            user=connection.login or "postgres",
            password=connection.password or None,
            dbname=connection.schema,
            ssl=tuple((name, str(extra[name])) for name in SSL_SETTINGS if extra.get(name) not in (None, "")),
        )

    def on(self, dbname: str) -> DatabaseAddress:
        """The same server and role, another database."""
        return replace(self, dbname=dbname)

    def libpq_env(self) -> dict[str, str]:
        """This process's environment with the libpq variables of this address (for pg_dump/pg_restore).

        Every ``PG*`` variable this process has is dropped first, so only this address's settings
        (and none of the worker's own) reach the tool.
        """
        env = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
        env.update(
            PGHOST=self.host,
            PGPORT=str(self.port),
            PGUSER=self.user,
            PGDATABASE=self.dbname,
            PGAPPNAME=BACKUP_APPLICATION_NAME,
            PGCONNECT_TIMEOUT="10",
        )
        if self.password:
            env["PGPASSWORD"] = self.password
        env.update({SSL_SETTINGS[name]: value for name, value in self.ssl})
        return env

    def connect(self, **options: Any) -> psycopg.Connection[Any]:
        ssl = dict(self.ssl)
        ssl.setdefault("sslmode", "prefer")
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.dbname,
            application_name=BACKUP_APPLICATION_NAME,
            connect_timeout=10,
            **ssl,
            **options,
        )


def create_database(admin: DatabaseAddress, name: str, *, owner: str | None = None) -> None:
    """``CREATE DATABASE name`` from ``template0`` (empty), owned by ``owner`` or the admin's role."""
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    if owner is not None:
        statement = sql.SQL("{} OWNER {}").format(statement, sql.Identifier(owner))
    with admin.connect(autocommit=True) as connection:
        connection.execute(statement)


def drop_database(admin: DatabaseAddress, name: str) -> None:
    """Drop ``name`` if it exists, ending its sessions."""
    with admin.connect(autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


#: The key space of the advisory locks a verification holds on its scratch database's name.
_SCRATCH_LOCK = "SELECT pg_advisory_lock(hashtextextended(%s, 0))"
_SCRATCH_TRY_LOCK = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
_SCRATCH_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended(%s, 0))"


def _drop_forced(name: str) -> sql.Composed:
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))


def verify_database_pattern(environment: str) -> str:
    """The names of ``environment``'s scratch databases, as a regular expression.

    ``airlock_verify_<environment>_<8 hex digits>``: environment names have no ``_``, so one
    environment's pattern never matches another's (``prod`` and ``prod-eu``), and nothing but a
    verification names a database so.
    """
    return rf"^airlock_verify_{re.escape(environment)}_[0-9a-f]{{8}}$"


@contextmanager
def verify_scratch_database(server: DatabaseAddress, environment: str) -> Iterator[DatabaseAddress]:
    """A new empty database on ``server`` to test-restore ``environment``'s backup into, dropped
    afterwards whatever happened.

    Created, dropped and held through ``server`` (the session opens on the database it names). For
    as long as it exists, that session holds an advisory lock on its name, so a run that died
    with its database still there is told apart from one still verifying
    (:func:`drop_abandoned_verify_databases`): PostgreSQL frees a dead session's locks.
    """
    name = f"airlock_verify_{environment}_{uuid.uuid4().hex[:8]}"
    with server.connect(autocommit=True) as holder:
        holder.execute(_SCRATCH_LOCK, (name,))
        holder.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        try:
            yield server.on(name)
        finally:
            holder.execute(_drop_forced(name))
            holder.execute(_SCRATCH_UNLOCK, (name,))


def drop_abandoned_verify_databases(server: DatabaseAddress, environment: str) -> list[str]:
    """Drop ``environment``'s scratch databases on ``server`` that no live verification holds
    (their run was killed before it could drop them); returns their names."""
    dropped = []
    with server.connect(autocommit=True) as connection:
        names = [
            name
            for (name,) in connection.execute(
                "SELECT datname FROM pg_database WHERE datname ~ %s ORDER BY datname",
                (verify_database_pattern(environment),),
            )
        ]
        for name in names:
            if not connection.execute(_SCRATCH_TRY_LOCK, (name,)).fetchone()[0]:
                continue  # a verification is using it
            try:
                connection.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
                dropped.append(name)
                log.warning("Dropped scratch database %s, left by a verification that died", name)
            finally:
                connection.execute(_SCRATCH_UNLOCK, (name,))
    return dropped


def database_owner(admin: DatabaseAddress, database: str) -> str:
    """The role owning ``database``; a :class:`BackupError` when there is no such database."""
    with admin.connect(autocommit=True) as connection:
        row = connection.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
    if row is None:
        raise BackupError(f"Database {database} does not exist on {admin.host}:{admin.port}")
    return row[0]


def rename_databases(admin: DatabaseAddress, closing: str, renames: Sequence[tuple[str, str]]) -> None:
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


# -- row counts -----------------------------------------------------------------------------------


def _count_tables(connection: psycopg.Connection[Any], tables: Sequence[tuple[str, str]]) -> dict[str, int]:
    return {
        f"{schema}.{table}": connection.execute(
            sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, table))
        ).fetchone()[0]
        for schema, table in tables
    }


def row_counts(connection: psycopg.Connection[Any]) -> dict[str, int]:
    """Exact row count of every user table, in the connection's current transaction."""
    return _count_tables(connection, connection.execute(ROW_COUNT_TABLES).fetchall())


def count_rows(database: DatabaseAddress, jobs: int) -> dict[str, int]:
    """Exact row count of every user table, counted over ``jobs`` connections side by side."""
    with database.connect() as connection:
        tables = connection.execute(ROW_COUNT_TABLES).fetchall()

    def count(chunk: list[tuple[str, str]]) -> dict[str, int]:
        with database.connect() as connection:
            return _count_tables(connection, chunk)

    chunks = [tables[index::jobs] for index in range(jobs) if tables[index::jobs]]
    with ThreadPoolExecutor(max_workers=max(len(chunks), 1)) as pool:
        return {table: n for counted in pool.map(count, chunks) for table, n in counted.items()}


# -- pg_dump and pg_restore -----------------------------------------------------------------------


def client_tool(name: str) -> str:
    """The path of a PostgreSQL client tool (``pg_dump``, ``pg_restore``) on this worker."""
    path = shutil.which(name)
    if path is None:
        raise BackupError(
            f"{name} is not installed on this worker: install the PostgreSQL client tools "
            "(package postgresql-client) of the server's major version or newer"
        )
    return path


def tool_version(tool: str) -> str:
    """What ``<tool> --version`` prints, e.g. ``pg_dump (PostgreSQL) 16.4``."""
    result = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


def _error_tail(stderr: str) -> str:
    return "\n".join(stderr.strip().splitlines()[-5:])


def run_client_tool(argv: Sequence[str], env: dict[str, str], timeout: timedelta) -> None:
    """Run pg_dump/pg_restore; on failure raise with the tail of its error output (never the env)."""
    log.info("Running %s", " ".join(argv))
    result = subprocess.run(
        list(argv), env=env, capture_output=True, text=True, timeout=timeout.total_seconds(), check=False
    )
    if result.returncode != 0:
        tail = _error_tail(result.stderr)
        raise BackupError(f"{Path(argv[0]).name} failed (exit {result.returncode}): {tail}")


@dataclass(frozen=True)
class SnapshotDump:
    """What :func:`dump_snapshot` learnt while dumping: all of it from the dumped snapshot."""

    database: str
    server_version: str
    row_counts: dict[str, int]


def dump_snapshot(
    source: DatabaseAddress,
    output: Path,
    *,
    pg_dump: str,
    dump_format: str,
    compression: int,
    jobs: int,
    timeout: timedelta,
) -> SnapshotDump:
    """``pg_dump`` ``source`` into ``output`` from a snapshot this session exports, counting rows in it.

    The row counts are taken side by side with the dump, in the very snapshot the dump saves, so
    they are exactly what a restore of this dump holds, even on a busy database.
    """
    argv = [
        pg_dump,
        "--no-password",
        f"--format={dump_format}",
        f"--compress={compression}",
        f"--file={output}",
    ]
    if dump_format == "directory":
        argv.append(f"--jobs={jobs}")
    with source.connect(autocommit=True) as connection:
        connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot, database, server_version = connection.execute(
            "SELECT pg_export_snapshot(), current_database(), current_setting('server_version')"
        ).fetchone()
        argv.append(f"--snapshot={snapshot}")
        log.info("Dumping %s (PostgreSQL %s) from snapshot %s", database, server_version, snapshot)
        dump = subprocess.Popen(
            argv,
            env=source.libpq_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            counts = row_counts(connection)  # side by side with the dump, same snapshot
            _, errors = dump.communicate(timeout=timeout.total_seconds())
        except BaseException:
            dump.kill()
            dump.wait()
            raise
        connection.execute("COMMIT")
    if dump.returncode != 0:
        raise BackupError(f"pg_dump of {database} failed (exit {dump.returncode}): {_error_tail(errors)}")
    return SnapshotDump(database=database, server_version=server_version, row_counts=counts)


def pg_restore(
    dump: Path,
    target: DatabaseAddress,
    *,
    jobs: int,
    timeout: timedelta,
    keep_ownership: bool,
) -> None:
    """``pg_restore`` ``dump`` into the (empty) database ``target``, stopping at the first error.

    ``keep_ownership``: restore owners and grants as dumped (a real restore); without it every
    object belongs to the restoring role (a scratch copy for verification).
    """
    privileges = [] if keep_ownership else ["--no-owner", "--no-acl"]
    run_client_tool(
        [
            client_tool("pg_restore"),
            "--no-password",
            "--exit-on-error",
            *privileges,
            f"--jobs={jobs}",
            f"--dbname={target.dbname}",
            str(dump),
        ],
        env=target.libpq_env(),
        timeout=timeout,
    )
