"""A release request: what the first task accepts and refuses before anything is touched."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from airlock.core.release import InvalidReleaseRequest, validate_request


@pytest.mark.parametrize("version", ["2.0.0", "1.0.0-rc.1", "2024.11.26+build.7", "a", "V" * 64])
def test_valid_versions_are_accepted(version):
    request = validate_request({"version": version}, {"version": version, "dry_run": False, "reason": ""})

    assert request.version == version


@pytest.mark.parametrize(
    "version",
    [
        pytest.param("1.0; rm -rf /", id="semicolon"),
        pytest.param("$(reboot)", id="command-substitution"),
        pytest.param("`id`", id="backticks"),
        pytest.param("../2.0", id="dot-dot"),
        pytest.param("-rf", id="leading-dash"),
        pytest.param("2.0 0", id="space"),
        pytest.param("2.0\n0", id="newline"),
        pytest.param("v" * 65, id="too-long"),
        pytest.param("", id="empty"),
        pytest.param(None, id="missing"),
        pytest.param(2.0, id="number"),
    ],
)
def test_unsafe_versions_are_refused(version):
    with pytest.raises(InvalidReleaseRequest, match="is not a valid version"):
        validate_request({"version": version}, {"version": version})


def test_unknown_keys_are_refused_by_name():
    with pytest.raises(InvalidReleaseRequest, match="unknown parameter\\(s\\) hosts, skip_checks"):
        validate_request({"version": "2.0.0", "hosts": "web-1", "skip_checks": True}, {"version": "2.0.0"})


def test_dry_run_must_be_a_boolean():
    with pytest.raises(InvalidReleaseRequest, match="dry_run must be true or false"):
        validate_request({"version": "2.0.0", "dry_run": "yes"}, {"version": "2.0.0", "dry_run": "yes"})


def test_committed_at_is_read_with_its_offset_for_the_lead_time():
    params = {"version": "2.0.0", "committed_at": "2026-11-30T17:05:00+01:00"}
    request = validate_request(params, params)
    assert request.committed_at == datetime(2026, 11, 30, 16, 5, tzinfo=UTC)
    assert (
        validate_request({"version": "2.0.0"}, {"version": "2.0.0", "committed_at": None}).committed_at
        is None
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("yesterday", "is not a time", id="not-a-time"),
        pytest.param(1764518700, "is not a time", id="a-number"),
        pytest.param("2026-11-30T17:05:00", "has no UTC offset", id="no-offset"),
    ],
)
def test_a_committed_at_that_is_no_dated_time_is_refused(value, message):
    params = {"version": "2.0.0", "committed_at": value}
    with pytest.raises(InvalidReleaseRequest, match=f"committed_at .* {message}"):
        validate_request(params, params)


@pytest.mark.parametrize("field", ["reason", "freeze_override"])
@pytest.mark.parametrize(
    "value",
    [
        pytest.param("hotfix\n### Migrations", id="newline"),
        pytest.param("hotfix\rnext", id="carriage-return"),
        pytest.param("x" * 501, id="too-long"),
        pytest.param(["hotfix"], id="not-text"),
    ],
)
def test_free_text_that_is_not_one_short_line_is_refused(field, value):
    with pytest.raises(InvalidReleaseRequest, match=f"{field} must be one line of at most 500 characters"):
        validate_request({"version": "2.0.0", field: value}, {"version": "2.0.0", field: value})


def test_a_freeze_override_is_kept_and_its_absence_is_empty():
    asked = validate_request({}, {"version": "2.0.0", "freeze_override": "payments are down"})
    assert asked.freeze_override == "payments are down"
    assert validate_request({}, {"version": "2.0.0", "freeze_override": None}).freeze_override == ""
