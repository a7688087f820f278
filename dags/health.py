"""``health_<env>``: check hosts, app, database, Redis, backups and Airflow; keep the history; alert.

Every check is its own task (one mapped task per host) and returns structured results instead of
failing; ``record`` writes them to ``<ops_schema>.health_checks``, ``alert`` tells Slack about
changes only, and ``verdict`` fails the run when a check is critical, so the grid is a health
history too. A check task or ``record`` that fails is itself a critical result that ``alert``
announces once (and resolves), so those tasks send no failure message of their own every run;
``collect`` and ``alert`` keep the shared failure notifier: without them nothing would alert.
The runbook (``docs/runbooks/health-check.md``) is the DAG's documentation.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import Environment, load_environments
from airlock.conventions import default_args, runbook
from airlock.tasks import health

CHECK_TIMEOUT = timedelta(minutes=3)


def health_dag(environment: Environment) -> DAG:
    with DAG(
        dag_id=f"health_{environment.name}",
        description=f"Health checks of {environment.name}, with history and Slack alerts on change",
        doc_md=runbook("health-check", environment=environment.name),
        schedule=environment.health.schedule,
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(minutes=15),
        tags=["airlock", "health", environment.name],
        default_args={**default_args(environment, retries=1), "execution_timeout": CHECK_TIMEOUT},
    ) as dag:

        @task(map_index_template="{{ host_name }}", on_failure_callback=None)
        def check_host(host_name: str):
            """App health URL (status, latency, version); over SSH: disk, inodes, load, memory."""
            get_current_context()["host_name"] = host_name
            return [r.to_dict() for r in health.check_host(environment, host_name)]

        @task(on_failure_callback=None)
        def check_database():
            """Connect latency, connections, long queries, blocked sessions, size, replica lag."""
            return [r.to_dict() for r in health.check_database(environment)]

        @task(on_failure_callback=None)
        def check_redis():
            """PING latency and memory used against maxmemory."""
            return [r.to_dict() for r in health.check_redis(environment)]

        @task(on_failure_callback=None)
        def check_backup():
            """Age of the newest verified backup against backup.max_age."""
            return [r.to_dict() for r in health.check_backup(environment)]

        @task(on_failure_callback=None)
        def check_airflow():
            """Scheduler, dag-processor and triggerer heartbeats from the Airflow API."""
            return [r.to_dict() for r in health.check_airflow(environment)]

        @task(trigger_rule="all_done", retries=2)
        def collect():
            """Gather every check's results; a check task that died counts as critical."""
            results = health.collect_results(environment, get_current_context()["ti"])
            return [r.to_dict() for r in results]

        @task(retries=2, on_failure_callback=None)
        def record(results: list[dict]):
            """Write the results to the health_checks history table of the ops database."""
            return health.record_results(
                environment,
                dag_id=dag.dag_id,
                run_id=get_current_context()["run_id"],
                results=[health.CheckResult.from_dict(r) for r in results],
            )

        @task(trigger_rule="all_done", retries=2)
        def alert(results: list[dict]):
            """Slack on change only: new problem, worse, recovered, or the reminder interval passed."""
            context = get_current_context()
            found = [health.CheckResult.from_dict(r) for r in results]
            written = context["ti"].xcom_pull(task_ids="record")
            found.append(health.history_result(environment, written))
            return health.send_alerts(environment, found, run_id=context["run_id"])

        @task(trigger_rule="all_done", retries=0, on_failure_callback=None)
        def verdict(results: list[dict]):
            """Fail the run when a check is critical (alert already told Slack, so no failure message)."""
            found = [health.CheckResult.from_dict(r) for r in results]
            critical = health.failing_summary(found)
            if critical:
                raise AirflowFailException("critical: " + "; ".join(critical))
            return health.failing_summary(found, health.Status.WARN)

        checks = [
            check_host.expand(host_name=[host.name for host in environment.hosts]),
            check_database(),
            check_redis(),
            check_backup(),
            check_airflow(),
        ]
        results = collect()
        checks >> results
        record(results) >> alert(results) >> verdict(results)
    return dag


for _environment in load_environments():
    globals()[f"health_{_environment.name}"] = health_dag(_environment)
