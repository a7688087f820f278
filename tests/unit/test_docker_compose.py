"""docker-compose.yaml and its Dockerfiles describe a stack that can run in production shape.

No Docker engine runs where Airlock is tested, so the compose file is read as YAML
(``yaml.safe_load`` resolves the ``<<`` merge keys of the ``x-airflow-common`` anchors) and held to
what a reviewer would check by eye: the services of a Celery deployment, pinned images, healthchecks,
the project mounted everywhere, secrets only from required variables, a worker that scales.
``docker compose config`` runs too where the compose plugin is installed.
"""

from __future__ import annotations

import http.client
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yaml"
AIRFLOW_DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERFILES = [AIRFLOW_DOCKERFILE, *sorted((REPO_ROOT / "docker").glob("*.Dockerfile"))]
DEMO_HOST_DOCKERFILE = REPO_ROOT / "docker" / "demo-host.Dockerfile"
DEMO_HOST_SSHD_CONFIG = REPO_ROOT / "docker" / "demo-host" / "sshd_config"
DEMO_HOST_HOST_KEY = "/var/lib/airlock-demo-host/ssh_host_ed25519_key"
SLACK_RECEIVER_SCRIPT = REPO_ROOT / "docker" / "slack_receiver.py"

AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)
BACKING_SERVICES = ("postgres", "redis")
DEMO_SERVICES = ("slack-receiver", "demo-host")
ONE_SHOT_SERVICES = ("airflow-init",)
PROJECT_MOUNTS = {
    "/opt/airflow/dags": "./dags",
    "/opt/airflow/plugins": "./plugins",
    "/opt/airflow/include": "./include",
    "/opt/airflow/docs": "./docs",
}

SECRET_KEY_PATTERN = re.compile(r"PASSWORD|SECRET|FERNET|KEY")
# ${NAME:?message}: compose refuses to start while NAME is unset or empty.
REQUIRED_VARIABLE = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):\?[^}]+\}$")
URL_CREDENTIALS = re.compile(r"://[^/:@\s]+:(?P<password>[^@\s]*)@")

