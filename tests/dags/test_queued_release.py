"""``rollout.on_lock_busy`` as the release DAG is built: with ``wait``, a reschedule-mode sensor
queues for the lock before the lock task; with ``fail`` (the default) there is none."""

from __future__ import annotations

from datetime import timedelta

from airlock.tasks.environment import TaskIds
from tests.support import demo_document, environment_dags


def release(tmp_path, monkeypatch, **rollout):
    settings = {**demo_document()["rollout"], **rollout}
    return environment_dags(tmp_path, monkeypatch, "queued", ("release",), rollout=settings)["release"]


def test_a_release_that_waits_queues_in_a_sensor_holding_no_slot_before_the_lock(tmp_path, monkeypatch):
    dag = release(
        tmp_path, monkeypatch, on_lock_busy="wait", lock_wait_timeout="20m", lock_poll_interval="5s"
    )

    wait = dag.get_task(TaskIds.WAIT_FOR_LOCK)
    assert wait.mode == "reschedule"
    assert wait.poke_interval == 5
    assert timedelta(minutes=20) < timedelta(seconds=wait.timeout) <= timedelta(minutes=22)  # a backstop
    assert wait.upstream_task_ids == {"validate_request"}
    assert dag.get_task(TaskIds.LOCK).upstream_task_ids == {TaskIds.WAIT_FOR_LOCK}
    assert list(wait.op_args) == ["release {{ params.version }}"]


def test_by_default_a_release_fails_at_once_on_a_held_lock(tmp_path, monkeypatch):
    dag = release(tmp_path, monkeypatch)

    assert not dag.has_task(TaskIds.WAIT_FOR_LOCK)
    assert dag.get_task(TaskIds.LOCK).upstream_task_ids == {"validate_request"}
