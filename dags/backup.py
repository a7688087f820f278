"""``backup_<env>``: dump the environment's database, prove the dump by restoring it, prune old ones.

Scheduled from ``backup.schedule`` in the environment file (and triggerable). Environments without
a ``backup:`` section have no backup DAG. The runbook (``docs/runbooks/backup.md``) is the DAG's
documentation; the logic lives in ``airlock.tasks.backup``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Asset, Param, get_current_context, task

from airlock.config import Environment, load_environments
from airlock.conventions import default_args, runbook
from airlock.tasks.backup import apply_retention, take_backup, verify_backup


def verified_backup_asset(environment: Environment) -> Asset:
    """Updated each time a backup of the environment is verified; its extra names the backup."""
    return Asset(name=f"airlock_verified_backup_{environment.name}", uri=environment.backup.destination)


def backup_dag(environment: Environment) -> DAG:
    settings = environment.backup
    verified_backup = verified_backup_asset(environment)
    with DAG(
        dag_id=f"backup_{environment.name}",
        description=f"Back up {environment.name}'s database, verify it by a restore, apply retention",
        doc_md=runbook("backup", environment=environment.name),
        schedule=settings.schedule,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
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

        @task(retries=1)
        def dump():
            """pg_dump from one snapshot, row counts from the same snapshot, manifest written last."""
            dag_run = get_current_context()["dag_run"]
            kind = "scheduled" if dag_run.run_type == "scheduled" else "manual"
            return take_backup(environment, kind=kind, dag_id=dag_run.dag_id, run_id=dag_run.run_id).summary()

        @task(retries=1, outlets=[verified_backup])
        def verify(backup: dict):
            """Check every SHA-256, restore into a scratch database, compare row counts, drop it."""
            context = get_current_context()
            manifest = verify_backup(environment, backup["name"], verified_by=context["run_id"])
            context["outlet_events"][verified_backup].extra = manifest.summary()
            return manifest.summary()

        @task(retries=2)
        def prune(verified: dict, params=None):
            """Keep the newest verified backup per period (never the newest one); a dry run lists."""
            return apply_retention(environment, dry_run=params["dry_run"])

        prune(verify(dump()))
    return dag


for _environment in load_environments():
    if _environment.backup is not None:
        globals()[f"backup_{_environment.name}"] = backup_dag(_environment)
