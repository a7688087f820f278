"""``silence_<env>``: mute the health alerts of matching checks and targets for a while, with a reason.

For planned work (a disk being resized, a host being rebuilt) and known problems being fixed:
``health_<env>`` keeps checking and recording, and says nothing about what the silence matches
until it expires; then whatever still fails alerts. The runbook (``docs/runbooks/silence.md``) is
the DAG's documentation; the logic lives in ``airlock.tasks.silence``.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param, task

from airlock.config import Environment, load_environments
from airlock.config.environment import REASON_MAX_LENGTH, REASON_PATTERN
from airlock.conventions import default_args, runbook
from airlock.core.health import SILENCE_PATTERN
from airlock.tasks import silence as steps
from airlock.tasks.silence import TaskIds


def silence_dag(environment: Environment) -> DAG:
    with DAG(
        dag_id=f"silence_{environment.name}",
        description=f"Mute matching health alerts of {environment.name} until the silence expires",
        doc_md=runbook("silence", environment=environment.name),
        schedule=None,
        catchup=False,
        tags=["airlock", "health", environment.name],
        default_args={**default_args(environment), "execution_timeout": timedelta(minutes=5)},
        params={
            "check": Param(
                "*",
                type="string",
                pattern=SILENCE_PATTERN,
                description="Checks to mute: a name or wildcard pattern (disk, db_*, *)",
            ),
            "host": Param(
                "*",
                type="string",
                pattern=SILENCE_PATTERN,
                description="Targets to mute: a host (web-1, web-*), host:mount, connection id, or *",
            ),
            "duration": Param(
                "1h",
                type="string",
                pattern=r"^\s*\d+\s*[smhd]\s*$",
                description="How long: 30m, 2h, 1d (at most 7d)",
            ),
            "reason": Param(
                type="string",
                minLength=3,
                maxLength=REASON_MAX_LENGTH,
                pattern=REASON_PATTERN,
                description="Why (shown in every health message while the silence lasts); one line",
            ),
        },
    ) as dag:

        @task(task_id=TaskIds.VALIDATE, retries=0)
        def validate_request():
            """Check the patterns, the duration (at most 7 days) and the reason before storing anything."""
            return steps.validate_request(environment)

        @task(task_id=TaskIds.SILENCE)
        def add_silence(request: dict):
            """Store the silence in the ops store (once per run), cache it in Redis, tell Slack."""
            return steps.silence(environment, request)

        add_silence(validate_request())
    return dag


for _environment in load_environments():
    globals()[f"silence_{_environment.name}"] = silence_dag(_environment)
