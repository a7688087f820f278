"""``restore_<env>``: replace the environment's database with a backup, after approval.

Manual only. A safety backup of the current database comes first; the live database is replaced
by renaming and kept, never dropped. The runbook (``docs/runbooks/restore.md``) is the DAG's
documentation; the logic lives in ``airlock.tasks.restore``.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, chain, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import Environment, load_environments
from airlock.conventions import default_args, runbook
from airlock.notifications.slack import post, render
from airlock.operators.approval import approval_gate
from airlock.tasks import release as steps
from airlock.tasks.backup import BackupError, take_backup
from airlock.tasks.environment import lock_task, unlock_task
from airlock.tasks.restore import RestorePlan, choose_backup, restore_database

BACKUP_NAME_PATTERN = r"^$|^[a-z0-9][a-z0-9-]{0,30}-[0-9]{8}T[0-9]{6}Z(-pre-release|-pre-restore)?$"


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
                "",
                type="string",
                pattern=BACKUP_NAME_PATTERN,
                description="Backup to restore, e.g. demo-20261126T020000Z; empty: the newest verified",
            ),
            "reason": Param("", type="string", maxLength=500, description="Why (shown to the approvers)"),
        },
    ) as dag:

        @task(retries=2)
        def plan(params=None):
            """Choose the backup and describe what the restore will do and lose."""
            try:
                backup = choose_backup(environment, params["backup"] or None)
            except BackupError as error:
                raise AirflowFailException(str(error)) from None
            restore_plan = RestorePlan(
                environment=environment.name,
                database=backup.database,
                backup=backup.summary(),
                triggered_by=steps.triggering_user(get_current_context()),
                reason=params["reason"],
            )
            return {"backup": backup.name, "markdown": restore_plan.to_markdown()}

        @task(retries=1)
        def safety_backup():
            """A backup of the database as it is now: the way back from this restore."""
            dag_run = get_current_context()["dag_run"]
            steps.hold_lock(environment, dag_run.run_id)  # the approval may have taken hours
            return take_backup(
                environment, kind="pre-restore", dag_id=dag_run.dag_id, run_id=dag_run.run_id
            ).summary()

        @task(retries=0)
        def restore(planned: dict, safety: dict):
            """Restore beside the live database, check row counts, swap, run the SQL smoke tests."""
            steps.hold_lock(environment, get_current_context()["run_id"])
            return {**restore_database(environment, planned["backup"]), "safety_backup": safety["name"]}

        @task(retries=2)
        def announce(restored: dict):
            """Tell the team which backup the database now holds and where the old one is kept."""
            post(
                environment.slack_conn_id,
                render(
                    "restore_succeeded",
                    environment=environment.name,
                    database=restored["database"],
                    backup=restored["backup"]["name"],
                    finished_at=restored["backup"]["finished_at"],
                    kept_as=restored["previous_kept_as"],
                    safety=restored["safety_backup"],
                    triggered_by=steps.triggering_user(get_current_context()),
                ),
            )

        taken = lock_task(environment, purpose="database restore")
        planned = plan()
        taken >> planned
        safety = safety_backup()
        gate = approval_gate(
            environment,
            subject=f"Restore the {environment.name} database?",
            change="restore of backup {{ ti.xcom_pull(task_ids='plan')['backup'] }}",
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
