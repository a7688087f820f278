"""What reaches pg_dump and pg_restore from an Airflow Postgres connection: libpq variables only."""

from __future__ import annotations

import json

from airlock.hooks.postgres import DatabaseAddress


def test_ssl_extras_of_the_connection_become_libpq_variables_and_nothing_else_of_the_worker(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_AIRLOCK_SSL_DB",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "db.internal",
                "port": 6432,
                "login": "app",
                "password": "s3cret-pw",
                "schema": "shop",
                "extra": {
                    "sslmode": "verify-full",
                    "sslrootcert": "/etc/ssl/root.crt",
                    "sslcert": "/etc/ssl/client.crt",
                    "sslkey": "/etc/ssl/client.key",
                    "sslcrl": "/etc/ssl/root.crl",
                    "cursor": "dictcursor",
                },
            }
        ),
    )
    monkeypatch.setenv("PGSERVICE", "somewhere-else")  # the worker's own libpq settings never leak in
    monkeypatch.setenv("PGSSLMODE", "disable")

    address = DatabaseAddress.of("airlock_ssl_db")
    env = address.libpq_env()

    assert {name: value for name, value in env.items() if name.startswith("PG")} == {
        "PGHOST": "db.internal",
        "PGPORT": "6432",
        "PGUSER": "app",
        "PGPASSWORD": "s3cret-pw",
        "PGDATABASE": "shop",
        "PGAPPNAME": "airlock-backup",
        "PGCONNECT_TIMEOUT": "10",
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": "/etc/ssl/root.crt",
        "PGSSLCERT": "/etc/ssl/client.crt",
        "PGSSLKEY": "/etc/ssl/client.key",
        "PGSSLCRL": "/etc/ssl/root.crl",
    }
    assert "s3cret-pw" not in repr(address)


def test_a_connection_without_ssl_extras_sets_no_ssl_variable(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_AIRLOCK_PLAIN_DB",
        json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "login": "postgres", "schema": "app"}),
    )

    env = DatabaseAddress.of("airlock_plain_db").libpq_env()

    assert not [name for name in env if name.startswith("PGSSL")]
    assert "PGPASSWORD" not in env
