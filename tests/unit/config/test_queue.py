"""The environment's optional Celery ``queue``: a plain queue name, or absent."""

from __future__ import annotations

import pytest
import yaml

from airlock.config import EnvironmentConfigError, load_environment
from tests.support import demo_document


def load(tmp_path, **change):
    path = tmp_path / "zoned.yaml"
    path.write_text(yaml.safe_dump({**demo_document(), **change}))
    return load_environment(path)


def test_the_queue_is_read_and_absent_means_none(tmp_path):
    assert load(tmp_path, queue="prod-zone.eu_1").queue == "prod-zone.eu_1"
    assert load(tmp_path).queue is None


@pytest.mark.parametrize(
    "queue",
    [
        pytest.param("", id="empty"),
        pytest.param("zone a", id="space"),
        pytest.param("a,b", id="comma-would-be-two-queues"),
        pytest.param("-zone", id="leading-dash-would-be-an-option"),
        pytest.param("z" * 65, id="too-long"),
        pytest.param(["zone"], id="not-a-string"),
    ],
)
def test_a_queue_that_is_not_a_plain_name_is_refused_naming_file_and_field(tmp_path, queue):
    with pytest.raises(EnvironmentConfigError, match=r"zoned\.yaml: queue"):
        load(tmp_path, queue=queue)


# -- rollout.on_lock_busy: queued releases ---------------------------------------------------------


def rollout(tmp_path, **change):
    return load(tmp_path, rollout={**demo_document()["rollout"], **change}).rollout


def test_a_release_fails_on_a_held_lock_unless_it_is_told_to_wait(tmp_path):
    default = rollout(tmp_path)
    assert default.on_lock_busy == "fail"
    waiting = rollout(tmp_path, on_lock_busy="wait", lock_wait_timeout="45m", lock_poll_interval="10s")
    assert (waiting.on_lock_busy, waiting.lock_wait_timeout.total_seconds()) == ("wait", 2700)
    assert waiting.lock_poll_interval.total_seconds() == 10


@pytest.mark.parametrize(
    ("change", "field", "why"),
    [
        pytest.param({"on_lock_busy": "queue"}, "rollout.on_lock_busy", "fail", id="unknown-mode"),
        pytest.param({"lock_poll_interval": 0.2}, "rollout", "at least 1s", id="poll-under-a-second"),
        pytest.param(
            {"lock_wait_timeout": "5s", "lock_poll_interval": "10s"},
            "rollout",
            "shorter than",
            id="timeout-under-poll",
        ),
        pytest.param({"lock_wait_timeout": "soon"}, "rollout.lock_wait_timeout", "", id="not-a-duration"),
    ],
)
def test_a_bad_queue_setting_is_refused_naming_file_and_field(tmp_path, change, field, why):
    with pytest.raises(EnvironmentConfigError, match=rf"zoned\.yaml: {field}.*{why}"):
        rollout(tmp_path, **change)
