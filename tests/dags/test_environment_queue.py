"""An environment's ``queue`` sends every task of its DAGs to the Celery workers serving it."""

from __future__ import annotations

import pytest

from tests.support import environment_dags

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
    dags = environment_dags(tmp_path, monkeypatch, "zoned", ENVIRONMENT_DAGS, **change)
    return {name: {task.queue for task in dag.tasks} for name, dag in dags.items()}


def test_every_task_of_an_environment_with_a_queue_goes_to_that_queue(tmp_path, monkeypatch):
    assert task_queues(tmp_path, monkeypatch, queue="zone-a") == {
        name: {"zone-a"} for name in ENVIRONMENT_DAGS
    }


@pytest.mark.parametrize("change", [pytest.param({}, id="absent"), pytest.param({"queue": None}, id="null")])
def test_without_a_queue_every_task_goes_to_the_default_queue(tmp_path, monkeypatch, change):
    assert task_queues(tmp_path, monkeypatch, **change) == {name: {"default"} for name in ENVIRONMENT_DAGS}
