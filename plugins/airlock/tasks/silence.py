"""The steps of ``silence_<env>``: mute matching health alerts until the silence expires.

A silence is stored in the ops store (``health_silences``, the durable copy) and cached in Redis;
``health_<env>``'s ``alert`` task reads it, mutes the alerts it matches, lists it in every message
while it lasts and deletes it once expired (``airlock.tasks.health.send_alerts``).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import Environment
from airlock.core.health import Silence, SilenceRequest, silence_request
from airlock.hooks.alert_state import AlertStateCache
from airlock.hooks.ops_store import add_silence, current_silences
from airlock.notifications.slack import post, render
from airlock.tasks.environment import triggering_user

log = logging.getLogger(__name__)


class TaskIds:
    """The task ids of ``silence_<env>``."""

    VALIDATE = "validate_request"
    SILENCE = "add_silence"


def validated(params: dict[str, Any]) -> SilenceRequest:
    """The request of ``params``, or a failure naming the param at fault (nothing stored)."""
    unknown = sorted(set(params) - {"check", "host", "duration", "reason"})
    if unknown:
        raise AirflowFailException(f"Unknown params {', '.join(unknown)}: use check, host, duration, reason")
    try:
        return silence_request(
            params.get("check"), params.get("host"), params.get("duration"), params.get("reason")
        )
    except ValueError as error:
        raise AirflowFailException(str(error)) from None


def store_silence(
    environment: Environment, request: SilenceRequest, *, run_id: str, who: str, now: datetime
) -> Silence:
    """Store the silence (a retried run stores the same one), refresh Redis's copy, tell Slack."""
    silence = add_silence(environment, run_id=run_id, request=request, starts_at=now, created_by=who)
    try:
        AlertStateCache(environment).save_silences(current_silences(environment, now)[0])
    except Exception:
        log.warning("Redis is unreachable: its copy of the silences is refreshed by the next health run")
    log.info("Silence %s stored", silence.describe())
    post(
        environment.slack_conn_id,
        render(
            "silence_added",
            environment=environment.name,
            who=who,
            check=silence.check,
            host=silence.host,
            until=silence.ends_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M"),
            reason=silence.reason,
        ),
    )
    return silence


# -- task bodies: what they need from the run comes from its context ---------------------------------


def validate_request(environment: Environment) -> dict[str, Any]:
    """The ``validate_request`` task: the params checked before anything is stored."""
    request = validated(dict(get_current_context()["params"]))
    return {
        "check": request.check,
        "host": request.host,
        "duration_seconds": request.duration.total_seconds(),
        "reason": request.reason,
    }


def silence(environment: Environment, request: dict[str, Any]) -> dict[str, Any]:
    """The ``add_silence`` task, in the name of whoever triggered the run."""
    context = get_current_context()
    stored = store_silence(
        environment,
        SilenceRequest(
            request["check"],
            request["host"],
            timedelta(seconds=request["duration_seconds"]),
            request["reason"],
        ),
        run_id=context["run_id"],
        who=triggering_user(context),
        now=datetime.now(UTC),
    )
    return stored.to_dict()
