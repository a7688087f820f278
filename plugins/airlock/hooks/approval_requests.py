"""Airflow's human-in-the-loop requests as the plugin app answers them from Slack, and the two
secrets-and-state helpers its Slack route needs (the signing secret, the replay guard).

:func:`answer_request` answers one request the way Airflow's REST API does
(``PATCH .../hitlDetails``): the task instance's row, then the request's, locked in that order (as
the execution API parks a task, so the two cannot deadlock), the answer written with the
responder, and a parked task resumed at once. What may answer is decided by the caller (``decide``)
inside the same transaction, so a request answered meanwhile by someone else is seen as answered.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class PendingRequest:
    """What the decision needs to know of one approval request."""

    answered: bool
    #: Whether the task is parked waiting for the answer (not finished, cleared or killed).
    waiting: bool
    options: list[str]
    chosen_options: list[str]
    responded_by: str | None
    assigned: list[str]
    #: The plan digest the request showed (the gate's XCom ``request``).
    plan_digest: str | None
    clear_number: int
    triggered_by: str


def signing_secret(conn_id: str) -> str | None:
    """The Slack app's signing secret: the password of ``conn_id``; None when there is none."""
    from airflow.sdk.bases.hook import BaseHook

    try:
        return BaseHook.get_connection(conn_id).password or None
    except Exception:
        return None


def first_time(redis_conn_id: str, key: str, ttl_seconds: int) -> bool:
    """Whether ``key`` is new (and now remembered for ``ttl_seconds``): the replay guard."""
    from airlock.hooks.redis import redis_client

    return bool(redis_client(redis_conn_id).set(key, "1", nx=True, ex=ttl_seconds))


def answer_request(
    *,
    dag_id: str,
    run_id: str,
    task_id: str,
    map_index: int,
    option: str,
    decide: Callable[[PendingRequest | None], tuple[str, str]],
) -> tuple[str, str]:
    """Answer the request with ``option`` as the user ``decide`` returns, ``(id, name)`` (it
    raises to refuse); returns that user."""
    from airflow._shared.timezones import timezone
    from airflow.models.dagrun import DagRun
    from airflow.models.hitl import HITLDetail, HITLUser
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import handle_event_submit
    from airflow.models.xcom import XComModel
    from airflow.triggers.base import TriggerEvent
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalar(
            select(TaskInstance)
            .where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.run_id == run_id,
                TaskInstance.task_id == task_id,
                TaskInstance.map_index == map_index,
            )
            .with_for_update(of=TaskInstance)
        )
        detail = None
        if ti is not None:
            detail = session.scalar(
                select(HITLDetail).where(HITLDetail.ti_id == ti.id).with_for_update(of=HITLDetail)
            )
        if ti is None or detail is None:
            decide(None)
            raise LookupError(f"no approval request {dag_id}/{run_id}/{task_id}")
        shown = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.map_index == map_index,
                XComModel.key == "request",
            )
        )
        shown = json.loads(shown) if isinstance(shown, str) else (shown or {})
        dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        user_id, user_name = decide(
            PendingRequest(
                answered=bool(detail.response_received),
                waiting=ti.state in (TaskInstanceState.AWAITING_INPUT, TaskInstanceState.DEFERRED),
                options=list(detail.options or []),
                chosen_options=list(detail.chosen_options or []),
                responded_by=detail.responded_by_user_name,
                assigned=[assignee["id"] for assignee in detail.assigned_users or []],
                plan_digest=shown.get("plan_digest"),
                clear_number=int(shown.get("clear_number") or 0),
                triggered_by=str(getattr(dag_run, "triggering_user_name", None) or ""),
            )
        )
        detail.responded_by = HITLUser(id=user_id, name=user_name)
        detail.responded_at = timezone.utcnow()
        detail.chosen_options = [option]
        detail.params_input = {}
        session.add(detail)
        if ti.state in (TaskInstanceState.AWAITING_INPUT, TaskInstanceState.DEFERRED):
            handle_event_submit(
                TriggerEvent(detail.as_resume_event_payload()), task_instance=ti, session=session
            )
    return user_id, user_name
