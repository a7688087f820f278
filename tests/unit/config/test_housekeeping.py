"""``airflow_housekeeping``'s settings file: the shipped values, and how a broken file is reported."""

from __future__ import annotations

import pytest

from airlock.config import ConfigFileError, load_housekeeping_settings
from tests.support import PROJECT


def test_the_shipped_settings_keep_30_days_of_logs_and_90_of_metadata():
    settings = load_housekeeping_settings()

    assert (settings.log_retention_days, settings.metadata_retention_days) == (30, 90)
    assert settings.metadata_conn_id == "airflow_metadata_db"
    assert settings.owner == "platform-team"
    assert settings.log_folder is None


def test_the_default_file_is_include_housekeeping_yaml(tmp_path):
    shipped = (PROJECT / "include" / "housekeeping.yaml").read_text()
    copy = tmp_path / "housekeeping.yaml"
    copy.write_text(shipped.replace("log_retention_days: 30", "log_retention_days: 12"))

    assert load_housekeeping_settings().log_retention_days == 30
    assert load_housekeeping_settings(copy).log_retention_days == 12


def test_a_broken_settings_file_names_the_file_and_the_field(tmp_path):
    broken = tmp_path / "housekeeping.yaml"
    broken.write_text("log_retention_days: 0\nretention: 3\n")

    with pytest.raises(ConfigFileError, match=r"housekeeping\.yaml: .*log_retention_days.*retention"):
        load_housekeeping_settings(broken)


def test_an_unknown_field_is_called_unknown(tmp_path):
    broken = tmp_path / "housekeeping.yaml"
    broken.write_text("retention: 3\n")

    with pytest.raises(ConfigFileError, match=r"housekeeping\.yaml: retention: unknown field"):
        load_housekeeping_settings(broken)


def test_an_empty_file_means_the_defaults(tmp_path):
    empty = tmp_path / "housekeeping.yaml"
    empty.write_text("# nothing set\n")

    settings = load_housekeeping_settings(empty)

    assert (settings.owner, settings.schedule, settings.log_retention_days) == ("airlock", "15 2 * * *", 30)


def test_environment_variables_are_expanded_as_in_environment_files(tmp_path, monkeypatch):
    path = tmp_path / "housekeeping.yaml"
    path.write_text(
        "metadata_conn_id: ${AIRLOCK_TEST_METADATA_CONN:-airflow_db}\nowner: ${AIRLOCK_TEST_OWNER}\n"
    )
    monkeypatch.setenv("AIRLOCK_TEST_OWNER", "ops")
    monkeypatch.delenv("AIRLOCK_TEST_METADATA_CONN", raising=False)

    settings = load_housekeeping_settings(path)

    assert (settings.owner, settings.metadata_conn_id) == ("ops", "airflow_db")


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigFileError, match=r"absent\.yaml: cannot read: No such file"):
        load_housekeeping_settings(tmp_path / "absent.yaml")


def test_approval_evidence_is_kept_a_year_and_never_less_than_30_days(tmp_path):
    assert load_housekeeping_settings().audit_retention_days == 365
    short = tmp_path / "housekeeping.yaml"
    short.write_text("audit_retention_days: 7\n")

    with pytest.raises(
        ConfigFileError, match=r"housekeeping\.yaml: audit_retention_days: .*greater than or equal to 30"
    ):
        load_housekeeping_settings(short)
