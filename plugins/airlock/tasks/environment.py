"""Tasks every environment DAG shares (release, rollback, migrate, restore), built once here.

Each builder must be called inside a ``with DAG(...)`` block; it returns the task (or mapped
task) wired to that DAG.
"""

from __future__ import annotations

from airflow.sdk import get_current_context, setup, task, teardown

from airlock.config import Environment
from airlock.tasks import release as steps


def lock_task(environment: Environment, purpose: str):
    """The setup task taking the environment's lock; a competing run fails fast naming this one.

    ``purpose`` is templated, e.g. ``"release {{ params.version }}"``.
    """

    @setup
    @task(retries=3)
    def lock(purpose: str):
        context = get_current_context()
        return steps.lock(
            environment,
            dag_id=context["dag"].dag_id,
            run_id=context["run_id"],
            purpose=purpose,
            triggered_by=steps.triggering_user(context),
            run_state=steps.dag_run_state(context),
        )

    return lock(purpose)


def unlock_task(environment: Environment):
    """The teardown that frees the environment's lock, whatever happened (only this run's lock)."""

    @teardown
    @task(retries=3)
    def unlock():
        steps.unlock(environment, run_id=get_current_context()["run_id"])

    return unlock()


def check_hosts_task(environment: Environment):
    """One mapped task per host: reachable with its key verified, free disk, current release."""

    @task(retries=3, map_index_template="{{ host_name }}")
    def check_host(host_name: str):
        get_current_context()["host_name"] = host_name
        return steps.check_host(environment, host_name)

    return check_host.expand(host_name=[host.name for host in environment.hosts])
