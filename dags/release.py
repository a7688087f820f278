"""``release_<env>``: ship a version to an environment's hosts in waves, or roll it back.

One DAG per file in ``include/environments/``. The runbook (``docs/runbooks/deployment.md``) is
the DAG's documentation; the steps below are its table of contents. The logic of every step
lives in ``airlock.tasks.release``.
"""

from __future__ import annotations

from airflow.sdk import DAG, TriggerRule, chain, task

from airlock.config import Environment, Wave, load_environments
from airlock.conventions import default_args, release_params, runbook
from airlock.core.release import takes_pre_release_backup
from airlock.operators.approval import approval_gate
from airlock.tasks import migrate as migration_steps
from airlock.tasks import release as steps
from airlock.tasks.environment import check_hosts_task, in_waves, lock_in_turn, unlock_task
from airlock.tasks.release import TaskIds


def release_dag(environment: Environment) -> DAG:
    with DAG(
        dag_id=f"release_{environment.name}",
        description=f"Release a version to {environment.name} in waves, with approval and rollback",
        doc_md=runbook("deployment", environment=environment.name),
        schedule=None,
        catchup=False,
        tags=["airlock", "release", environment.name],
        default_args=default_args(environment),
        params=release_params(),
        render_template_as_native_obj=False,
    ) as dag:

        @task(task_id=TaskIds.VALIDATE_REQUEST, retries=0)
        def validate_request():
            """Refuse unknown keys, unsafe versions and bad types before anything is touched."""
            return steps.validate_run_request()

        @task(task_id=TaskIds.CHECK_ARTIFACT, retries=3)
        def check_artifact(request: dict):
            """The artifact matches its published SHA-256, and the trigger's artifact_sha256 if given."""
            return steps.check_artifact(environment, request["version"], request.get("artifact_sha256", ""))

        @task(task_id=TaskIds.CHECK_DATABASE, retries=3)
        def check_database():
            return steps.require_database_reachable(environment)

        @task(task_id=TaskIds.CHECK_BACKUP, retries=3)
        def check_backup():
            """The newest verified backup must be younger than the environment's backup.max_age."""
            return steps.require_recent_backup(environment)

        @task(task_id=TaskIds.CHECK_MIGRATIONS, retries=3)
        def check_migrations(request: dict):
            """The version's migrations, validated against the database: pending ones are planned."""
            return migration_steps.check_migrations(environment, request["version"])

        @task(task_id=TaskIds.PLAN, retries=0)
        def plan(request: dict, artifact: dict, host_states: list, database: dict, migrations: list, backup):
            """Build the release plan: the approver's reading and a dry run's whole output."""
            return steps.plan(
                environment,
                request=request,
                artifact=artifact,
                host_states=list(host_states),
                database=database,
                migrations=migrations,
                backup=backup,
            )

        @task.short_circuit(task_id=TaskIds.PROCEED, retries=1, ignore_downstream_trigger_rules=False)
        def proceed(planned: dict):
            """Announce the release in Slack; a dry run stops here."""
            return steps.announce(environment, planned)

        @task(
            task_id=TaskIds.BACKUP,
            retries=1,
            execution_timeout=environment.backup.timeout if environment.backup else None,
        )
        def backup():
            """Pre-release backup, after approval and before migrations: the way back for the data."""
            return steps.backup(environment)

        @task(task_id=TaskIds.MIGRATE, retries=1)
        def migrate(request: dict):
            """Apply pending migrations before any host is switched; a failure stops the release."""
            return steps.migrate(environment, request)

        rollout = environment.rollout

        @task(
            task_id=TaskIds.DEPLOY,
            retries=2,
            map_index_template="{{ hosts_label }}",
            max_active_tis_per_dagrun=rollout.deploy_tasks_at_once,
        )
        def deploy(hosts: list, request: dict, wave_hosts: list):
            """The wave's hosts together: install, switch `current`, activate and wait until each
            serves the version; a per-host table in the log and the XCom `hosts`."""
            return steps.deploy(environment, hosts=hosts, request=request, wave_hosts=wave_hosts)

        @task(task_id=TaskIds.VERIFY, retries=1)
        def verify(wave_hosts: list):
            """Smoke tests against this wave's hosts and the database."""
            return steps.verify(environment, wave_hosts=wave_hosts)

        @task(task_id=TaskIds.ROLLBACK, retries=2, trigger_rule=TriggerRule.ALL_DONE)
        def rollback():
            """If a wave failed: every host this run switched goes back to its previous release,
            wave by wave in reverse; one that cannot marks the environment as needing attention."""
            return steps.rollback(environment)

        @task(task_id=TaskIds.CONCLUDE, retries=2, trigger_rule=TriggerRule.ALL_DONE)
        def conclude():
            """Audit record, prune old releases, Slack; the run fails unless the release went out."""
            return steps.conclude(environment)

        request = validate_request()
        taken = lock_in_turn(
            environment,
            request,
            purpose="release {{ params.version }}",
            refuse=steps.refuse_while_attention_needed,
            freezable=True,
        )
        artifact = check_artifact(request)
        database = check_database()
        hosts = check_hosts_task(environment)
        migrations = check_migrations(request)
        backups = check_backup()
        taken >> [artifact, database, hosts, migrations, backups]
        planned = plan(request, artifact, hosts, database, migrations, backups)
        # After the plan, one after another: announce (a dry run stops here), approve,
        # pre-release backup, migrations; then the waves.
        gates = [
            proceed(planned),
            *approval_gate(
                environment,
                subject=f"Release {{{{ params.version }}}} to {environment.name}?",
                change="release {{ params.version }}",
                task_id=TaskIds.APPROVE,
                plan_task_id=TaskIds.PLAN,
                freezable=True,
            ),
        ]
        if takes_pre_release_backup(environment):
            gates.append(backup())
        gates.append(migrate(request))
        chain(*gates)

        def wave_steps(wave: Wave):
            batches = wave.batches(rollout.hosts_per_task)
            deployed = deploy.partial(request=request, wave_hosts=wave.host_names).expand(hosts=batches)
            return deployed, deployed >> verify(wave.host_names)

        wave_tasks = in_waves(environment, gates[-1], wave_steps)
        rolled_back = rollback()
        wave_tasks >> rolled_back
        released = unlock_task(environment)
        chain(rolled_back, conclude(), released)
        taken >> released
    return dag


for _environment in load_environments():
    globals()[f"release_{_environment.name}"] = release_dag(_environment)
