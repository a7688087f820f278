"""``restore_<env>`` reproduces the database itself, swaps without ever closing it, and uses its
own admin connection, against the real PostgreSQL server.

Each test makes a database of its own (with the encoding, locale, grants or owner it needs) and
an environment whose ``database.conn_id`` points at it; the environment's backups go to the
session's backup directory and are removed afterwards.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from airlock.config import Environment
from airlock.core.backups import BackupError
from airlock.hooks.backup_store import BackupStore
from airlock.hooks.postgres import DatabaseAddress, swap_databases
from airlock.tasks.backup import take_backup
from airlock.tasks.restore import restore_database

SERVER = "postgresql://postgres@127.0.0.1:5432"
ADMIN = f"{SERVER}/postgres"
WORDS = ["b", "A", "a", "B", "é", "E"]  # sorts differently under C and a French ICU collation


def admin_execute(*statements: str) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement)


def databases_like(prefix: str) -> list[str]:
    with psycopg.connect(ADMIN) as connection:
        rows = connection.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1", (prefix,)
        ).fetchall()
    return [name for (name,) in rows]


def drop_databases(prefix: str) -> None:
    for name in databases_like(prefix):
        admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_facts(name: str) -> dict:
    """What a user compares before and after a restore: pg_database, pg_db_role_setting, the comment."""
    with psycopg.connect(ADMIN) as connection:
        row = connection.execute(
            "SELECT pg_encoding_to_char(encoding), datcollate, datctype, datlocprovider, daticulocale, "
            "datconnlimit, pg_get_userbyid(datdba), "
            "(SELECT array_agg(a::text ORDER BY a::text) FROM unnest(datacl) AS a), "
            "shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
        settings = connection.execute(
            "SELECT coalesce(pg_get_userbyid(nullif(s.setrole, 0)), '(every role)'), s.setconfig "
            "FROM pg_db_role_setting AS s JOIN pg_database AS d ON d.oid = s.setdatabase "
            "WHERE d.datname = %s ORDER BY 1",
            (name,),
        ).fetchall()
    keys = ["encoding", "collate", "ctype", "provider", "icu_locale", "connlimit", "owner", "acl", "comment"]
    return {**dict(zip(keys, row, strict=True)), "settings": settings}


def sorted_words(url: str) -> list[str]:
    with psycopg.connect(url) as connection:
        return [word for (word,) in connection.execute("SELECT word FROM words ORDER BY word")]


def environment_on(environment: Environment, conn_id: str, smoke_tests=(), **backup) -> Environment:
    """The sandbox environment with its database (backup settings, smoke tests) replaced."""
    return Environment.model_validate(
        {
            **environment.model_dump(),
            "database": {**environment.database.model_dump(), "conn_id": conn_id},
            "backup": {**environment.backup.model_dump(), **backup},
            "smoke_tests": list(smoke_tests),
        }
    )


@pytest.fixture
def connect_as(monkeypatch):
    """Define an Airflow connection to the local server for this test: (conn_id, database, login)."""

    def connect(conn_id: str, dbname: str | None, login: str = "postgres", host: str = "127.0.0.1") -> None:
        connection = {"conn_type": "postgres", "host": host, "port": 5432, "login": login}
        if dbname:
            connection["schema"] = dbname
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))

    return connect


@pytest.fixture
def own_database(environment, redis_client, connect_as):
    """A fresh database name with its connection; its databases, backups and roles go afterwards."""
    name = f"airlock_r15_{uuid.uuid4().hex[:8]}"
    conn_id = f"airlock_r15_{uuid.uuid4().hex[:8]}"
    connect_as(conn_id, name)
    roles: list[str] = []
    made = {"name": name, "conn_id": conn_id, "roles": roles}
    yield made
    drop_databases(name)
    for backup in BackupStore.of(environment).backups():
        if backup.database == name:
            BackupStore.of(environment).remove(backup.name)
    for role in roles:
        admin_execute(f"DROP ROLE IF EXISTS {role}")


@pytest.mark.parametrize(
    "create_options",
    [
        pytest.param("ENCODING 'LATIN1' LOCALE 'C'", id="latin1-c"),
        pytest.param(
            "ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'fr' LC_COLLATE 'C' LC_CTYPE 'C.UTF-8'",
            id="utf8-icu-fr",
        ),
    ],
)
def test_a_restore_reproduces_encoding_locale_acl_and_per_database_settings(
    environment, own_database, create_options
):
    name = own_database["name"]
    suffix = uuid.uuid4().hex[:6]
    reader, writer = f"airlock_r15_reader_{suffix}", f"airlock_r15_writer_{suffix}"
    own_database["roles"].extend([reader, writer])
    admin_execute(
        f"CREATE ROLE {reader}",
        f"CREATE ROLE {writer}",
        f"CREATE DATABASE {name} TEMPLATE template0 {create_options}",
        f"REVOKE CONNECT, TEMPORARY ON DATABASE {name} FROM PUBLIC",
        f"GRANT CONNECT ON DATABASE {name} TO {reader}",
        f"GRANT CONNECT, CREATE ON DATABASE {name} TO {writer} WITH GRANT OPTION",
        f'ALTER DATABASE {name} SET search_path = "$user", public, reporting',
        f"ALTER DATABASE {name} SET statement_timeout = '5min'",
        f"ALTER ROLE {reader} IN DATABASE {name} SET work_mem = '8MB'",
        f"ALTER ROLE {reader} IN DATABASE {name} SET default_transaction_read_only = on",
        f"ALTER DATABASE {name} CONNECTION LIMIT 40",
        f"COMMENT ON DATABASE {name} IS 'the app''s data; multi-line;\nsecond line'",
    )
    url = f"{SERVER}/{name}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE words (word text)")
        connection.execute("INSERT INTO words SELECT unnest(%s::text[])", (WORDS,))
    original, original_order = database_facts(name), sorted_words(url)
    assert original["encoding"] != "UTF8" or original["provider"] == "i", "not the server's default"
    test_environment = environment_on(environment, own_database["conn_id"])
    backup = take_backup(test_environment, kind="manual")
    admin_execute(  # what the restore must undo: properties changed after the backup
        f"GRANT CONNECT ON DATABASE {name} TO PUBLIC",
        f"ALTER DATABASE {name} RESET statement_timeout",
        f"ALTER ROLE {reader} IN DATABASE {name} RESET ALL",
    )

    restore_database(test_environment, backup.name)

    restored = database_facts(name)
    assert restored == original
    assert sorted_words(url) == original_order
    [kept] = databases_like(f"{name}_before_restore_")
    kept_facts = database_facts(kept)
    assert "=c/postgres" in kept_facts["acl"]  # the kept database keeps its own, later, grant
    assert "=c/postgres" not in restored["acl"]
    assert kept_facts["encoding"] == original["encoding"]


def test_the_swap_ends_the_sessions_of_every_database_it_renames(own_database):
    name = own_database["name"]
    other = f"{name}_other"
    admin_execute(f"CREATE DATABASE {name}", f"CREATE DATABASE {other}")
    on_live = psycopg.connect(f"{SERVER}/{name}", autocommit=True)
    on_other = psycopg.connect(f"{SERVER}/{other}", autocommit=True)
    on_live.execute("CREATE TABLE which (name text)")
    on_live.execute("INSERT INTO which VALUES ('live')")

    swap_databases(
        DatabaseAddress.of(own_database["conn_id"]).on("postgres"),
        [(name, f"{name}_kept"), (other, name), (f"{name}_kept", other)],
    )

    for held in (on_live, on_other):
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
        held.close()
    with psycopg.connect(f"{SERVER}/{other}") as connection:  # the two swapped names
        assert connection.execute("SELECT name FROM which").fetchone() == ("live",)
    with psycopg.connect(f"{SERVER}/{name}") as connection:
        assert connection.execute("SELECT to_regclass('which')").fetchone() == (None,)


def test_a_restore_runs_through_a_least_privileged_admin_connection(environment, own_database, connect_as):
    """The application owns its database and has no CREATEDB; the admin role has exactly what the
    runbook lists. An application session open during the swap is ended."""
    name, suffix = own_database["name"], uuid.uuid4().hex[:6]
    app, admin = f"airlock_r15_app_{suffix}", f"airlock_r15_admin_{suffix}"
    own_database["roles"].extend([admin, app])
    admin_execute(
        f"CREATE ROLE {app} LOGIN",
        f"CREATE ROLE {admin} LOGIN CREATEDB",
        f"GRANT {app} TO {admin}",
        f"GRANT pg_signal_backend TO {admin}",
        f"CREATE DATABASE {name} OWNER {app}",
    )
    connect_as(own_database["conn_id"], name, login=app)
    connect_as(f"{own_database['conn_id']}_admin", None, login=admin)
    url = f"postgresql://{app}@127.0.0.1:5432/{name}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE orders (id int)")
        connection.execute("INSERT INTO orders SELECT generate_series(1, 100)")
    test_environment = environment_on(
        environment, own_database["conn_id"], restore_admin_conn_id=f"{own_database['conn_id']}_admin"
    )
    backup = take_backup(test_environment, kind="manual")
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("DELETE FROM orders WHERE id > 10")
    application = psycopg.connect(url, autocommit=True)

    restore_database(test_environment, backup.name)

    with pytest.raises(psycopg.OperationalError):
        application.execute("SELECT 1")
    application.close()
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT count(*) FROM orders").fetchone() == (100,)
    assert database_facts(name)["owner"] == app


def test_an_admin_connection_without_the_rights_is_refused_before_anything_is_touched(
    environment, own_database, connect_as
):
    name, suffix = own_database["name"], uuid.uuid4().hex[:6]
    weak = f"airlock_r15_weak_{suffix}"
    own_database["roles"].append(weak)
    admin_execute(f"CREATE ROLE {weak} LOGIN", f"CREATE DATABASE {name}")
    connect_as(f"{own_database['conn_id']}_weak", "postgres", login=weak)
    test_environment = environment_on(
        environment, own_database["conn_id"], restore_admin_conn_id=f"{own_database['conn_id']}_weak"
    )
    backup = take_backup(test_environment, kind="manual")

    with pytest.raises(BackupError, match=rf"ALTER ROLE {weak} CREATEDB.*GRANT pg_signal_backend TO {weak}"):
        restore_database(test_environment, backup.name)

    assert databases_like(name) == [name]  # no copy made, nothing renamed


def test_an_admin_connection_to_another_server_is_refused(environment, own_database, connect_as):
    admin_execute(f"CREATE DATABASE {own_database['name']}")
    connect_as(f"{own_database['conn_id']}_elsewhere", None, host="127.0.0.2")
    test_environment = environment_on(
        environment, own_database["conn_id"], restore_admin_conn_id=f"{own_database['conn_id']}_elsewhere"
    )
    backup = take_backup(test_environment, kind="manual")

    with pytest.raises(
        BackupError, match=r"reaches 127\.0\.0\.2:5432, but the database .* is on 127\.0\.0\.1:5432"
    ):
        restore_database(test_environment, backup.name)

    assert databases_like(own_database["name"]) == [own_database["name"]]


def test_a_restore_opens_a_live_database_an_earlier_killed_swap_left_closed(environment, own_database):
    name = own_database["name"]
    admin_execute(f"CREATE DATABASE {name}")
    test_environment = environment_on(environment, own_database["conn_id"])
    backup = take_backup(test_environment, kind="manual")
    admin_execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")  # what the old _swap left

    restore_database(test_environment, backup.name)

    with psycopg.connect(f"{SERVER}/{name}") as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)
    [kept] = databases_like(f"{name}_before_restore_")
    with psycopg.connect(f"{SERVER}/{kept}") as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_a_restore_whose_predecessor_died_before_the_smoke_verdict_settles_that_swap_first(
    environment, own_database
):
    """The previous restore swapped its copy in and died: ``<db>_unchecked_restore_<stamp>`` holds
    the database before it. Its copy fails the smoke tests, so this run undoes that swap first."""
    name = own_database["name"]
    url = f"{SERVER}/{name}"
    admin_execute(f"CREATE DATABASE {name}")
    execute_on(url, "CREATE TABLE orders (id int)", "INSERT INTO orders SELECT generate_series(1, 100)")
    no_marker = {
        "kind": "sql",
        "name": "not-broken",
        "query": "SELECT to_regclass('public.broken_marker') IS NULL",
        "expect": True,
    }
    test_environment = environment_on(environment, own_database["conn_id"], smoke_tests=[no_marker])
    backup = take_backup(test_environment, kind="manual")
    unchecked = f"{name}_unchecked_restore_20200101000000"
    admin_execute(f"CREATE DATABASE {unchecked}")  # the database before the dead run's swap
    execute_on(f"{SERVER}/{unchecked}", "CREATE TABLE orders (id int)", "INSERT INTO orders VALUES (1)")
    execute_on(url, "CREATE TABLE broken_marker (id int)")  # the dead run's copy: fails the smoke test

    restore_database(test_environment, backup.name)

    assert databases_like(f"{name}_unchecked_restore_") == []
    with psycopg.connect(f"{SERVER}/{name}_failed_restore_20200101000000") as connection:
        assert connection.execute("SELECT to_regclass('broken_marker')").fetchone() == ("broken_marker",)
    [kept] = databases_like(f"{name}_before_restore_")
    with psycopg.connect(f"{SERVER}/{kept}") as connection:  # the undone swap's live database
        assert connection.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT count(*) FROM orders").fetchone() == (100,)
        assert connection.execute("SELECT to_regclass('broken_marker')").fetchone() == (None,)


def execute_on(url: str, *statements: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement)
