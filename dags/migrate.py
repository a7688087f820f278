"""``migrate_<env>``: plan (dry run) or apply a version's database migrations on their own.

Releases apply migrations themselves (after approval, before the first wave); this DAG is for
applying them ahead of a release (expand/contract) or checking what is pending. The runbook
(``docs/runbooks/database-migration.md``) is the DAG's documentation; the logic lives in
``airlock.tasks.migrate``.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, chain, task

from airlock.config import VERSION_PATTERN, Environment, load_environments
from airlock.conventions import default_args, freeze_override_param, runbook
from airlock.operators.approval import approval_gate
from airlock.tasks import migrate as steps
from airlock.tasks.environment import lock_task, unlock_task
from airlock.tasks.migrate import TaskIds


def migrate_dag(environment: Environment) -> DAG:
    with DAG(
        dag_id=f"migrate_{environment.name}",
        description=f"Plan or apply the database migrations of a version on {environment.name}",
        doc_md=runbook("database-migration", environment=environment.name),
        schedule=None,
        catchup=False,
        tags=["airlock", "migrations", environment.name],
        default_args=default_args(environment),
        params={
            "version": Param(
                type="string", pattern=VERSION_PATTERN, description="Version whose migrations to run"
            ),
            "dry_run": Param(
                False, type="boolean", description="Only list the pending migrations with their SQL"
            ),
            "freeze_override": freeze_override_param(),
        },
    ) as dag:

        @task(task_id=TaskIds.PLAN, retries=3)
        def plan():
            """Validate the migrations against the database and list the pending ones with their SQL."""
            return steps.plan(environment)

        @task.short_circuit(task_id=TaskIds.PROCEED, retries=0, ignore_downstream_trigger_rules=False)
        def proceed(planned: dict):
            """Stop here for a dry run or when nothing is pending."""
            return steps.proceed(planned)

        @task(task_id=TaskIds.APPLY, retries=1)
        def apply():
            """Apply in order, each migration in its own transaction, under an advisory lock."""
            return steps.apply(environment)

        taken = lock_task(environment, purpose="migrations of {{ params.version }}", freezable=True)
        planned = plan()
        taken >> planned
        applied = apply()
        gate = approval_gate(
            environment,
            subject=f"Apply migrations of {{{{ params.version }}}} on {environment.name}?",
            change="migrations of {{ params.version }}",
            task_id=TaskIds.APPROVE,
            plan_task_id=TaskIds.PLAN,
            freezable=True,
        )
        chain(proceed(planned), *gate, applied)
        released = unlock_task(environment)
        applied >> released
        taken >> released
    return dag


for _environment in load_environments():
    globals()[f"migrate_{_environment.name}"] = migrate_dag(_environment)
