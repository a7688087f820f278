"""``health.alert_after``, ``health.resolve_after`` and ``health.max_messages_per_hour``: what a
file may say, and errors naming the file and the field."""

from __future__ import annotations

import re

import pytest

from airlock.config import EnvironmentConfigError
from tests.support import demo_document, write_environment


def with_health(tmp_path, **health):
    document = demo_document()
    document["health"] = {**document.get("health", {}), **health}
    return write_environment(tmp_path / "demo.yaml", document)


def test_by_default_critical_alerts_after_one_run_warn_after_two_and_resolving_takes_two(tmp_path):
    health = with_health(tmp_path).health

    assert (health.alert_after.critical, health.alert_after.warn, health.resolve_after) == (1, 2, 2)
    assert health.max_messages_per_hour == 12


def test_one_number_sets_alert_after_for_both_statuses(tmp_path):
    health = with_health(tmp_path, alert_after=3).health

    assert (health.alert_after.critical, health.alert_after.warn) == (3, 3)


def test_alert_after_may_differ_per_status(tmp_path):
    health = with_health(tmp_path, alert_after={"critical": 2, "warn": 4}).health

    assert (health.alert_after.runs("critical"), health.alert_after.runs("warn")) == (2, 4)


@pytest.mark.parametrize(
    ("health", "field"),
    [
        pytest.param({"alert_after": 0}, "health.alert_after.critical", id="alert-after-zero"),
        pytest.param({"alert_after": {"warn": -1}}, "health.alert_after.warn", id="negative-warn"),
        pytest.param({"alert_after": {"severe": 2}}, "health.alert_after.severe", id="unknown-status"),
        pytest.param({"resolve_after": 0}, "health.resolve_after", id="resolve-after-zero"),
        pytest.param({"max_messages_per_hour": 0}, "health.max_messages_per_hour", id="no-messages"),
    ],
)
def test_bad_hysteresis_settings_name_the_file_and_field(tmp_path, health, field):
    with pytest.raises(EnvironmentConfigError, match=re.escape(f"demo.yaml: {field}")):
        with_health(tmp_path, **health)
