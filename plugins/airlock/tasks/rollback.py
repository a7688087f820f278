"""The steps of ``rollback_<env>``, one function per task; ``dags/rollback.py`` wires them.

Rolling a host back switches it to a release already installed there (its previous one, or the
one named by ``to_version``), as the rollback plan says; the run's outcome is
``airlock.core.outcome``'s decision.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import Environment
from airlock.core.outcome import (
    ROLLBACK_INCOMPLETE,
    approver,
    approver_name,
    describe_failed,
    rollback_outcome,
)
from airlock.core.release import InvalidReleaseRequest, RollbackPlan, build_rollback_plan, validate_version
from airlock.hooks.hosts import roll_back_host
from airlock.hooks.lock import AttentionMark
from airlock.hooks.ops_store import AuditRecord, write_audit_record
from airlock.notifications.slack import post, render
from airlock.tasks import environment as shared
from airlock.tasks.environment import (
    approval_timeout,
    hold_lock,
    mapped,
    require_run_approval,
    run_task_states,
    triggering_user,
)

log = logging.getLogger(__name__)

#: What a rollback run accepts in its conf.
REQUEST_KEYS = ("to_version", "reason")


class TaskIds(shared.TaskIds):
    """The task ids of ``rollback_<env>``."""

    PLAN = "plan"
    APPROVE = "approve"
    ROLL_BACK_HOST = "roll_back_host"
    CONCLUDE = "conclude"


def plan_rollback(
    environment: Environment,
    *,
    conf: Mapping[str, Any] | None,
    params: Mapping[str, Any],
    host_states: list[Mapping[str, Any]],
    triggered_by: str,
) -> dict[str, Any]:
    """The rollback plan (each host's target release, refused if not installed there) and its
    Markdown, the approver's reading."""
    unknown = sorted(set(conf or {}) - set(REQUEST_KEYS))
    to_version = params.get("to_version") or None
    try:
        if unknown:
            raise InvalidReleaseRequest(
                f"unknown parameter(s) {', '.join(unknown)}: use {' and '.join(REQUEST_KEYS)}"
            )
        if to_version is not None:
            validate_version(to_version)
        rollback_plan = build_rollback_plan(
            environment=environment,
            to_version=to_version,
            host_states=list(host_states),
            triggered_by=triggered_by,
            reason=params.get("reason") or "",
        )
    except InvalidReleaseRequest as error:
        raise AirflowFailException(str(error)) from None
    markdown = rollback_plan.to_markdown()
    log.info("Rollback plan:\n%s", markdown)
    return {"plan": rollback_plan.to_dict(), "markdown": markdown, "digest": rollback_plan.digest()}


def conclude_rollback(
    environment: Environment,
    *,
    dag_id: str,
    run_id: str,
    planned: Mapping[str, Any] | None,
    approval: Mapping[str, Any] | None,
    task_states: Mapping[str, str],
    started_at: datetime | None,
    approval_timeout: str | None = None,
) -> dict[str, Any]:
    """Audit record and Slack; the run ends failed unless every host was rolled back
    (``approval_timeout``: the approval's timeout, when nobody answered within it)."""
    if planned is None:
        raise AirflowFailException(
            f"Rollback of {environment.name} stopped before planning: see the failed task"
        )
    rollback_plan = RollbackPlan.from_dict(planned["plan"])
    host_states = {
        planned_host.host: task_states.get(mapped(TaskIds.ROLL_BACK_HOST, index))
        for index, planned_host in enumerate(rollback_plan.hosts)
    }
    names = {
        mapped(TaskIds.ROLL_BACK_HOST, index): f"{TaskIds.ROLL_BACK_HOST} ({planned_host.host})"
        for index, planned_host in enumerate(rollback_plan.hosts)
    }
    outcome = rollback_outcome(
        host_states,
        approval=task_states.get(TaskIds.APPROVE),
        failed=describe_failed(task_states, names),
        approval_timeout=approval_timeout,
    )
    mark = AttentionMark(environment=environment.name, redis_conn_id=environment.redis_conn_id)
    resolve = (
        f"To resolve: make the hosts reachable and trigger rollback_{environment.name} again "
        f"(to_version={rollback_plan.hosts[0].new_version} if every host should run it); once it "
        "succeeds the mark is cleared"
    )
    if outcome.result == ROLLBACK_INCOMPLETE:
        mark.set(dag_id=dag_id, run_id=run_id, what=f"rollback {outcome.detail}", resolve=resolve)
    write_audit_record(
        environment,
        AuditRecord(
            dag_id=dag_id,
            run_id=run_id,
            action="rollback",
            version=", ".join(sorted({p.new_version for p in rollback_plan.hosts})),
            previous={p.host: p.current_version for p in rollback_plan.hosts},
            triggered_by=rollback_plan.triggered_by,
            approved_by=approver(approval),
            approved_by_name=approver_name(approval),
            reason=rollback_plan.reason,
            started_at=started_at,
            result=outcome.result,
            detail=outcome.detail,
        ),
    )
    if outcome.result == ROLLBACK_INCOMPLETE:
        post(
            environment.slack_conn_id,
            render(
                "rollback_incomplete",
                environment=environment.name,
                triggered_by=rollback_plan.triggered_by,
                detail=outcome.detail,
                resolve=resolve,
            ),
        )
    if not outcome.ended_well:
        raise AirflowFailException(f"Rollback of {environment.name}: {outcome.result} ({outcome.detail})")
    # Every host is healthy on its planned release: whatever an incomplete rollback left is resolved.
    cleared = mark.clear()
    post(
        environment.slack_conn_id,
        render(
            "rollback_succeeded",
            environment=environment.name,
            targets=rollback_plan.targets(),
            triggered_by=rollback_plan.triggered_by,
            cleared=f" Cleared the needs-attention mark ({cleared.describe()}); releases may start again."
            if cleared
            else "",
        ),
    )
    return {"result": outcome.result, "cleared_attention": cleared.run_id if cleared else None}


# -- task bodies: what they need from the run comes from its context ---------------------------------


def plan(environment: Environment, host_states: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``plan`` task: this run's request, from whoever triggered it."""
    context = get_current_context()
    return plan_rollback(
        environment,
        conf=context["dag_run"].conf,
        params=context["params"],
        host_states=list(host_states),
        triggered_by=triggering_user(context),
    )


def roll_back_planned_host(
    environment: Environment, *, host_name: str, planned: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``roll_back_host`` task: roll one host back to the release the rollback plan names
    for it (the task's map index shows the host's name)."""
    context = get_current_context()
    context["host_name"] = host_name
    hold_lock(environment, context["run_id"])
    rollback_plan = RollbackPlan.from_dict(planned["plan"])
    require_run_approval(
        environment,
        context,
        step=f"{TaskIds.ROLL_BACK_HOST} ({host_name})",
        plan_digest=rollback_plan.digest(),
        instead=(
            f"Nothing was changed. Trigger rollback_{environment.name} again and have an approver "
            "answer it under Browse > Required Actions."
        ),
    )
    [target] = [p for p in rollback_plan.hosts if p.host == host_name]
    changed = roll_back_host(environment, environment.host(host_name), target.new_version)
    return {"host": host_name, "version": target.new_version, "changed": changed}


def conclude(environment: Environment) -> dict[str, Any]:
    """The ``conclude`` task, from what the run's tasks returned."""
    context = get_current_context()
    ti, dag_run = context["ti"], context["dag_run"]
    return conclude_rollback(
        environment,
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        planned=ti.xcom_pull(task_ids=TaskIds.PLAN),
        approval=ti.xcom_pull(task_ids=TaskIds.APPROVE),
        task_states=run_task_states(context),
        started_at=dag_run.start_date,
        approval_timeout=approval_timeout(context),
    )
