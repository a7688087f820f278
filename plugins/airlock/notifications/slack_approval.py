"""The interactive approval message in Slack: posted through the Slack provider's ``SlackHook``
(the Web API, with the bot token of ``approval.slack_api_conn_id``), then updated in place once
the request is decided, wherever it was decided (Slack, the Airflow UI, the REST API, a timeout).

Slack being down never blocks an approval: the request waits in Airflow either way. A request
that could not be posted goes to the webhook instead (the gate falls back), and an update that
could not be made is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from airlock.core.slack_approval import RequestRef, decided_blocks, request_blocks

log = logging.getLogger(__name__)


def _client(conn_id: str):
    from airflow.providers.slack.hooks.slack import SlackHook

    return SlackHook(slack_conn_id=conn_id).client


def post_request(
    conn_id: str,
    channel: str,
    *,
    subject: str,
    summary: Sequence[str],
    approvers: Sequence[str],
    link: str,
    ref: RequestRef,
) -> dict[str, str] | None:
    """Post the request; returns where it is (``channel``, ``ts``), or None when Slack refused."""
    try:
        response = _client(conn_id).chat_postMessage(
            channel=channel,
            text=subject,
            blocks=request_blocks(subject=subject, summary=summary, approvers=approvers, link=link, ref=ref),
        )
    except Exception as error:  # Slack down or refusing: the request still waits in Airflow
        log.warning("Could not post the approval request to Slack channel %s: %s", channel, error)
        return None
    return {"channel": response["channel"], "ts": response["ts"]}


def update_request(
    conn_id: str, message: dict[str, Any] | None, *, subject: str, summary: Sequence[str], decision: str
) -> bool:
    """Replace the buttons with the decision; returns whether Slack took it."""
    if not message:
        return False
    try:
        _client(conn_id).chat_update(
            channel=message["channel"],
            ts=message["ts"],
            text=f"{subject}: {decision}",
            blocks=decided_blocks(subject=subject, summary=summary, decision=decision),
        )
    except Exception as error:
        log.warning("Could not update the approval message in Slack: %s", error)
        return False
    return True
