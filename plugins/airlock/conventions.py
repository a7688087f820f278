"""What every Airlock DAG shares: its runbook as ``doc_md``, owner, retries, Slack on failure, start date."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airlock.config import PROJECT_ROOT, VERSION_PATTERN, Environment
from airlock.config.environment import (
    COMMITTED_AT_PATTERN,
    REASON_MAX_LENGTH,
    REASON_PATTERN,
    STEP_TIMEOUT,
)
from airlock.notifications.slack import TaskFailureNotifier

RUNBOOKS = PROJECT_ROOT / "docs" / "runbooks"
# The start_date of every scheduled DAG: before the first release of Airlock, so no run is backfilled
# (catchup is off everywhere) and the first scheduled run is the next interval.
START_DATE = datetime(2026, 1, 1, tzinfo=UTC)


def runbook(name: str, **values: str) -> str:
    """The Markdown runbook ``docs/runbooks/<name>.md``, read at parse time as a DAG's ``doc_md``.

    ``{environment}``-style fields are filled from ``values`` where the runbook uses them.
    """
    text = (RUNBOOKS / f"{name}.md").read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def default_args(
    environment: Environment | None = None,
    *,
    retries: int = 2,
    owner: str | None = None,
    slack_conn_id: str | None = None,
) -> dict[str, Any]:
    """Retries with exponential backoff for safe-to-retry steps; unsafe ones set ``retries=0``.

    Per-environment DAGs pass their ``environment`` (owner and Slack connection come from its
    file); DAGs that belong to no environment (``airflow_housekeeping``) pass ``owner`` and
    ``slack_conn_id`` instead. An explicit keyword wins over the environment's value. An
    environment's ``queue`` sends every task of its DAGs to the workers serving that queue.
    """
    if environment is None and owner is None:
        raise ValueError("default_args needs an environment or an owner")
    return {
        **({"queue": environment.queue} if environment is not None and environment.queue else {}),
        "owner": owner or environment.owner,
        "retries": retries,
        "retry_delay": timedelta(seconds=10),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=5),
        "execution_timeout": STEP_TIMEOUT,
        "on_failure_callback": TaskFailureNotifier(
            slack_conn_id=slack_conn_id
            if slack_conn_id is not None or environment is None
            else environment.slack_conn_id
        ),
    }


def reason_param(description: str = "Why (kept in the audit trail); one line") -> Any:
    """The optional ``reason`` of a run: one line of at most 500 characters, null when left empty
    (the trigger form sends an emptied field as null and would otherwise demand one)."""
    from airflow.sdk import Param

    return Param(
        None,
        type=["null", "string"],
        maxLength=REASON_MAX_LENGTH,
        pattern=REASON_PATTERN,
        description=description,
    )


def freeze_override_param() -> Any:
    """``freeze_override``: why a release or migration must start during a freeze (one line);
    null: none. It needs the approval of the environment's ``freeze_approvers``."""
    return reason_param(
        "Emergency only: why this must start during a freeze (needs a freeze approver); empty: none"
    )


def release_params() -> dict[str, Any]:
    """``release_<env>``'s run parameters, each refused at trigger time when malformed."""
    from airflow.sdk import Param

    return {
        "version": Param(type="string", pattern=VERSION_PATTERN, description="Version to release"),
        "dry_run": Param(False, type="boolean", description="Plan only: check, plan and stop"),
        "reason": reason_param(),
        # Optional ones are null, so the trigger form does not require them (it sends an emptied
        # field as null).
        "artifact_sha256": Param(
            None,
            type=["null", "string"],
            pattern="^([0-9a-fA-F]{64})?$",
            description="SHA-256 of the artifact CI built: any other is refused (empty: not pinned)",
        ),
        "committed_at": Param(
            None,
            type=["null", "string"],
            pattern=f"({COMMITTED_AT_PATTERN})|^$",
            description="When the released commit was made, ISO 8601 with offset: the DORA lead time",
        ),
        "freeze_override": freeze_override_param(),
    }
