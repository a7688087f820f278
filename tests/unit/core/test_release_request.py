"""A release request: what the first task accepts and refuses before anything is touched."""

from __future__ import annotations

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