# Values for every required variable, so `docker compose config` can interpolate the file.
REQUIRED_ENVIRONMENT = {
    "AIRFLOW_JWT_SECRET": "test-jwt-secret",
    "AIRFLOW_API_SECRET_KEY": "test-api-secret-key",
    "AIRFLOW_FERNET_KEY": "dGVzdC1mZXJuZXQta2V5LTMyLWJ5dGVzLWxvbmctISE=",
    "AIRFLOW_POSTGRES_PASSWORD": "test-postgres-password",
    "_AIRFLOW_WWW_USER_PASSWORD": "test-admin-password",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, whichever of the two compose forms it uses."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(entry.split("=", 1) if "=" in entry else (entry, "") for entry in environment)
    return {key: "" if value is None else str(value) for key, value in environment.items()}


def mounts_of(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source of every volume, in short (``src:dst[:mode]``) or long syntax."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume.get("source", "")
        else:
            source, target, *_mode = volume.split(":")
            mounts[target] = source
    return mounts


def image_is_pinned(reference: str) -> bool:
    """True for ``name:tag`` with a tag other than ``latest``, or for a ``@sha256:`` digest."""
    if "${" in reference:
        return False
    if "@sha256:" in reference:
        return True
    last_component = reference.rsplit("/", 1)[-1]
    if ":" not in last_component:
        return False
    return last_component.rsplit(":", 1)[1] not in ("", "latest")


def dockerfile_base_images(dockerfile: Path) -> list[str]:
    """The image of every ``FROM`` line, without ``--platform`` and ``AS`` stage names."""
    images = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "FROM":
            images.append(next(word for word in words[1:] if not word.startswith("--")))
    return images


def test_the_dockerfile_checks_cover_the_airflow_and_demo_host_images() -> None:
    assert DOCKERFILES == [AIRFLOW_DOCKERFILE, DEMO_HOST_DOCKERFILE]


@pytest.mark.parametrize("name", [*BACKING_SERVICES, *AIRFLOW_SERVICES, *DEMO_SERVICES])
def test_compose_defines_the_service(services: dict[str, dict[str, Any]], name: str) -> None:
    assert name in services, f"docker-compose.yaml has no service {name!r}"


def test_every_service_has_a_pinned_image(services: dict[str, dict[str, Any]]) -> None:
    unpinned = {
        name: service.get("image")
        for name, service in services.items()
        if not image_is_pinned(str(service.get("image", "")))
    }
    assert unpinned == {}, "every service names its image as name:tag, with a tag that is not latest"


@pytest.mark.parametrize(
    "reference",
    [
        pytest.param("apache/airflow:3.3.2-python3.11", id="tag"),
        pytest.param("registry.local:5000/airlock-airflow:3.3.2", id="registry-with-port"),
        pytest.param("redis@sha256:" + "0" * 64, id="digest"),
    ],
)
def test_pinned_image_references_are_recognised(reference: str) -> None:
    assert image_is_pinned(reference)


@pytest.mark.parametrize(
    "reference",
    [
        pytest.param("redis", id="bare-name"),
        pytest.param("redis:latest", id="latest"),
        pytest.param("registry.local:5000/redis", id="registry-port-is-not-a-tag"),
        pytest.param("${AIRFLOW_IMAGE_NAME:-apache/airflow:3.3.2}", id="variable"),
    ],
)
def test_unpinned_image_references_are_recognised(reference: str) -> None:
    assert not image_is_pinned(reference)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_every_dockerfile_base_image_is_pinned(dockerfile: Path) -> None:
    images = dockerfile_base_images(dockerfile)
    assert images, f"{dockerfile.name} has no FROM line"
    assert [image for image in images if not image_is_pinned(image)] == []


def test_airflow_image_extends_the_official_airflow_3_3_2_image() -> None:
    assert dockerfile_base_images(AIRFLOW_DOCKERFILE) == ["apache/airflow:3.3.2-python3.11"]


def test_airflow_image_installs_requirements_under_the_constraints() -> None:
    dockerfile = AIRFLOW_DOCKERFILE.read_text()
    install = re.search(r"^RUN pip install (?P<arguments>.*)$", dockerfile, re.MULTILINE)
    assert install, "the Dockerfile installs Airlock's dependencies with pip"
    arguments = install["arguments"].split()
    assert "--no-cache-dir" in arguments
    assert re.search(r"-r \S*requirements\.txt", install["arguments"])
    assert re.search(r"-c \S*constraints\.txt", install["arguments"])
    copied = re.search(r"^COPY .*requirements\.txt constraints\.txt", dockerfile, re.MULTILINE)
    assert copied, "both files are copied into the image before pip runs"


def test_airflow_image_installs_as_the_airflow_user() -> None:
    lines = AIRFLOW_DOCKERFILE.read_text().splitlines()
    user_lines = [number for number, line in enumerate(lines) if line.startswith("USER ")]
    pip_line = next(number for number, line in enumerate(lines) if "pip install" in line)
    assert user_lines, "the Dockerfile says which user installs"
    last_user_before_pip = max(number for number in user_lines if number < pip_line)
    assert lines[last_user_before_pip] == "USER airflow"


@pytest.mark.parametrize("name", [name for name in AIRFLOW_SERVICES if name != "airflow-init"])
def test_airflow_services_run_the_image_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    assert services[name]["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert services[name]["image"] == services["airflow-init"]["image"]


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_runs_celery_with_a_redis_broker_and_a_postgres_result_backend(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    environment = environment_of(services[name])
    assert environment["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert environment["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
    assert re.fullmatch(
        r"db\+postgresql://airflow:\$\{[^}]+\}@postgres/airflow",
        environment["AIRFLOW__CELERY__RESULT_BACKEND"],
    )
    assert re.fullmatch(
        r"postgresql\+psycopg2://airflow:\$\{[^}]+\}@postgres/airflow",
        environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
    )


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_services_share_the_airlock_settings(services: dict[str, dict[str, Any]], name: str) -> None:
    environment = environment_of(services[name])
    assert environment["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
    assert environment["AIRFLOW__CORE__AUTH_MANAGER"] == (
        "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
    )
    assert (
        environment["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    )
    assert environment["AIRLOCK_ENVIRONMENTS_DIR"] == "/opt/airflow/include/environments"
    for conn_id in ("AIRLOCK_SSH", "AIRLOCK_REDIS", "AIRLOCK_SLACK"):
        assert environment[f"AIRFLOW_CONN_{conn_id}"] == f"${{AIRFLOW_CONN_{conn_id}:-}}"
    for setting, variable in (
        ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW_JWT_SECRET"),
        ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW_FERNET_KEY"),
    ):
        match = REQUIRED_VARIABLE.match(environment[setting])
        assert match, f"{setting} comes from a required variable"
        assert match["name"] == variable


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_project_code_is_mounted_into_every_airflow_service(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    mounts = mounts_of(services[name])
    assert {target: mounts.get(target) for target in PROJECT_MOUNTS} == PROJECT_MOUNTS
    assert mounts.get("/opt/airflow/logs") == "./logs"
    assert mounts.get("/opt/airflow/config") == "./config"


@pytest.mark.parametrize("name", [name for name in AIRFLOW_SERVICES if name not in ONE_SHOT_SERVICES])
def test_airflow_services_start_after_healthy_backends_and_a_successful_init(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    depends_on = services[name]["depends_on"]
    assert depends_on["postgres"] == {"condition": "service_healthy"}
    assert depends_on["redis"] == {"condition": "service_healthy"}
    assert depends_on["airflow-init"] == {"condition": "service_completed_successfully"}


def test_workers_start_once_the_execution_api_is_healthy(services: dict[str, dict[str, Any]]) -> None:
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"] == {"condition": "service_healthy"}


def test_init_migrates_the_database(services: dict[str, dict[str, Any]]) -> None:
    init = services["airflow-init"]
    assert environment_of(init)["_AIRFLOW_DB_MIGRATE"] == "true"
    assert "/entrypoint airflow version" in init["command"][-1]


def test_only_init_and_the_api_server_see_the_admin_password(services: dict[str, dict[str, Any]]) -> None:
    passwords_file = environment_of(services["airflow-init"])[
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
    ]
    passwords_dir = str(Path(passwords_file).parent)
    sources = {name: mounts_of(services[name]).get(passwords_dir) for name in AIRFLOW_SERVICES}
    assert sources == {
        name: "airflow-auth" if name in ("airflow-init", "airflow-apiserver") else None
        for name in AIRFLOW_SERVICES
    }
    assert "_AIRFLOW_WWW_USER_PASSWORD" in environment_of(services["airflow-init"])
    assert "_AIRFLOW_WWW_USER_PASSWORD" not in environment_of(services["airflow-apiserver"])


@pytest.mark.parametrize(
    ("name", "probe"),
    [
        pytest.param("postgres", "pg_isready", id="postgres"),
        pytest.param("redis", "redis-cli ping", id="redis"),
        pytest.param("airflow-apiserver", "http://localhost:8080/api/v2/version", id="apiserver"),
        pytest.param("airflow-scheduler", "http://localhost:8974/health", id="scheduler"),
        pytest.param("airflow-dag-processor", "--job-type DagProcessorJob", id="dag-processor"),
        pytest.param("airflow-triggerer", "--job-type TriggererJob", id="triggerer"),
        pytest.param("airflow-worker", "inspect ping", id="worker"),
        pytest.param("slack-receiver", "/health", id="slack-receiver"),
        pytest.param("demo-host", "/dev/tcp/127.0.0.1/22", id="demo-host"),
    ],
)
def test_long_running_services_have_a_healthcheck_probing_the_service(
    services: dict[str, dict[str, Any]], name: str, probe: str
) -> None:
    healthcheck = services[name].get("healthcheck", {})
    assert not healthcheck.get("disable", False)
    test = healthcheck.get("test")
    assert isinstance(test, list), f"{name} has a healthcheck test in exec form"
    assert test[0] in ("CMD", "CMD-SHELL")
    assert probe in " ".join(test[1:])


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    without = [
        name
        for name, service in services.items()
        if name not in ONE_SHOT_SERVICES and not service.get("healthcheck", {}).get("test")
    ]
    assert without == []


def test_demo_services_start_only_with_the_demo_profile(services: dict[str, dict[str, Any]]) -> None:
    profiles = {name: services[name].get("profiles") for name in DEMO_SERVICES}
    assert profiles == {name: ["demo"] for name in DEMO_SERVICES}


def test_the_stack_itself_starts_without_a_profile(services: dict[str, dict[str, Any]]) -> None:
    assert [name for name in (*BACKING_SERVICES, *AIRFLOW_SERVICES) if services[name].get("profiles")] == []


def test_the_backing_images_are_the_agreed_versions(services: dict[str, dict[str, Any]]) -> None:
    assert services["postgres"]["image"] == "postgres:16.4-bookworm"
    assert services["redis"]["image"] == "redis:7.2-bookworm"
    assert services["slack-receiver"]["image"] == "python:3.11-slim-bookworm"
    assert dockerfile_base_images(DEMO_HOST_DOCKERFILE) == ["debian:bookworm-slim"]


def all_environments(compose: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(where, key, value) for every environment entry of every service and ``x-`` extension."""
    sections = dict(compose["services"])
    sections.update({name: value for name, value in compose.items() if name.startswith("x-")})
    for where, section in sections.items():
        for key, value in environment_of(section).items():
            yield where, key, value


def test_secrets_come_only_from_required_variables(compose: dict[str, Any]) -> None:
    literal = [
        f"{where}: {key}"
        for where, key, value in all_environments(compose)
        if SECRET_KEY_PATTERN.search(key) and not key.endswith("_FILE") and not REQUIRED_VARIABLE.match(value)
    ]
    assert literal == [], "each secret is ${VARIABLE:?message}: no literal value, no default"


def test_secret_file_settings_name_a_path_not_a_secret(compose: dict[str, Any]) -> None:
    file_settings = [
        (key, value)
        for _, key, value in all_environments(compose)
        if SECRET_KEY_PATTERN.search(key) and key.endswith("_FILE")
    ]
    assert all(value.startswith("/") for _, value in file_settings)


def test_urls_carry_no_literal_passwords(compose: dict[str, Any]) -> None:
    literal = [
        f"{where}: {key}"
        for where, key, value in all_environments(compose)
        for match in URL_CREDENTIALS.finditer(value)
        if not REQUIRED_VARIABLE.match(match["password"])
    ]
    assert literal == []


def test_every_required_variable_is_listed_in_the_header() -> None:
    text = COMPOSE_FILE.read_text()
    header = "\n".join(line for line in text.split("\n\n", 1)[0].splitlines() if line.startswith("#"))
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?", text))
    assert required == set(REQUIRED_ENVIRONMENT)
    assert sorted(name for name in required if name not in header) == []


def test_worker_has_no_container_name_or_host_ports_so_it_scales(services: dict[str, dict[str, Any]]) -> None:
    worker = services["airflow-worker"]
    assert "container_name" not in worker
    assert "ports" not in worker


def test_api_server_is_published_on_port_8080(services: dict[str, dict[str, Any]]) -> None:
    assert services["airflow-apiserver"]["ports"] == ["8080:8080"]


def compose_plugin_available() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
    return version.returncode == 0


def test_docker_compose_config_accepts_the_file() -> None:
    if not compose_plugin_available():
        pytest.skip("the docker compose plugin is not installed here; the YAML checks above still ran")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "--profile", "demo", "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        env={**os.environ, **REQUIRED_ENVIRONMENT},
    )
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_refuses_to_start_without_the_secrets() -> None:
    if not compose_plugin_available():
        pytest.skip("the docker compose plugin is not installed here; the YAML checks above still ran")
    environment = {key: value for key, value in os.environ.items() if key not in REQUIRED_ENVIRONMENT}
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT,
        env=environment,
    )
    assert result.returncode != 0
    assert "see the header of docker-compose.yaml" in result.stderr


def test_demo_host_sshd_accepts_its_configuration(tmp_path: Path) -> None:
    sshd = Path("/usr/sbin/sshd")
    if not sshd.exists() or shutil.which("ssh-keygen") is None or not Path("/run/sshd").is_dir():
        pytest.skip("openssh-server (sshd, ssh-keygen, /run/sshd) is not installed here")
    host_key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    config = tmp_path / "sshd_config"
    config.write_text(DEMO_HOST_SSHD_CONFIG.read_text().replace(DEMO_HOST_HOST_KEY, str(host_key)))

    result = subprocess.run([str(sshd), "-t", "-f", str(config)], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr


def test_demo_host_makes_the_host_key_its_sshd_config_names() -> None:
    start_script = (REPO_ROOT / "docker" / "demo-host" / "start-sshd.sh").read_text()
    assert f"HostKey {DEMO_HOST_HOST_KEY}" in DEMO_HOST_SSHD_CONFIG.read_text().splitlines()
    assert f"key={DEMO_HOST_HOST_KEY}" in start_script
    assert start_script.rstrip().endswith("exec /usr/sbin/sshd -D -e")


@pytest.fixture(scope="module")
def slack_receiver_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("slack_receiver", SLACK_RECEIVER_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SlackReceiverUnderTest:
    """docker/slack_receiver.py serving on a free loopback port, printing into ``out``."""

    def __init__(self, module: ModuleType) -> None:
        self.out = io.StringIO()
        self.server = module.make_server("127.0.0.1", 0, out=self.out)
        self.port = self.server.server_address[1]

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request(
                method, path, body=body, headers={"Content-Type": content_type} if body else {}
            )
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def printed(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


@pytest.fixture
def slack_receiver(slack_receiver_module: ModuleType) -> Iterator[SlackReceiverUnderTest]:
    receiver = SlackReceiverUnderTest(slack_receiver_module)
    threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def test_slack_receiver_prints_and_keeps_each_json_post(slack_receiver: SlackReceiverUnderTest) -> None:
    message = {"text": "release_demo 1.2.0 finished", "blocks": []}

    answer = slack_receiver.request(
        "POST", "/services/T000/B000/XXX", json.dumps(message).encode(), "application/json; charset=utf-8"
    )

    assert answer == (200, "ok")
    [printed] = slack_receiver.printed()
    assert printed["path"] == "/services/T000/B000/XXX"
    assert (printed["text"], printed["blocks"]) == (message["text"], message["blocks"])
    status, kept = slack_receiver.request("GET", "/messages")
    assert (status, json.loads(kept)) == (200, [printed])


def test_slack_receiver_accepts_the_legacy_form_payload(slack_receiver: SlackReceiverUnderTest) -> None:
    body = urlencode({"payload": json.dumps({"text": "backup_demo verified"})}).encode()

    answer = slack_receiver.request(
        "POST", "/services/T000/B000/XXX", body, "application/x-www-form-urlencoded"
    )

    assert answer == (200, "ok")
    assert [message["text"] for message in slack_receiver.printed()] == ["backup_demo verified"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'["a list"]', id="json-list"),
    ],
)
def test_slack_receiver_rejects_a_body_that_is_not_a_json_object(
    slack_receiver: SlackReceiverUnderTest, body: bytes
) -> None:
    answer = slack_receiver.request("POST", "/services/T000/B000/XXX", body, "application/json")

    assert answer == (400, "invalid_payload")
    assert slack_receiver.printed() == []


def test_slack_receiver_answers_its_healthcheck(slack_receiver: SlackReceiverUnderTest) -> None:
    assert slack_receiver.request("GET", "/health") == (200, "ok")
