"""``log_cleanup_<env>``: compress, then delete, old application logs on every host.

One mapped task per host (labelled with the host name) runs the whole cleanup of that host in
one SSH session with the host's own ``find`` and ``gzip``; ``summarize`` adds the hosts up. The
runbook (``docs/runbooks/log-cleanup.md``) is the DAG's documentation.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task

from airlock.config import Environment, load_environments
from airlock.conventions import START_DATE, default_args, runbook
from airlock.tasks import log_cleanup
from airlock.tasks.environment import maintenance_window_task
from airlock.tasks.log_cleanup import TaskIds


def log_cleanup_dag(environment: Environment) -> DAG:
    with DAG(
        dag_id=f"log_cleanup_{environment.name}",
        description=f"Compress and delete old application logs on the hosts of {environment.name}",
        doc_md=runbook("log-cleanup", environment=environment.name),
        schedule=environment.logs.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["airlock", "maintenance", "logs", environment.name],
        default_args=default_args(environment),
        params={
            "dry_run": Param(
                False, type="boolean", description="Only report what would be compressed and deleted"
            ),
        },
    ) as dag:

        @task(
            task_id=TaskIds.CLEAN_HOST,
            retries=2,
            map_index_template="{{ host_name }}",
            max_active_tis_per_dagrun=8,
        )
        def clean_host(host_name: str):
            """Delete old compressed logs, then gzip old logs, on one host (idempotent)."""
            return log_cleanup.clean_host(environment, host_name)

        @task(task_id=TaskIds.SUMMARIZE, retries=1)
        def summarize(reports: list[dict]):
            """Files and bytes per host; Slack only when something needs a person."""
            return log_cleanup.summarize(environment, reports)

        cleaned = clean_host.expand(host_name=[host.name for host in environment.hosts])
        if (window := maintenance_window_task(environment)) is not None:
            window >> cleaned
        summarize(cleaned)
    return dag


for _environment in load_environments():
    globals()[f"log_cleanup_{_environment.name}"] = log_cleanup_dag(_environment)
