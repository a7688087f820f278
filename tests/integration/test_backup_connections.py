"""How backups reach their servers: verify-by-restore through ``backup.verify_conn_id``, scratch
databases of dead verifications dropped (and only those), SSL settings passed to ``pg_dump``.

Against the shared PostgreSQL server (no SSL there: ``sslmode=require`` must fail, and say why).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import psycopg
import pytest

from airlock.config import Environment
from airlock.core.backups import BackupError
from airlock.hooks import postgres
from airlock.hooks.backup_store import BackupStore
from airlock.tasks import backup as backup_steps
from airlock.tasks.backup import take_backup, verify_backup
from tests.support import load_dag, run_dag

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def databases(pattern: str) -> list[str]:
    with psycopg.connect(ADMIN) as connection:
        rows = connection.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1", (pattern,)
        ).fetchall()
    return [name for (name,) in rows]


def create_database(name: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as connection:
        connection.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as connection:
        connection.execute(
            psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name))
        )


@pytest.fixture
def application(monkeypatch):
    """A fresh application database with one table, as ``airlock_demo_db``'s twin ``airlock_app_db``."""
    name = f"airlock_test_app_{uuid.uuid4().hex[:8]}"
    create_database(name)
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}", autocommit=True) as connection:
        connection.execute("CREATE TABLE accounts (id int PRIMARY KEY, email text)")
        connection.execute(
            "INSERT INTO accounts SELECT i, 'user' || i || '@example.com' FROM generate_series(1, 300) i"
        )
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOCK_APP_DB", _connection(name))
    yield name
    drop_database(name)


def _connection(database: str, login: str = "postgres", **extra: str) -> str:
    return json.dumps(
        {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": 5432,
            "login": login,
            "schema": database,
            "extra": extra,
        }
    )


def _environment(environment: Environment, name: str, **backup: object) -> Environment:
    """The sandbox as another environment (its own backups) on ``airlock_app_db``."""
    return Environment.model_validate(
        {
            **environment.model_dump(),
            "name": name,
            "database": {**environment.database.model_dump(), "conn_id": "airlock_app_db"},
            "backup": {**environment.backup.model_dump(), **backup},
        }
    )


def test_verify_restores_into_a_scratch_database_created_by_the_verify_connection_role(
    environment, application, monkeypatch
):
    verifier = f"airlock_test_verifier_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as connection:
        connection.execute(
            psycopg.sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(psycopg.sql.Identifier(verifier))
        )
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOCK_VERIFY", _connection("postgres", login=verifier))
    separate = _environment(environment, "verifyrole", verify_conn_id="airlock_verify")
    seen: list[tuple[str, str, str]] = []
    count_rows = backup_steps.count_rows

    def count_rows_noting_the_owner(database, jobs):
        """The real row count, noting who owns the scratch database while it exists."""
        with psycopg.connect(ADMIN) as connection:
            (owner,) = connection.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database.dbname,)
            ).fetchone()
        seen.append((database.dbname, database.user, owner))
        return count_rows(database, jobs)

    monkeypatch.setattr(backup_steps, "count_rows", count_rows_noting_the_owner)
    backup = take_backup(separate, kind="manual")
    try:
        verified = verify_backup(separate, backup.name)

        assert verified.verified
        assert verified.row_counts == {"public.accounts": 300}
        [(scratch, user, owner)] = seen
        assert scratch.startswith("airlock_verify_verifyrole_")
        assert (user, owner) == (verifier, verifier)
        assert databases("airlock_verify_verifyrole_%") == []  # dropped after the verification
    finally:
        BackupStore.of(separate).remove(backup.name)
        with psycopg.connect(ADMIN, autocommit=True) as connection:
            connection.execute(psycopg.sql.SQL("DROP ROLE {}").format(psycopg.sql.Identifier(verifier)))


def test_the_next_backup_drops_a_dead_verifications_scratch_database_and_only_it(
    environment, customers_table, redis_client, slack_messages
):
    dead = "airlock_verify_sandbox_deadbeef"  # named as a killed verification leaves it
    live = "airlock_verify_sandbox_0badf00d"  # a verification still at work holds its lock
    neighbours = ["airlock_verify_sandbox-eu_deadbeef", "airlock_verify_sandbox_deadbeef_app"]
    for name in (dead, live, *neighbours):
        create_database(name)
    verifying = psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{customers_table}", autocommit=True)
    verifying.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (live,))
    try:
        _, states, _ = run_dag(load_dag(f"backup_{environment.name}"), {})

        assert states["verify"] == "success", states
        assert databases("airlock_verify_%") == sorted([live, *neighbours])
    finally:
        verifying.close()
        for name in (dead, live, *neighbours):
            drop_database(name)


@pytest.fixture
def customers_table(postgres_url) -> str:
    """The session's application database (what the sandbox's backups dump), by name."""
    return postgres_url.rsplit("/", 1)[1]


def test_ssl_settings_of_the_connection_reach_pg_dump(environment, application, monkeypatch):
    """``sslmode=disable`` dumps; ``require`` fails saying the server has no SSL (it has none)."""
    plain = _environment(environment, "sslplain")
    monkeypatch.setenv("AIRFLOW_CONN_AIRLOCK_APP_DB", _connection(application, sslmode="disable"))
    backup = take_backup(plain, kind="manual")
    BackupStore.of(plain).remove(backup.name)
    assert backup.row_counts == {"public.accounts": 300}

    monkeypatch.setenv("AIRFLOW_CONN_AIRLOCK_APP_DB", _connection(application, sslmode="require"))
    with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
        take_backup(plain, kind="manual")
    with pytest.raises(BackupError, match=r"pg_dump failed .*server does not support SSL"):
        postgres.run_client_tool(
            [postgres.client_tool("pg_dump"), "--no-password", "--schema-only", "--file=/dev/null"],
            env=postgres.DatabaseAddress.of("airlock_app_db").libpq_env(),
            timeout=timedelta(seconds=30),
        )
    assert BackupStore.of(plain).backups() == []
