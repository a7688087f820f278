"""The environment model: what a valid file gives, and how a broken one is reported."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from airlock.config import (
    EnvironmentConfigError,
    load_environment,
    load_environments,
    parse_duration,
)
from tests.support import PROJECT, demo_document

ENVIRONMENTS = PROJECT / "include" / "environments"


def write(directory: Path, name: str, document: dict) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def hosts(count: int) -> list[dict]:
    return [
        {"name": f"web-{i}", "address": f"10.0.0.{i}", "app_url": f"http://10.0.0.{i}:8080"}
        for i in range(1, count + 1)
    ]


def test_demo_environment_loads_with_three_hosts_in_two_waves():
    demo = load_environment(ENVIRONMENTS / "demo.yaml")

    assert [host.name for host in demo.hosts] == ["web-1", "web-2", "web-3"]
    assert [[host.name for host in wave.hosts] for wave in demo.waves] == [["web-1"], ["web-2", "web-3"]]
    assert demo.approval.required
    assert demo.approval.approvers == ["admin"]
    assert demo.deploy.artifact_url_for("2.0.0").endswith("/artifacts/demo-app-2.0.0.tar.gz")


@pytest.mark.parametrize("example", sorted((ENVIRONMENTS / "examples").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_examples_are_valid(example: Path):
    environment = load_environment(example)

    assert environment.name == example.stem


def test_examples_are_not_loaded_until_copied():
    catalog = load_environments(ENVIRONMENTS)

    assert set(catalog.environments) == {"demo"}
    assert catalog.errors == {}


@pytest.mark.parametrize(
    ("waves", "count", "expected"),
    [
        pytest.param([1, "50%", "100%"], 4, [1, 1, 2], id="canary-then-halves"),
        pytest.param(["100%"], 3, [3], id="all-at-once"),
        pytest.param([1, "100%"], 3, [1, 2], id="canary-then-rest"),
        pytest.param([2, 5, 12], 12, [2, 3, 7], id="counts"),
    ],
)
def test_waves_are_cumulative_and_cover_every_host_once(tmp_path, waves, count, expected):
    document = {**demo_document(), "hosts": hosts(count), "rollout": {"waves": waves}}

    environment = load_environment(write(tmp_path, "staging", document))

    assert [len(wave.hosts) for wave in environment.waves] == expected
    assert [h.name for wave in environment.waves for h in wave.hosts] == [h.name for h in environment.hosts]


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        pytest.param(
            {"rollout": {"waves": [1, "50%"]}}, "rollout.waves", "reaches 2 of 4", id="waves-leave-hosts-out"
        ),
        pytest.param(
            {"rollout": {"waves": [2, "50%", "100%"]}}, "rollout.waves", "adds no host", id="empty-wave"
        ),
        pytest.param({"rollout": {"waves": [5]}}, "rollout.waves", "there are 4 hosts", id="wave-too-big"),
        pytest.param({"lock_ttl": "ten minutes"}, "lock_ttl", "invalid duration", id="bad-duration"),
        pytest.param(
            {"approval": {"timeout": "0h", "approvers": ["a"]}}, "approval.timeout", "positive", id="zero"
        ),
        pytest.param({"colour": "blue"}, "colour", "unknown field", id="unknown-top-level-key"),
        pytest.param(
            {"approval": {"approvers": ["a"], "aprovers": ["b"]}},
            "approval.aprovers",
            "unknown field",
            id="unknown-nested-key",
        ),
        pytest.param(
            {"approval": {"required": True, "approvers": []}}, "approval", "at least one", id="no-approvers"
        ),
        pytest.param(
            {
                "deploy": {
                    "root": "srv/app",
                    "artifact_url": "file:///a/{version}",
                    "activate_command": ["true"],
                }
            },
            "deploy.root",
            "absolute path",
            id="relative-root",
        ),
        pytest.param(
            {
                "deploy": {
                    "root": "/srv/app",
                    "artifact_url": "file:///a/latest.tgz",
                    "activate_command": ["true"],
                }
            },
            "deploy.artifact_url",
            "{version}",
            id="no-version",
        ),
        pytest.param(
            {
                "deploy": {
                    "root": "/srv/app",
                    "artifact_url": "file:///a/{version}",
                    "activate_command": ["{rm}"],
                }
            },
            "deploy.activate_command",
            "unknown placeholder",
            id="unknown-placeholder",
        ),
        pytest.param(
            {"logs": {"compress_after_days": 9, "delete_after_days": 3}},
            "logs",
            "greater than",
            id="delete-before-compress",
        ),
    ],
)
def test_invalid_file_error_names_the_file_and_the_field(tmp_path, change, field, message):
    document = {**demo_document(), "hosts": hosts(4), **change}
    path = write(tmp_path, "staging", document)

    with pytest.raises(EnvironmentConfigError, match=r"staging\.yaml") as error:
        load_environment(path)

    assert f"{field}:" in str(error.value) or f"{field}." in str(error.value)
    assert message in str(error.value)


def test_duplicate_host_names_are_refused(tmp_path):
    duplicated = [*hosts(2), {**hosts(1)[0], "address": "10.0.0.9", "app_url": "http://10.0.0.9:1"}]
    path = write(tmp_path, "staging", {**demo_document(), "hosts": duplicated})

    with pytest.raises(EnvironmentConfigError, match=r"staging\.yaml: hosts: .*duplicate host name 'web-1'"):
        load_environment(path)


def test_a_field_of_a_host_is_named_with_its_position(tmp_path):
    broken = [*hosts(2), {"name": "web-3", "address": "10.0.0.3", "app_url": "ftp://x", "ssh_port": 70000}]
    path = write(tmp_path, "staging", {**demo_document(), "hosts": broken})

    with pytest.raises(EnvironmentConfigError) as error:
        load_environment(path)

    assert "hosts.2.ssh_port" in str(error.value)
    assert "hosts.2.app_url" in str(error.value)


def test_not_yaml_and_not_a_mapping_are_reported_with_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("hosts: [unclosed\n")
    (tmp_path / "b.yaml").write_text("- just\n- a list\n")

    with pytest.raises(EnvironmentConfigError, match=r"a\.yaml: not valid YAML"):
        load_environment(tmp_path / "a.yaml")
    with pytest.raises(EnvironmentConfigError, match=r"b\.yaml: must be a mapping"):
        load_environment(tmp_path / "b.yaml")


def test_name_must_match_the_file(tmp_path):
    path = write(tmp_path, "staging", {**demo_document(), "name": "production"})

    with pytest.raises(EnvironmentConfigError, match="must match the file name 'staging'"):
        load_environment(path)


def test_a_broken_file_does_not_stop_the_others_from_loading(tmp_path):
    write(tmp_path, "good", demo_document())
    write(tmp_path, "bad", {**demo_document(), "rollout": {"waves": [1]}})

    catalog = load_environments(tmp_path)

    assert list(catalog.environments) == ["good"]
    [(path, error)] = catalog.errors.items()
    assert path.name == "bad.yaml"
    assert "rollout.waves" in str(error)


def test_environment_variables_are_expanded_with_defaults(tmp_path, monkeypatch):
    document = demo_document()
    document["deploy"]["root"] = "${DEPLOY_ROOT:-/srv/fallback}"
    document["ssh"]["known_hosts"] = "${KNOWN_HOSTS}"
    monkeypatch.setenv("KNOWN_HOSTS", "/etc/airlock/known_hosts")
    monkeypatch.delenv("DEPLOY_ROOT", raising=False)

    environment = load_environment(write(tmp_path, "staging", document))

    assert environment.deploy.root == "/srv/fallback"
    assert str(environment.ssh.known_hosts) == "/etc/airlock/known_hosts"


def test_an_unset_variable_without_default_names_the_field(tmp_path, monkeypatch):
    document = demo_document()
    document["ssh"]["known_hosts"] = "${AIRLOCK_UNSET_FOR_TEST}"
    monkeypatch.delenv("AIRLOCK_UNSET_FOR_TEST", raising=False)

    with pytest.raises(
        EnvironmentConfigError, match=r"staging\.yaml: ssh\.known_hosts: .*AIRLOCK_UNSET_FOR_TEST"
    ):
        load_environment(write(tmp_path, "staging", document))


def test_relative_known_hosts_is_relative_to_the_project(tmp_path):
    document = demo_document()
    document["ssh"]["known_hosts"] = "include/known_hosts/staging"

    environment = load_environment(write(tmp_path, "staging", document))

    assert environment.ssh.known_hosts == PROJECT / "include" / "known_hosts" / "staging"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("4h", timedelta(hours=4)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        (90, timedelta(seconds=90)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "-1h", "1.5h", True, 0])
def test_invalid_durations_are_refused(text):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)
