"""An answer Airflow recorded without resuming the task is acted on by Airlock's scheduler guard.

Airflow 3.3 can record an approval given while the task is being parked and leave the task
waiting (``airlock.listeners.stranded_approvals``). Here the answer is written exactly as the
response handler writes it when that happens (the HITL row answered, the task left parked), then
the guard runs, as the scheduler's Airlock thread does every second (``tests.support.run_dag``
plays that thread for ``dag.test()``, which has no scheduler). The end-to-end tests
show the same on the real scheduler with answers given within 100 ms of the request.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime

from airflow.models.hitl import HITLDetail
from airflow.models.taskinstance import TaskInstance
from airflow.utils.session import create_session
from airflow.utils.state import TaskInstanceState
from sqlalchemy import select

from airlock.listeners.stranded_approvals import resume_stranded_approvals
from tests.support import load_dag, run_dag


def record_answer_without_resuming(dag_id: str, run_id: str, task_id: str) -> str:
    """Once the task is parked, answer it the way Airflow does when it strands the task."""
    this_task = (
        TaskInstance.dag_id == dag_id,
        TaskInstance.run_id == run_id,
        TaskInstance.task_id == task_id,
    )
    while True:
        with create_session() as session:
            ti = session.scalar(select(TaskInstance).where(*this_task))
            if ti.state == TaskInstanceState.AWAITING_INPUT:
                break
        time.sleep(0.05)
    with create_session() as session:
        detail = session.scalar(select(HITLDetail).where(HITLDetail.ti_id == ti.id))
        detail.chosen_options = ["Approve"]
        detail.params_input = {}
        detail.responded_by = {"id": "admin", "name": "admin"}
        detail.responded_at = datetime.now(UTC)
    with create_session() as session:
        return session.scalar(select(TaskInstance.state).where(*this_task))


def test_an_answer_recorded_while_the_task_was_parked_resumes_it(
    environment, sandbox, redis_client, slack, postgres_url
):
    key = f"airlock:lock:{environment.name}"
    held = {
        "token": secrets.token_hex(16),
        "run_id": "manual__stuck",
        "purpose": "release 9.9.9",
        "triggered_by": "alice",
        "since": datetime.now(UTC).isoformat(),
    }
    redis_client.set(key, json.dumps(held), px=600_000)

    run_id, states, answered = run_dag(
        load_dag(f"unlock_{environment.name}"),
        {"reason": "answered during the park"},
        answer=record_answer_without_resuming,
    )

    assert answered["result"] == TaskInstanceState.AWAITING_INPUT  # answered, yet still parked
    assert answered["resumed"] == [f"unlock_{environment.name}.approve {run_id}"]
    assert states["approve"] == "success", states
    assert states["break_lock"] == "success", states
    assert redis_client.get(key) is None


def test_nothing_is_resumed_while_no_answer_was_recorded(environment):
    with create_session() as session:
        assert resume_stranded_approvals(session) == []
