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
