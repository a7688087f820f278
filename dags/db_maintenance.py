"""``db_maintenance_<env>``: VACUUM (ANALYZE) where autovacuum fell behind, bloat and session report.

``inspect`` reads the statistics (read-only), ``vacuum`` runs plain ``VACUUM (ANALYZE,
SKIP_LOCKED, TRUNCATE false)`` on the tables above the dead tuple limits, ``reindex`` rebuilds
bloated B-tree indexes concurrently when ``db_maintenance.reindex_bloat_percent`` is set, and
``report`` writes the report to the task log (and to Slack when something needs a person); it runs
when vacuum or reindex failed too, and says so. The runbook
(``docs/runbooks/database-maintenance.md``) is the DAG's documentation.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG, Param, get_current_context, task

from airlock.config import Environment, load_environments
from airlock.conventions import default_args, runbook
from airlock.notifications.slack import post, render
from airlock.tasks import db_maintenance as maintenance


def db_maintenance_dag(environment: Environment) -> DAG:
    with DAG(
        dag_id=f"db_maintenance_{environment.name}",
        description=f"VACUUM (ANALYZE), bloat, unused index and session report for {environment.name}",
        doc_md=runbook("database-maintenance", environment=environment.name),
        schedule=environment.db_maintenance.schedule,
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        tags=["airlock", "maintenance", "database", environment.name],
        default_args=default_args(environment),
        params={
            "dry_run": Param(False, type="boolean", description="Only report: no VACUUM, no REINDEX"),
        },
    ) as dag:

        @task(retries=2)
        def inspect():
            """Dead tuples, sessions, bloat, unused and invalid indexes; changes nothing."""
            return maintenance.inspect_database(environment)

        @task(retries=1)
        def vacuum(inspection: dict, params=None):
            """Plain VACUUM (ANALYZE, SKIP_LOCKED, TRUNCATE false) per table over the limits: writes go on."""
            if params["dry_run"]:
                return None
            return maintenance.vacuum_tables(environment, inspection["vacuum_candidates"])

        @task(retries=0)
        def reindex(inspection: dict, params=None):
            """REINDEX INDEX CONCURRENTLY the indexes over the bloat limit, one at a time."""
            indexes = maintenance.indexes_to_rebuild(environment.db_maintenance, inspection["index_bloat"])
            if params["dry_run"]:
                return None
            return maintenance.reindex_concurrently(environment, indexes)

        @task(retries=1, trigger_rule="all_done")
        def report(inspection: dict | None, vacuumed, reindexed, params=None):
            """The report in the task log; Slack only when something needs a person.

            Runs when vacuum or reindex failed too (their result is then None, and the report says
            so); the run still ends failed through the failed task.
            """
            result = maintenance.maintenance_report(
                environment, inspection, vacuumed, reindexed, dry_run=params["dry_run"]
            )
            if result["attention"]:
                post(
                    environment.slack_conn_id,
                    render(
                        "db_maintenance_attention",
                        environment=environment.name,
                        items="\n".join(f"• {item}" for item in result["attention"]),
                        log_url=getattr(get_current_context()["ti"], "log_url", ""),
                    ),
                )
            return result

        inspection = inspect()
        vacuumed = vacuum(inspection)
        reindexed = reindex(inspection)
        vacuumed >> reindexed
        report(inspection, vacuumed, reindexed)
    return dag


for _environment in load_environments():
    globals()[f"db_maintenance_{_environment.name}"] = db_maintenance_dag(_environment)
