"""``db_maintenance_<env>``: VACUUM (ANALYZE) where autovacuum fell behind, bloat and session report.

``inspect`` reads the statistics (read-only), ``vacuum`` runs plain ``VACUUM (ANALYZE,
SKIP_LOCKED, TRUNCATE false)`` on the tables above the dead tuple limits, ``reindex`` rebuilds
bloated B-tree indexes concurrently when ``db_maintenance.reindex_bloat_percent`` is set, and
``report`` writes the report to the task log (and to Slack when something needs a person); it runs
when vacuum or reindex failed too, and says so. The runbook
(``docs/runbooks/database-maintenance.md``) is the DAG's documentation.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, TriggerRule, task

from airlock.config import Environment, load_environments
from airlock.conventions import START_DATE, default_args, runbook
from airlock.tasks import db_maintenance as maintenance
from airlock.tasks.db_maintenance import TaskIds
from airlock.tasks.environment import maintenance_window_task


def db_maintenance_dag(environment: Environment) -> DAG:
    with DAG(
        dag_id=f"db_maintenance_{environment.name}",
        description=f"VACUUM (ANALYZE), bloat, unused index and session report for {environment.name}",
        doc_md=runbook("database-maintenance", environment=environment.name),
        schedule=environment.db_maintenance.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=["airlock", "maintenance", "database", environment.name],
        default_args=default_args(environment),
        params={
            "dry_run": Param(False, type="boolean", description="Only report: no VACUUM, no REINDEX"),
        },
    ) as dag:

        @task(task_id=TaskIds.INSPECT, retries=2)
        def inspect():
            """Dead tuples, sessions, bloat, unused and invalid indexes; changes nothing."""
            return maintenance.inspect(environment)

        @task(task_id=TaskIds.VACUUM, retries=1)
        def vacuum(inspection: dict):
            """Plain VACUUM (ANALYZE, SKIP_LOCKED, TRUNCATE false) per table over the limits: writes go on."""
            return maintenance.vacuum(environment, inspection)

        @task(task_id=TaskIds.REINDEX, retries=0)
        def reindex(inspection: dict):
            """REINDEX INDEX CONCURRENTLY the indexes over the bloat limit, one at a time."""
            return maintenance.reindex(environment, inspection)

        @task(task_id=TaskIds.REPORT, retries=1, trigger_rule=TriggerRule.ALL_DONE)
        def report(inspection: dict | None, vacuumed, reindexed):
            """The report in the task log; Slack only when something needs a person.

            Runs when vacuum or reindex failed too (their result is then None, and the report says
            so); the run still ends failed through the failed task.
            """
            return maintenance.report(environment, inspection, vacuumed, reindexed)

        inspection = inspect()
        if (window := maintenance_window_task(environment)) is not None:
            window >> inspection
        vacuumed = vacuum(inspection)
        reindexed = reindex(inspection)
        vacuumed >> reindexed
        report(inspection, vacuumed, reindexed)
    return dag


for _environment in load_environments():
    globals()[f"db_maintenance_{_environment.name}"] = db_maintenance_dag(_environment)
