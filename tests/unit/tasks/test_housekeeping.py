"""``airflow_housekeeping``'s tasks refuse a run that asks to keep less than the settings file."""

from __future__ import annotations

from datetime import timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import HousekeepingSettings
from airlock.tasks.housekeeping import run_retention

SETTINGS = HousekeepingSettings(log_retention_days=30, metadata_retention_days=90)


@pytest.mark.parametrize(
    ("field", "configured"),
    [
        pytest.param("log_retention_days", 30, id="logs"),
        pytest.param("metadata_retention_days", 90, id="metadata"),
    ],
)
def test_a_run_past_the_trigger_form_asking_for_one_day_fails_without_retry(field, configured):
    with pytest.raises(
        AirflowFailException,
        match=rf"{field}=1 asks to keep less than include/housekeeping\.yaml's {field}: {configured}\. "
        "A run may keep more, never less",
    ):
        run_retention(SETTINGS, {field: 1}, field)


def test_a_run_may_keep_more_than_the_settings_file_and_by_default_keeps_what_it_says():
    assert run_retention(SETTINGS, {"log_retention_days": 45}, "log_retention_days") == timedelta(days=45)
    assert run_retention(SETTINGS, {}, "metadata_retention_days") == timedelta(days=90)
