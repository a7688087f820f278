"""``airflow_housekeeping``: Airflow's own task logs and metadata database, kept to their retention.

One DAG for the whole Airflow (not per environment); settings in ``include/housekeeping.yaml``.
``delete_old_task_logs`` empties the log folder of old files, ``trim_metadata_database`` runs
``airflow db clean`` through the ``metadata_conn_id`` connection. The runbook
(``docs/runbooks/airflow-housekeeping.md``) is the DAG's documentation.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from airlock.config import load_housekeeping_settings
from airlock.conventions import START_DATE, default_args, runbook
from airlock.tasks import housekeeping
from airlock.tasks.housekeeping import TaskIds

settings = load_housekeeping_settings()

with DAG(
    dag_id="airflow_housekeeping",
    description="Delete old Airflow task logs and trim the metadata database with airflow db clean",
    doc_md=runbook("airflow-housekeeping"),
    schedule=settings.schedule,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    tags=["airlock", "maintenance", "airflow"],
    default_args=default_args(owner=settings.owner, slack_conn_id=settings.slack_conn_id),
    params={
        "dry_run": Param(False, type="boolean", description="Only report what would be deleted"),
        # A run may keep more than include/housekeeping.yaml, never less (checked again in the tasks).
        "log_retention_days": Param(
            settings.log_retention_days,
            type="integer",
            minimum=settings.log_retention_days,
            description=f"Task logs kept, in days: at least {settings.log_retention_days}",
        ),
        "metadata_retention_days": Param(
            settings.metadata_retention_days,
            type="integer",
            minimum=settings.metadata_retention_days,
            description=f"Metadata records kept, in days: at least {settings.metadata_retention_days} "
            f"(approval evidence: at least {settings.audit_retention_days})",
        ),
    },
):

    @task(task_id=TaskIds.DELETE_OLD_TASK_LOGS, retries=2)
    def delete_old_task_logs():
        """Task log files older than the retention, then the directories left empty."""
        return housekeeping.delete_expired_task_logs(settings)

    @task(task_id=TaskIds.TRIM_METADATA_DATABASE, retries=2)
    def trim_metadata_database():
        """airflow db clean (no archive copies) through the metadata connection; archives dropped."""
        return housekeeping.trim_expired_metadata(settings)

    delete_old_task_logs()
    trim_metadata_database()
