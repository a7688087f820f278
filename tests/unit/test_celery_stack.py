"""The Celery mode of the local stack: what each worker is given (the e2e tests run it)."""

from __future__ import annotations

import socket

import pytest

from airlock_dev import worker_hostname
from airlock_dev.stack import AirlockStack

pytestmark = pytest.mark.unit


def test_celery_mode_uses_a_redis_broker_on_loopback_and_the_metadata_database_as_result_backend(tmp_path):
    stack = AirlockStack(
        home=tmp_path, executor="celery", metadata_database="meta", redis_db=4, broker_redis_db=5
    )

    settings = stack.settings()

    assert settings["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert settings["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6379/5"
    assert settings["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql://postgres@127.0.0.1:5432/meta"


def test_the_local_mode_keeps_the_resume_safe_local_executor(tmp_path):
    settings = AirlockStack(home=tmp_path).settings()

    assert settings["AIRFLOW__CORE__EXECUTOR"] == "airlock.executors.local.ResumeSafeLocalExecutor"
    assert not any(name.startswith("AIRFLOW__CELERY__") for name in settings)


def test_each_worker_has_its_own_directories_address_and_log_folder(tmp_path):
    first, second = (
        worker.settings() for worker in AirlockStack(home=tmp_path, executor="celery").celery_workers
    )

    for name in ("HOME", "TMPDIR", "AIRLOCK_ARTIFACT_CACHE", "AIRFLOW__LOGGING__BASE_LOG_FOLDER"):
        assert first[name] != second[name], name
    assert (first["AIRLOCK_WORKER_HOSTNAME"], second["AIRLOCK_WORKER_HOSTNAME"]) == ("127.0.0.2", "127.0.0.3")


def test_the_worker_log_servers_listen_on_their_own_loopback_address_only(tmp_path):
    stack = AirlockStack(home=tmp_path, executor="celery")

    for worker in stack.celery_workers:
        command = worker.commands(1, 8793)[worker.log_server]
        assert command[command.index("--host") + 1] == worker.address
        assert "--skip-serve-logs" in worker.commands(1, 8793)[worker.name]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"executor": "kubernetes"}, "is not one of local, celery", id="unknown-executor"),
        pytest.param(
            {"executor": "celery", "worker_queues": ("default",)}, "1 worker_queues for 2", id="queues"
        ),
    ],
)
def test_a_bad_stack_option_is_refused(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        AirlockStack(home=tmp_path, **options)


def test_a_worker_reports_its_own_host_name_else_the_machines(monkeypatch):
    monkeypatch.setenv(worker_hostname.VARIABLE, "127.0.0.3")
    assert worker_hostname.hostname() == "127.0.0.3"
    monkeypatch.delenv(worker_hostname.VARIABLE)
    assert worker_hostname.hostname() == socket.getfqdn()
