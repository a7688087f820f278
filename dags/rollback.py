"""``rollback_<env>``: roll every host of an environment back to its previous (or a named) release.

Runs under the same lock as ``release_<env>`` and with the same approval gate. The runbook
(``docs/runbooks/rollback.md``) is the DAG's documentation; the logic lives in
``airlock.tasks.rollback``.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, TriggerRule, chain, task

from airlock.config import VERSION_PATTERN, Environment, load_environments
from airlock.conventions import default_args, reason_param, runbook
from airlock.operators.approval import approval_gate
from airlock.tasks import rollback as steps
from airlock.tasks.environment import check_hosts_task, lock_task, unlock_task
from airlock.tasks.rollback import TaskIds


def rollback_dag(environment: Environment) -> DAG:
    with DAG(
        dag_id=f"rollback_{environment.name}",
        description=f"Switch {environment.name}'s hosts back to their previous (or a named) release",
        doc_md=runbook("rollback", environment=environment.name),
        schedule=None,
        catchup=False,
        tags=["airlock", "rollback", environment.name],
        default_args=default_args(environment),
        params={
            "to_version": Param(
                None,
                type=["null", "string"],
                pattern=VERSION_PATTERN,
                description="Release to go back to (installed on every host); empty: each host's previous",
            ),
            "reason": reason_param(),
        },
    ) as dag:

        @task(task_id=TaskIds.PLAN, retries=0)
        def plan(host_states: list):
            """Each host's target release, refused if it is not installed there."""
            return steps.plan(environment, list(host_states))

        @task(task_id=TaskIds.ROLL_BACK_HOST, retries=2, map_index_template="{{ host_name }}")
        def roll_back_host(host_name: str, planned: dict):
            """Switch `current` back, activate, wait until healthy on the target release."""
            return steps.roll_back_planned_host(environment, host_name=host_name, planned=planned)

        @task(task_id=TaskIds.CONCLUDE, retries=2, trigger_rule=TriggerRule.ALL_DONE)
        def conclude():
            """Audit record and Slack; the run fails unless every host is back."""
            return steps.conclude(environment)

        taken = lock_task(environment, purpose="rollback to {{ params.to_version or 'previous releases' }}")
        states = check_hosts_task(environment)
        planned = plan(states)
        taken >> states
        rolled_back = roll_back_host.partial(planned=planned).expand(
            host_name=[h.name for h in environment.hosts]
        )
        gate = approval_gate(
            environment,
            subject=f"Roll back {environment.name}?",
            change="rollback to {{ params.to_version or 'previous releases' }}",
            task_id=TaskIds.APPROVE,
            plan_task_id=TaskIds.PLAN,
        )
        chain(planned, *gate, rolled_back)
        released = unlock_task(environment)
        chain(rolled_back, conclude(), released)
        taken >> released
    return dag


for _environment in load_environments():
    globals()[f"rollback_{_environment.name}"] = rollback_dag(_environment)
