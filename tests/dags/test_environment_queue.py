"""An environment's ``queue`` sends every task of its DAGs to the Celery workers serving it."""

from __future__ import annotations

import pytest

from tests.support import PROJECT, demo_document, write_environment

ENVIRONMENT_DAGS = (
    "release",
    "rollback",
    "migrate",
    "backup",
    "restore",
    "health",
    "log_cleanup",
    "db_maintenance",
    "unlock",
)


def task_queues(tmp_path, monkeypatch, **change) -> dict[str, set[str]]:
    from airflow.dag_processing.dagbag import DagBag

    document = {**demo_document(), **change}
    document["ssh"]["known_hosts"] = str(tmp_path / "known_hosts")
    write_environment(tmp_path / "environments" / "zoned.yaml", document)
    monkeypatch.setenv("AIRLOCK_ENVIRONMENTS_DIR", str(tmp_path / "environments"))
    queues = {}
    for name in ENVIRONMENT_DAGS:
        bag = DagBag(dag_folder=PROJECT / "dags" / f"{name}.py")
        assert not bag.import_errors, bag.import_errors
        queues[name] = {task.queue for task in bag.dags[f"{name}_zoned"].tasks}
    return queues


def test_every_task_of_an_environment_with_a_queue_goes_to_that_queue(tmp_path, monkeypatch):
    assert task_queues(tmp_path, monkeypatch, queue="zone-a") == {
        name: {"zone-a"} for name in ENVIRONMENT_DAGS
    }


@pytest.mark.parametrize("change", [pytest.param({}, id="absent"), pytest.param({"queue": None}, id="null")])
def test_without_a_queue_every_task_goes_to_the_default_queue(tmp_path, monkeypatch, change):
    assert task_queues(tmp_path, monkeypatch, **change) == {name: {"default"} for name in ENVIRONMENT_DAGS}
