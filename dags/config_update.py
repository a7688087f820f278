"""``config_update_<env>``: ship a configuration set to an environment's hosts as a release.

Generated for each environment with a ``config:`` section. The runbook
(``docs/runbooks/config-update.md``) is the DAG's documentation; the steps below are its table of
contents. The logic lives in ``airlock.tasks.config_update``.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, TriggerRule, chain, task

from airlock.config import Environment, Wave, load_environments
from airlock.conventions import default_args, reason_param, runbook
from airlock.operators.approval import approval_gate
from airlock.tasks import config_update as steps
from airlock.tasks.config_update import TaskIds
from airlock.tasks.environment import in_waves, lock_in_turn, unlock_task
from airlock.tasks.release import verify as smoke_tests


def config_update_dag(environment: Environment) -> DAG:
    with DAG(
        dag_id=f"config_update_{environment.name}",
        description=f"Ship the configuration set of {environment.name} in waves, with approval and rollback",
        doc_md=runbook("config-update", environment=environment.name),
        schedule=None,
        catchup=False,
        tags=["airlock", "config", environment.name],
        default_args=default_args(environment),
        params={
            "dry_run": Param(False, type="boolean", description="Plan only: show the change and stop"),
            "reason": reason_param(),
        },
    ) as dag:

        @task(task_id=TaskIds.VALIDATE_REQUEST, retries=0)
        def validate_request():
            """Refuse unknown keys before anything is touched."""
            return steps.validate_request()

        @task(task_id=TaskIds.READ_SOURCE, retries=3)
        def read_config():
            """The set config.source holds: its files and their SHA-256, its id."""
            return steps.read_config(environment)

        @task(task_id=TaskIds.CHECK_HOSTS, retries=3)
        def check_config_hosts():
            """Each host's active set, over SSH with its host key verified."""
            return steps.active_sets(environment)

        @task(task_id=TaskIds.PLAN, retries=0)
        def plan(config: dict, hosts: dict):
            """The change file by file against each host's active set, secrets masked."""
            return steps.plan(environment, config=config, hosts=hosts)

        @task.short_circuit(task_id=TaskIds.PROCEED, retries=1, ignore_downstream_trigger_rules=False)
        def proceed(planned: dict):
            """Announce in Slack; a dry run, or a set every host has already, stops here."""
            return steps.announce(environment, planned)

        @task(task_id=TaskIds.UPDATE, retries=1)
        def update(wave_hosts: list):
            """The wave's hosts: install the approved set, switch shared/config, activate, check."""
            return steps.update(environment, wave_hosts=wave_hosts)

        @task(task_id=TaskIds.VERIFY, retries=1)
        def verify(wave_hosts: list):
            """Smoke tests against this wave's hosts and the database."""
            return smoke_tests(environment, wave_hosts=wave_hosts)

        @task(task_id=TaskIds.ROLLBACK, retries=2, trigger_rule=TriggerRule.ALL_DONE)
        def rollback():
            """If a wave failed: every host this run switched goes back to the set it had."""
            return steps.rollback(environment)

        @task(task_id=TaskIds.CONCLUDE, retries=2, trigger_rule=TriggerRule.ALL_DONE)
        def conclude():
            """Audit row and Slack; the run fails unless the set went out."""
            return steps.conclude(environment)

        request = validate_request()
        taken = lock_in_turn(environment, request, purpose="config update")
        config = read_config()
        hosts = check_config_hosts()
        taken >> [config, hosts]
        planned = plan(config, hosts)
        gates = [
            proceed(planned),
            *approval_gate(
                environment,
                subject=f"Update the configuration of {environment.name}?",
                change="config update",
                task_id=TaskIds.APPROVE,
                plan_task_id=TaskIds.PLAN,
            ),
        ]
        chain(*gates)

        def wave_steps(wave: Wave):
            updated = update(wave.host_names)
            return updated, updated >> verify(wave.host_names)

        wave_tasks = in_waves(environment, gates[-1], wave_steps)
        rolled_back = rollback()
        wave_tasks >> rolled_back
        released = unlock_task(environment)
        chain(rolled_back, conclude(), released)
        taken >> released
    return dag


for _environment in load_environments():
    if _environment.config is not None:
        globals()[f"config_update_{_environment.name}"] = config_update_dag(_environment)
