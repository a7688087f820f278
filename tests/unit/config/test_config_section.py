"""The environment's optional ``config`` section: where config_update_<env> reads its set."""

from __future__ import annotations

import pytest
import yaml

from airlock.config import EnvironmentConfigError, load_environment
from airlock.config.loader import PROJECT_ROOT
from tests.support import demo_document


def load(tmp_path, config):
    document = {**demo_document(), "config": config}
    if config is None:
        document.pop("config")
    path = tmp_path / "configured.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_environment(path)


def test_a_relative_source_is_read_from_the_project_a_url_is_kept_and_none_means_no_dag(tmp_path):
    relative = load(tmp_path, {"source": "include/demo_config"}).config
    assert relative.source == str(PROJECT_ROOT / "include" / "demo_config")
    assert "*token*" in relative.mask
    assert relative.report_field is None
    url = load(tmp_path, {"source": "s3://bucket/config/production", "conn_id": "aws_config"}).config
    assert (url.source, url.conn_id) == ("s3://bucket/config/production", "aws_config")
    assert load(tmp_path, None).config is None


@pytest.mark.parametrize(
    ("config", "field"),
    [
        pytest.param({}, "config.source", id="no-source"),
        pytest.param({"source": ""}, "config.source", id="empty-source"),
        pytest.param({"source": "x", "report_field": "not a field"}, "config.report_field", id="bad-field"),
        pytest.param({"source": "x", "max_bytes": 0}, "config.max_bytes", id="no-room"),
        pytest.param({"source": "x", "colour": "blue"}, "config.colour", id="unknown-key"),
    ],
)
def test_a_bad_config_section_is_refused_naming_file_and_field(tmp_path, config, field):
    with pytest.raises(EnvironmentConfigError, match=rf"configured\.yaml: {field}"):
        load(tmp_path, config)
