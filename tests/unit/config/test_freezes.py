"""Freeze windows, their approvers and maintenance windows as the environment file states them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import yaml

from airlock.config import EnvironmentConfigError, load_environment
from tests.support import demo_document

NO_DURATION = {"name": "weekend", "reason": "No releases over the weekend", "cron": "0 18 * * 5"}
WEEKEND = {
    "name": "weekend",
    "reason": "No releases over the weekend",
    "cron": "0 18 * * 5",
    "duration": "62h",
}


def load(tmp_path, **change):
    path = tmp_path / "frozen.yaml"
    path.write_text(yaml.safe_dump({**demo_document(), **change}))
    return load_environment(path)


def test_recurring_and_fixed_freezes_and_maintenance_windows_are_read(tmp_path):
    environment = load(
        tmp_path,
        freezes=[
            {**WEEKEND, "timezone": "Europe/Berlin"},
            {
                "name": "year-end",
                "reason": "Year-end close",
                "start": "2026-12-20T00:00:00+01:00",
                "end": "2027-01-04T00:00:00+01:00",
            },
        ],
        freeze_approvers=["cto"],
        maintenance_windows=[{"cron": "0 2 * * *", "duration": "3h"}],
    )
    weekend, year_end = environment.freezes
    assert (weekend.cron, weekend.duration, weekend.timezone) == (
        "0 18 * * 5",
        timedelta(hours=62),
        "Europe/Berlin",
    )
    assert year_end.start == datetime(2026, 12, 19, 23, tzinfo=UTC)
    assert environment.freeze_approvers == ["cto"]
    assert environment.maintenance_windows[0].timezone == "UTC"


def test_no_freezes_by_default(tmp_path):
    environment = load(tmp_path)
    assert (environment.freezes, environment.freeze_approvers, environment.maintenance_windows) == (
        [],
        [],
        [],
    )


@pytest.mark.parametrize(
    ("freeze", "field", "message"),
    [
        pytest.param({**WEEKEND, "cron": "friday"}, "freezes.0.cron", "not a cron expression", id="bad-cron"),
        pytest.param({**WEEKEND, "duration": "soon"}, "freezes.0.duration", "invalid", id="bad-length"),
        pytest.param({**WEEKEND, "timezone": "Mars/Olympus"}, "freezes.0.timezone", "IANA", id="bad-zone"),
        pytest.param(NO_DURATION, "freezes.0", "both cron and duration", id="no-duration"),
        pytest.param({**NO_DURATION, "duration": "1h", "reason": None}, "freezes.0.reason", "", id="no-why"),
        pytest.param({**WEEKEND, "reason": "two\nlines"}, "freezes.0.reason", "", id="reason-on-two-lines"),
        pytest.param(
            {"name": "x", "reason": "r", "start": "2026-12-20T00:00:00", "end": "2026-12-21T00:00:00"},
            "freezes.0", "UTC offset", id="no-offset",
        ),
        pytest.param(
            {"name": "x", "reason": "r", "start": "2026-12-21T00:00:00Z", "end": "2026-12-20T00:00:00Z"},
            "freezes.0", "end must be after start", id="end-before-start",
        ),
        pytest.param(
            {**WEEKEND, "start": "2026-12-21T00:00:00Z", "end": "2026-12-22T00:00:00Z"},
            "freezes.0", "not both", id="both-kinds",
        ),
    ],
)  # fmt: skip
def test_a_bad_freeze_is_refused_naming_file_and_field(tmp_path, freeze, field, message):
    with pytest.raises(EnvironmentConfigError, match=rf"frozen\.yaml: {field}.*{message}") as error:
        load(tmp_path, freezes=[freeze])
    assert "frozen.yaml" in str(error.value)


def test_two_freezes_of_one_name_are_refused(tmp_path):
    with pytest.raises(EnvironmentConfigError, match=r"frozen\.yaml: freezes.*duplicate freeze name weekend"):
        load(tmp_path, freezes=[WEEKEND, WEEKEND])


def test_a_bad_maintenance_window_is_refused_naming_file_and_field(tmp_path):
    with pytest.raises(EnvironmentConfigError, match=r"frozen\.yaml: maintenance_windows\.0\.cron"):
        load(tmp_path, maintenance_windows=[{"cron": "2am", "duration": "1h"}])
