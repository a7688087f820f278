"""``unlock_<env>``: break an environment's lock by hand, behind approval, with a reason.

For the lock a dead run left and Airlock could not judge dead by itself (see the runbook,
``docs/runbooks/unlock.md``). The logic lives in ``airlock.tasks.unlock``.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, chain, task

from airlock.config import Environment, load_environments
from airlock.conventions import default_args, runbook
from airlock.operators.approval import approval_gate
from airlock.tasks import unlock as steps
from airlock.tasks.unlock import TaskIds


def unlock_dag(environment: Environment) -> DAG:
    with DAG(
        dag_id=f"unlock_{environment.name}",
        description=f"Break the lock of {environment.name} by hand, after approval",
        doc_md=runbook("unlock", environment=environment.name),
        schedule=None,
        catchup=False,
        tags=["airlock", "lock", environment.name],
        default_args=default_args(environment),
        params={
            "reason": Param(
                type="string",
                minLength=3,
                maxLength=500,
                pattern=r"^[^\n\r]*$",
                description="Why the lock must go (kept in the audit trail)",
            ),
        },
    ) as dag:

        @task(task_id=TaskIds.PLAN, retries=0)
        def plan():
            """Who holds the lock: the approver reads this before it is broken."""
            return steps.plan(environment)

        @task(task_id=TaskIds.BREAK_LOCK, retries=0)
        def break_lock(planned: dict):
            """Compare-and-delete exactly the lock the plan showed; audit row and Slack."""
            return steps.break_lock(environment, planned)

        planned = plan()
        gate = approval_gate(
            environment,
            subject=f"Break the lock of {environment.name}?",
            change=f"breaking the lock of {environment.name}",
            task_id=TaskIds.APPROVE,
            plan_task_id=TaskIds.PLAN,
        )
        chain(planned, *gate, break_lock(planned))
    return dag


for _environment in load_environments():
    globals()[f"unlock_{_environment.name}"] = unlock_dag(_environment)
