"""``airflow_housekeeping``'s settings file, metadata URL and ``airflow db clean`` output reading."""

from __future__ import annotations

import json

import pytest

from airlock.config import EnvironmentConfigError
from airlock.tasks.housekeeping import (
    SETTINGS_FILE,
    load_housekeeping_settings,
    metadata_database_url,
    purged_rows,
)


def test_the_shipped_settings_keep_30_days_of_logs_and_90_of_metadata():
    settings = load_housekeeping_settings(SETTINGS_FILE)

    assert (settings.log_retention_days, settings.metadata_retention_days) == (30, 90)
    assert settings.metadata_conn_id == "airflow_metadata_db"
    assert settings.log_folder is None


def test_a_broken_settings_file_names_the_file_and_the_field(tmp_path):
    broken = tmp_path / "housekeeping.yaml"
    broken.write_text("log_retention_days: 0\nretention: 3\n")

    with pytest.raises(EnvironmentConfigError, match=r"housekeeping\.yaml: .*log_retention_days.*retention"):
        load_housekeeping_settings(broken)


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


def test_rows_per_table_are_read_from_the_db_clean_output():
    output = (
        "Checking table dag_run\nFound 12 rows meeting deletion criteria.\n\n"
        "Checking table log\nFound 0 rows meeting deletion criteria.\nChecking table xcom\n"
    )

    assert purged_rows(output) == {"dag_run": 12, "log": 0}
