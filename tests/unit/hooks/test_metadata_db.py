"""The metadata database connection of ``airflow_housekeeping`` as a SQLAlchemy URL."""

from __future__ import annotations

import json

import pytest

from airlock.hooks.metadata_db import metadata_database_url


def test_the_metadata_url_quotes_the_password_and_the_shown_url_masks_it(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_METADATA_TEST",
        json.dumps(
            {
                "conn_type": "postgres",
                "host": "db.internal",
                "port": 5433,
                "schema": "airflow",
                "login": "house keeper",
                "password": "p@ss:w/rd",
            }
        ),
    )

    url, shown = metadata_database_url("metadata_test")

    assert url == "postgresql+psycopg2://house%20keeper:p%40ss%3Aw%2Frd@db.internal:5433/airflow"
    assert shown == "postgresql+psycopg2://house%20keeper:***@db.internal:5433/airflow"


def test_a_sqlite_metadata_database_is_its_file(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_METADATA_TEST", json.dumps({"conn_type": "sqlite", "host": "/tmp/a.db"}))

    assert metadata_database_url("metadata_test") == ("sqlite:////tmp/a.db", "sqlite:////tmp/a.db")


def test_other_database_types_are_refused_by_name(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_METADATA_TEST", json.dumps({"conn_type": "mysql", "host": "db"}))

    with pytest.raises(ValueError, match=r"metadata_test is of type 'mysql': .*postgres and sqlite"):
        metadata_database_url("metadata_test")
