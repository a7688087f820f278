"""``health_<env>``: check hosts, app, database, Redis, backups and Airflow; keep the history; alert.

Every check is its own task (one mapped task per host) and returns structured results instead of
failing; ``record`` writes them to ``<ops_schema>.health_checks``, ``alert`` tells Slack about
changes only, in one message per run (with hysteresis, silences from ``silence_<env>``, a rate
limit and at-least-once delivery), and ``verdict`` fails the run when a check is critical, so the
grid is a health history too. A check task or ``record`` that fails is itself a critical result that ``alert``
announces once (and resolves), so those tasks send no failure message of their own every run;
``collect`` and ``alert`` keep the shared failure notifier: without them nothing would alert.
The runbook (``docs/runbooks/health-check.md``) is the DAG's documentation.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, TriggerRule, task

from airlock.config import Environment, load_environments
from airlock.conventions import START_DATE, default_args, runbook
from airlock.core.health import to_xcom
from airlock.tasks import health
from airlock.tasks.health import TaskIds

CHECK_TIMEOUT = timedelta(minutes=3)


def health_dag(environment: Environment) -> DAG:
    with DAG(
        dag_id=f"health_{environment.name}",
        description=f"Health checks of {environment.name}, with history and Slack alerts on change",
        doc_md=runbook("health-check", environment=environment.name),
        schedule=environment.health.schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        dagrun_timeout=timedelta(minutes=15),
        tags=["airlock", "health", environment.name],
        default_args={**default_args(environment, retries=1), "execution_timeout": CHECK_TIMEOUT},
    ) as dag:

        @task(task_id=TaskIds.CHECK_HOST, map_index_template="{{ host_name }}", on_failure_callback=None)
        def check_host(host_name: str):
            """App health URL (status, latency, version); over SSH: disk, inodes, load, memory."""
            return health.report_host(environment, host_name)

        @task(task_id=TaskIds.CHECK_DATABASE, on_failure_callback=None)
        def check_database():
            """Accepts connections (datallowconn), connect latency, connections, long queries, blocked
            sessions, size, replica lag."""
            return to_xcom(health.check_database(environment))

        @task(task_id=TaskIds.CHECK_REDIS, on_failure_callback=None)
        def check_redis():
            """PING latency and memory used against maxmemory."""
            return to_xcom(health.check_redis(environment))

        @task(task_id=TaskIds.CHECK_BACKUP, on_failure_callback=None)
        def check_backup():
            """Age of the newest verified backup against backup.max_age."""
            return to_xcom(health.check_backup(environment))

        @task(task_id=TaskIds.CHECK_AIRFLOW, on_failure_callback=None)
        def check_airflow():
            """Scheduler, dag-processor and triggerer heartbeats from the Airflow API."""
            return to_xcom(health.check_airflow(environment))

        @task(task_id=TaskIds.COLLECT, trigger_rule=TriggerRule.ALL_DONE, retries=2)
        def collect():
            """Gather every check's results; a check task that died counts as critical."""
            return health.collect(environment)

        @task(task_id=TaskIds.RECORD, retries=2, on_failure_callback=None)
        def record(results: list[dict]):
            """Write the results to the health_checks history table of the ops database."""
            return health.record(environment, results)

        @task(task_id=TaskIds.ALERT, trigger_rule=TriggerRule.ALL_DONE, retries=2)
        def alert(results: list[dict]):
            """One Slack message for the run's changes (new, still failing, resolved), pending ones too."""
            return health.alert(environment, results)

        @task(task_id=TaskIds.VERDICT, trigger_rule=TriggerRule.ALL_DONE, retries=0, on_failure_callback=None)
        def verdict(results: list[dict]):
            """Fail the run when a check is critical (alert already told Slack, so no failure message)."""
            return health.verdict(results)

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
