"""``airflow_housekeeping``: Airflow's own task logs and metadata database, kept to their retention.

One DAG for the whole Airflow (not per environment); settings in ``include/housekeeping.yaml``.
``delete_old_task_logs`` empties the log folder of old files, ``trim_metadata_database`` runs
``airflow db clean`` through the ``metadata_conn_id`` connection. The runbook
(``docs/runbooks/airflow-housekeeping.md``) is the DAG's documentation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Param, conf, task

from airlock.conventions import default_args, runbook
from airlock.tasks import housekeeping

settings = housekeeping.load_housekeeping_settings()

with DAG(
    dag_id="airflow_housekeeping",
    description="Delete old Airflow task logs and trim the metadata database with airflow db clean",
    doc_md=runbook("airflow-housekeeping"),
    schedule=settings.schedule,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["airlock", "maintenance", "airflow"],
    default_args=default_args(owner=settings.owner, slack_conn_id=settings.slack_conn_id),
    params={
        "dry_run": Param(False, type="boolean", description="Only report what would be deleted"),
        "log_retention_days": Param(
            settings.log_retention_days, type="integer", minimum=1, description="Task logs kept, in days"
        ),
        "metadata_retention_days": Param(
            settings.metadata_retention_days,
            type="integer",
            minimum=1,
            description="Metadata records kept, in days",
        ),
    },
):

    @task(retries=2)
    def delete_old_task_logs(params=None):
        """Task log files older than the retention, then the directories left empty."""
        folder = settings.log_folder or Path(conf.get("logging", "base_log_folder"))
        return housekeeping.delete_old_task_logs(
            folder, timedelta(days=params["log_retention_days"]), dry_run=params["dry_run"]
        )

    @task(retries=2)
    def trim_metadata_database(params=None):
        """airflow db clean (no archive copies) through the metadata connection; archives dropped."""
        return housekeeping.trim_metadata_database(
            settings.metadata_conn_id,
            timedelta(days=params["metadata_retention_days"]),
            dry_run=params["dry_run"],
            tables=settings.tables,
        )

    delete_old_task_logs()
    trim_metadata_database()
