"""``restore_<env>``: replace the environment's database with a backup, after approval.

Manual only. A safety backup of the current database comes first; the live database is replaced
by renaming and kept, never dropped. The runbook (``docs/runbooks/restore.md``) is the DAG's
documentation; the logic lives in ``airlock.tasks.restore``.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, chain, task

from airlock.config import Environment, load_environments
from airlock.conventions import default_args, reason_param, runbook
from airlock.core.restore import BACKUP_PARAM_PATTERN
from airlock.operators.approval import approval_gate
from airlock.tasks import restore as steps
from airlock.tasks.environment import lock_task, unlock_task
from airlock.tasks.restore import APPROVAL_CHANGE, TaskIds


def restore_dag(environment: Environment) -> DAG:
    with DAG(
        dag_id=f"restore_{environment.name}",
        description=f"Restore {environment.name}'s database from a backup (safety backup first)",
        doc_md=runbook("restore", environment=environment.name),
        schedule=None,
        catchup=False,
        max_active_runs=1,
        tags=["airlock", "backup", "restore", environment.name],
        default_args={**default_args(environment), "execution_timeout": environment.backup.timeout},
        params={
            "backup": Param(
                None,
                type=["null", "string"],
                pattern=BACKUP_PARAM_PATTERN,
                description="Backup to restore, e.g. demo-20261126T020000Z; empty: the newest verified",
            ),
            "reason": reason_param("Why (shown to the approvers); one line"),
        },
    ) as dag:

        @task(task_id=TaskIds.PLAN, retries=2)
        def plan():
            """Choose the backup and describe what the restore will do and lose."""
            return steps.plan(environment)

        @task(task_id=TaskIds.SAFETY_BACKUP, retries=1)
        def safety_backup():
            """A backup of the database as it is now: the way back from this restore."""
            return steps.safety_backup(environment)

        @task(task_id=TaskIds.RESTORE, retries=0)
        def restore(planned: dict, safety: dict):
            """Restore beside the live database, check row counts, swap, run the SQL smoke tests."""
            return steps.restore(environment, planned, safety)

        @task(task_id=TaskIds.ANNOUNCE, retries=2)
        def announce(restored: dict):
            """Tell the team which backup the database now holds and where the old one is kept."""
            steps.announce(environment, restored)

        taken = lock_task(environment, purpose="database restore")
        planned = plan()
        taken >> planned
        safety = safety_backup()
        gate = approval_gate(
            environment,
            subject=f"Restore the {environment.name} database?",
            change=APPROVAL_CHANGE,
            task_id=TaskIds.APPROVE,
            plan_task_id=TaskIds.PLAN,
        )
        chain(planned, *gate, safety)
        restored = restore(planned, safety)
        released = unlock_task(environment)
        announce(restored) >> released
        taken >> released
    return dag


for _environment in load_environments():
    if _environment.backup is not None:
        globals()[f"restore_{_environment.name}"] = restore_dag(_environment)
