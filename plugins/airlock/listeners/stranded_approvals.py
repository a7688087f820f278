"""Resume approvals whose answer Airflow 3.3 recorded but never acted on.

An approval task parks in ``awaiting_input``; the answer (``PATCH .../hitlDetails``) is meant to
resume it at once. When the answer arrives while the task is still being parked (a CI job or a
person answering within a second of the request being listed), Airflow 3.3's response handler
reads the task's state from before the park (``session.get(TI, ..., with_for_update=...)``
returns the instance already loaded, without ``populate_existing``), records the answer and
does not resume. The task then waits until its response timeout, when the scheduler's own
timeout sweep finally resumes it with the answer: an hour later for the demo.

:func:`resume_stranded_approvals` is that same resume, without the deadline: every parked task
whose request has an answer is resumed exactly as the response handler would have done
(``handle_event_submit`` with the recorded answer). The scheduler runs it every second
(``airlock.listeners.scheduler``). The reproduction and the upstream fix are in
``docs/behaviour.md`` ("Approvals that come fast").
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

log = logging.getLogger(__name__)


def resume_stranded_approvals(session: Session) -> list[str]:
    """Resume every ``awaiting_input`` task whose request was answered; returns their keys."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import handle_event_submit
    from airflow.triggers.base import TriggerEvent
    from airflow.utils.sqlalchemy import with_row_locks
    from airflow.utils.state import TaskInstanceState

    query = (
        select(TaskInstance)
        .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
        .where(TaskInstance.state == TaskInstanceState.AWAITING_INPUT, HITLDetail.responded_at.is_not(None))
        .options(joinedload(TaskInstance.hitl_detail))
        .limit(100)
    )
    resumed = []
    for ti in session.scalars(with_row_locks(query, of=TaskInstance, session=session, skip_locked=True)):
        handle_event_submit(
            TriggerEvent(ti.hitl_detail.as_resume_event_payload()), task_instance=ti, session=session
        )
        resumed.append(f"{ti.dag_id}.{ti.task_id} {ti.run_id}")
        log.warning(
            "Resumed %s.%s (%s): its answer was recorded while it was being parked and Airflow did "
            "not resume it",
            ti.dag_id,
            ti.task_id,
            ti.run_id,
        )
    session.flush()
    return resumed
