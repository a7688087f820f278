"""``committed_at`` (the DORA lead time) is refused by the trigger form and the REST API when it is
not an ISO 8601 time with its UTC offset, before any task runs."""

from __future__ import annotations

import copy

import pytest
from airflow.sdk.exceptions import ParamValidationError

from tests.support import load_dag

pytestmark = pytest.mark.usefixtures("environment")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("yesterday", id="no-time"),
        pytest.param("2026-11-30T17:05:00", id="no-offset"),
        pytest.param("2026-11-30", id="date-only"),
        pytest.param("2026-11-30T17:05:00+01:00; rm -rf /", id="trailing-text"),
    ],
)
def test_a_committed_at_without_time_and_offset_is_refused_at_trigger_time(value):
    params = copy.deepcopy(load_dag("release_sandbox").params)

    with pytest.raises(ParamValidationError, match="committed_at"):
        params["committed_at"] = value


@pytest.mark.parametrize(
    "value", ["2026-11-30T17:05:00+01:00", "2026-11-30T16:05:00.123456Z", "2026-11-30T16:05Z", "", None]
)
def test_a_committed_at_with_its_offset_or_none_is_accepted(value):
    params = copy.deepcopy(load_dag("release_sandbox").params)
    params["version"] = "2.0.0"
    params["committed_at"] = value

    assert params.validate()["committed_at"] == value
