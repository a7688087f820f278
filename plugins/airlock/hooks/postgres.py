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
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from airlock.config import PROJECT_ROOT
from airlock.core.backups import BackupError
from airlock.core.restore import CREATE_OPTIONS, AdminRights, database_entries

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
    def of(cls, conn_id: str, *, default_dbname: str | None = None) -> DatabaseAddress:
        """The address of ``conn_id``; its schema field names the database, or ``default_dbname``."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        connection = PostgresHook.get_connection(conn_id)
        dbname = connection.schema or default_dbname
        if not dbname:
            raise BackupError(f"Connection {conn_id} names no database (its schema field is empty)")
        extra = connection.extra_dejson or {}
        return cls(
            host=connection.host or "localhost",
            port=connection.port or 5432,
            user=connection.login or "postgres",
            password=connection.password or None,
            dbname=dbname,
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


def create_database(
    admin: DatabaseAddress, name: str, *, owner: str | None = None, options: Mapping[str, str] | None = None
) -> None:
    """``CREATE DATABASE name`` from ``template0`` (empty), owned by ``owner`` or the admin's role.

    ``options``: CREATE DATABASE options (names from :data:`airlock.core.restore.CREATE_OPTIONS`,
    e.g. ``ENCODING``, ``LOCALE``), each value passed as a literal; without them the server's defaults.
    """
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    for option, value in (options or {}).items():
        if option not in CREATE_OPTIONS:
            raise BackupError(f"CREATE DATABASE option {option} is not one a restore sets")
        statement = sql.SQL("{} {} {}").format(statement, sql.SQL(option), sql.Literal(value))
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


def admin_rights(admin: DatabaseAddress, owner: str) -> AdminRights:
    """The admin role's rights that a restore's create and swap need, read from the catalog."""
    with admin.connect(autocommit=True) as connection:
        row = connection.execute(
            "SELECT rolname, rolsuper, rolcreatedb, pg_has_role(current_user, %s, 'MEMBER'), "
            "pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') "
            "FROM pg_roles WHERE rolname = current_user",
            (owner,),
        ).fetchone()
    return AdminRights(*row)


def database_names(admin: DatabaseAddress) -> list[str]:
    """Every database on the admin's server."""
    with admin.connect(autocommit=True) as connection:
        return [name for (name,) in connection.execute("SELECT datname FROM pg_database ORDER BY 1")]


def reopen_database(admin: DatabaseAddress, name: str) -> bool:
    """Allow connections to ``name`` again if something closed it (``datallowconn = false``).

    True when it had been closed. Earlier Airlock versions closed the live database during a swap;
    one killed there left it refusing every client.
    """
    with admin.connect(autocommit=True) as connection:
        row = connection.execute(
            "SELECT datallowconn FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if row is None or row[0]:
            return False
        connection.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(name))
        )
    return True


# How often a rename retries after ending its database's sessions (each try waits up to 5 s for
# sessions that reconnected in between: PostgreSQL's own wait inside ALTER DATABASE ... RENAME).
RENAME_ATTEMPTS = 6
SWAP_TIMEOUTS = {
    # A swap whose client died mid-transaction: the server rolls it back and frees the renamed
    # databases' locks (new sessions wait on them) within this, even if no FIN ever arrives.
    "idle_in_transaction_session_timeout": timedelta(seconds=15),
    "statement_timeout": timedelta(seconds=60),
}


def swap_databases(
    admin: DatabaseAddress,
    renames: Sequence[tuple[str, str]],
    *,
    properties: bytes = b"",
    encoding: str = "UTF8",
) -> None:
    """Apply ``renames`` in order, then run ``properties`` (SQL), all in one transaction.

    Crash-safe by construction: no database is ever closed to connections (``ALLOW_CONNECTIONS``
    is never touched), and nothing is committed before the end. A process killed at any point
    leaves every database as it was: the server rolls back the transaction of a client that went
    away (or went silent, after ``idle_in_transaction_session_timeout``). Each rename ends the
    sessions of the database it renames, then holds that database's lock until the commit, so a
    client connecting meanwhile waits and then reaches the database that holds the name.

    ``properties``: statements about the database that takes the live name (its ACL, settings,
    comment), in ``encoding``; see :class:`airlock.core.restore.DatabaseProperties`.
    """
    with admin.connect(autocommit=True) as connection:
        for name, value in SWAP_TIMEOUTS.items():
            connection.execute("SELECT set_config(%s, %s, false)", (name, _milliseconds(value)))
        with connection.transaction():
            for source, target in renames:
                rename_database(connection, source, target)
            if properties:
                apply_database_properties(connection, properties, encoding)


def end_sessions(connection: psycopg.Connection[Any], database: str) -> None:
    """Terminate every other session on ``database``, waiting up to 5 s for each to exit."""
    connection.execute("SELECT pg_stat_clear_snapshot()")  # pg_stat_activity is cached per transaction
    connection.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    )


def rename_database(connection: psycopg.Connection[Any], source: str, target: str) -> None:
    """``ALTER DATABASE source RENAME TO target`` inside the caller's transaction, ending sessions first.

    A session that connects between the ending and the rename makes the rename fail; it is retried
    (from a savepoint) a few times. Once it succeeded, the lock it took keeps new sessions out.
    """
    statement = sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
        sql.Identifier(source), sql.Identifier(target)
    )
    for _ in range(RENAME_ATTEMPTS):
        end_sessions(connection, source)
        try:
            with connection.transaction():
                connection.execute(statement)
            return
        except psycopg.errors.ObjectInUse:
            continue
    raise BackupError(
        f"Sessions of {source} kept coming back while it was renamed ({RENAME_ATTEMPTS} tries); "
        "nothing was renamed and every database is as it was"
    )


def apply_database_properties(connection: psycopg.Connection[Any], statements: bytes, encoding: str) -> None:
    """Run pg_dump's statements about a database (in the archive's ``encoding``) in this transaction."""
    connection.execute("SELECT set_config('client_encoding', %s, true)", (encoding,))
    connection.execute(statements)  # several statements: sent as one simple query, as pg_dump wrote them


def archived_database_properties(dump: Path, *, timeout: timedelta) -> bytes | None:
    """What ``pg_restore --create`` would run about the database itself (not its objects), or None
    when the archive holds no such entries (dumps of pg_dump before version 11)."""
    tool = client_tool("pg_restore")
    listing = subprocess.run(
        [tool, "--create", "--list", str(dump)],
        capture_output=True,
        text=True,
        timeout=timeout.total_seconds(),
        check=False,
    )
    if listing.returncode != 0:
        raise BackupError(f"pg_restore --list of {dump.name} failed: {_error_tail(listing.stderr)}")
    entries = database_entries(listing.stdout)
    if not entries:
        return None
    with tempfile.TemporaryDirectory(prefix="airlock-restore-") as directory:
        selection = Path(directory) / "database-entries.list"
        selection.write_text("\n".join(entries) + "\n")
        script = Path(directory) / "database-entries.sql"
        run_client_tool(
            [tool, "--create", f"--use-list={selection}", f"--file={script}", str(dump)],
            env=dict(os.environ),
            timeout=timeout,
        )
        return script.read_bytes()


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
