"""Slack messages: wording from ``include/templates/slack.yaml``, sent through the webhook hook.

Notifications never decide whether a step succeeds: when Slack is unreachable the message is
logged and the step goes on (the task log and the grid still tell the story).
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

import yaml
from airflow.sdk import BaseNotifier

from airlock.config import PROJECT_ROOT

TEMPLATES = PROJECT_ROOT / "include" / "templates" / "slack.yaml"
log = logging.getLogger(__name__)


@cache
def _templates() -> dict[str, str]:
    return yaml.safe_load(TEMPLATES.read_text())


def escape_mrkdwn(text: Any) -> str:
    """``text`` made inert for Slack's mrkdwn: ``&``, ``<`` and ``>`` as ``&amp;``, ``&lt;``,
    ``&gt;`` (Slack's rule for control characters), so ``<!channel>`` or ``<https://x|y>`` typed
    by a user shows as typed instead of pinging a channel or making a link."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(name: str, **fields: Any) -> str:
    """Fill template ``name`` with every field escaped (:func:`escape_mrkdwn`): user text (a reason,
    a user name, an error) never becomes Slack markup. A missing template or field is a bug and
    raises."""
    return _templates()[name].format(**{key: escape_mrkdwn(value) for key, value in fields.items()})


def post(conn_id: str | None, text: str) -> bool:
    """Send ``text`` to the Slack webhook connection ``conn_id``; returns whether it was delivered."""
    if not conn_id:
        log.info("No Slack connection configured; message not sent: %s", text)
        return False
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    try:
        SlackWebhookHook(slack_webhook_conn_id=conn_id).send(text=text)
    except Exception:
        log.warning("Could not deliver Slack message through %s: %s", conn_id, text, exc_info=True)
        return False
    return True


def summarize_error(error: BaseException | str | None, limit: int = 300) -> str:
    text = str(error or "unknown error").strip().splitlines()
    summary = text[-1] if text else "unknown error"
    return summary if len(summary) <= limit else summary[: limit - 1] + "…"


class TaskFailureNotifier(BaseNotifier):
    """``on_failure_callback`` for every Airlock task: DAG, task (and host), try, error, log link.

    :param slack_conn_id: Slack webhook connection; nothing is sent when it is empty.
    """

    template_fields = ("slack_conn_id",)

    def __init__(self, slack_conn_id: str | None) -> None:
        super().__init__()
        self.slack_conn_id = slack_conn_id

    def notify(self, context: Any) -> None:
        ti = context["ti"]
        task = ti.task_id
        rendered = getattr(ti, "rendered_map_index", None)
        if ti.map_index is not None and ti.map_index >= 0:
            task = f"{task} [{rendered or ti.map_index}]"
        post(
            self.slack_conn_id,
            render(
                "task_failed",
                dag_id=ti.dag_id,
                task=task,
                try_number=ti.try_number,
                error=summarize_error(context.get("exception")),
                log_url=getattr(ti, "log_url", ""),
            ),
        )
