"""The ``monitoring`` profile of docker-compose.yaml: Prometheus scraping the board's metrics and
Grafana with the Airlock dashboard, checked statically (no Docker engine runs here).

The dashboard is held to the metrics Airlock really exposes: the names come from the
collector itself (``AirlockCollector`` over no environment still declares every family).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from airlock.web.metrics import AirlockCollector

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((REPO_ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())
GRAFANA = REPO_ROOT / "docker" / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "airlock.json").read_text())


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of a service's volumes, short or long syntax."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found[volume["target"]] = volume["source"]
        else:
            source, target, *_ = volume.split(":")
            found[target] = source
    return found


def exposed_samples() -> set[str]:
    names = set()
    for family in AirlockCollector([]).collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


@pytest.mark.parametrize("name", ["prometheus", "grafana"])
def test_prometheus_and_grafana_start_only_with_the_monitoring_profile(name):
    assert SERVICES[name]["profiles"] == ["monitoring"]


def test_prometheus_scrapes_the_board_metrics_from_the_api_server_with_a_bearer_token_file():
    [job] = PROMETHEUS["scrape_configs"]
    assert job["metrics_path"] == "/airlock/metrics"
    assert job["static_configs"] == [{"targets": ["airflow-apiserver:8080"]}]
    assert job["authorization"]["type"] == "Bearer"
    token_file = job["authorization"]["credentials_file"]
    service = mounts(SERVICES["prometheus"])
    assert token_file in service, "the token file Prometheus reads is mounted into it"
    assert service["/etc/prometheus/prometheus.yml"] == "./docker/prometheus/prometheus.yml"
    assert "credentials" not in job["authorization"], "no token in the repository"


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboards_directory():
    [datasource] = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "airlock.yaml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "airlock.yaml").read_text())[
        "providers"
    ]
    service = mounts(SERVICES["grafana"])
    assert service[provider["options"]["path"]] == "./docker/grafana/dashboards"
    assert service["/etc/grafana/provisioning"] == "./docker/grafana/provisioning"
    uids = {panel["datasource"]["uid"] for panel in DASHBOARD["panels"]}
    assert uids == {datasource["uid"]}


def test_the_dashboard_queries_only_metrics_airlock_exposes_and_shows_each_of_them():
    expressions = [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]
    used = {name for expression in expressions for name in re.findall(r"\bairlock_[a-z_]+", expression)}
    assert used == exposed_samples()


def test_grafana_reads_its_admin_password_from_a_file_and_allows_no_anonymous_access():
    environment = SERVICES["grafana"]["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    password_file = environment["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    assert password_file in mounts(SERVICES["grafana"])
