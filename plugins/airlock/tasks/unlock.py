"""The steps of ``unlock_<env>``, one function per task; ``dags/unlock.py`` wires them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airlock.config import Environment
from airlock.core.unlock import break_lock_markdown, normalized_reason
from airlock.notifications.slack import render
from airlock.tasks.environment import environment_lock, record_broken_lock, triggering_user


class TaskIds:
    """The task ids of ``unlock_<env>`` (it breaks a lock: it takes none itself)."""

    PLAN = "plan"
    APPROVE = "approve"
    BREAK_LOCK = "break_lock"


def plan_unlock(environment: Environment, *, reason: str) -> dict[str, Any]:
    """What ``unlock_<env>`` would break: the current holder, for the approver to read."""
    reason = normalized_reason(reason)
    if not reason:
        raise AirflowFailException("Give a reason: it is kept in the audit trail")
    holder = environment_lock(environment).holder()
    if holder is None:
        raise AirflowSkipException(f"The lock of {environment.name} is free; nothing to break")
    markdown = break_lock_markdown(
        environment=environment.name,
        holder=holder.describe(),
        dag_id=holder.dag_id,
        installation=holder.installation,
        reason=reason,
    )
    return {"holder": dataclasses.asdict(holder), "reason": reason, "markdown": markdown}


def break_planned_lock(
    environment: Environment, *, planned: Mapping[str, Any], dag_id: str, run_id: str, who: str
) -> str:
    """Break exactly the lock the plan showed (compare-and-delete on its token), with an audit row."""
    broken = environment_lock(environment).break_holder(planned["holder"]["token"])
    if broken is None:
        current = environment_lock(environment).holder()
        now = f"it is now held by {current.describe()}" if current else "it is free now"
        raise AirflowFailException(
            f"The lock of {environment.name} changed hands since the plan ({now}); nothing was broken"
        )
    record_broken_lock(
        environment,
        stale=broken,
        why=planned["reason"],
        dag_id=dag_id,
        run_id=run_id,
        who=who,
        message=render(
            "lock_broken_by_hand",
            environment=environment.name,
            who=who,
            holder=broken.describe(),
            why=planned["reason"],
        ),
    )
    return broken.describe()


# -- task bodies: what they need from the run comes from its context ---------------------------------


def plan(environment: Environment) -> dict[str, Any]:
    """The ``plan`` task: the holder of the lock, and the reason this run gives."""
    return plan_unlock(environment, reason=get_current_context()["params"]["reason"])


def break_lock(environment: Environment, planned: Mapping[str, Any]) -> str:
    """The ``break_lock`` task, in the name of whoever triggered this run."""
    context = get_current_context()
    return break_planned_lock(
        environment,
        planned=planned,
        dag_id=context["dag"].dag_id,
        run_id=context["run_id"],
        who=triggering_user(context),
    )
