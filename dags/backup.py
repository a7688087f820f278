"""``backup_<env>``: dump the environment's database, prove the dump by restoring it, prune old ones.

Scheduled from ``backup.schedule`` in the environment file (and triggerable). Environments without
a ``backup:`` section have no backup DAG. The runbook (``docs/runbooks/backup.md``) is the DAG's
documentation; the logic lives in ``airlock.tasks.backup``.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from airlock.config import Environment, load_environments
from airlock.conventions import START_DATE, default_args, runbook
from airlock.tasks import backup as steps
from airlock.tasks.backup import TaskIds


def backup_dag(environment: Environment) -> DAG:
    settings = environment.backup
    with DAG(
        dag_id=f"backup_{environment.name}",
        description=f"Back up {environment.name}'s database, verify it by a restore, apply retention",
        doc_md=runbook("backup", environment=environment.name),
        schedule=settings.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["airlock", "backup", environment.name],
        default_args={**default_args(environment), "execution_timeout": settings.timeout},
        params={
            "dry_run": Param(
                False,
                type="boolean",
                description="Back up and verify, but only list what retention would remove",
            ),
        },
    ) as dag:

        @task(task_id=TaskIds.DUMP, retries=1)
        def dump():
            """pg_dump from one snapshot, row counts from the same snapshot, manifest written last."""
            return steps.dump(environment)

        @task(task_id=TaskIds.VERIFY, retries=1, outlets=[steps.verified_backup_asset(environment)])
        def verify(backup: dict):
            """Check every SHA-256, restore into a scratch database, compare row counts, drop it."""
            return steps.verify(environment, backup)

        @task(task_id=TaskIds.PRUNE, retries=2)
        def prune(verified: dict):
            """Keep the newest verified backup per period (never the newest one); a dry run lists."""
            return steps.prune(environment)

        prune(verify(dump()))
    return dag


for _environment in load_environments():
    if _environment.backup is not None:
        globals()[f"backup_{_environment.name}"] = backup_dag(_environment)
