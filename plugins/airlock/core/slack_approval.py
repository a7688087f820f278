"""Approval requests as interactive Slack messages: what they show, what their buttons carry, and
which answers count. No Airflow, no I/O: the gate posts and updates the message
(:mod:`airlock.notifications.slack_approval`), the plugin app receives the clicks
(:mod:`airlock.web.slack`).

A message names the change in its header and carries the plan's summary (version, hosts per
wave, migrations, backup for a release), a link to the request in Airflow, and two buttons,
*Approve* (which asks for a confirmation in Slack before it is sent) and *Reject*. Each button's
value names exactly one approval request (:class:`RequestRef`: the run, the task, the plan
digest it showed), so a click can never answer another run's request, nor one whose plan has
changed since (the digest is checked against the request before anything is written).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: Slack's action ids of the two buttons.
APPROVE_ACTION = "airlock_approve"
REJECT_ACTION = "airlock_reject"
#: The HITL option each button answers with.
OPTIONS = {APPROVE_ACTION: "Approve", REJECT_ACTION: "Reject"}
#: Slack refuses a section text longer than this.
SECTION_LIMIT = 2900


@dataclass(frozen=True)
class RequestRef:
    """The approval request a button answers."""

    environment: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    plan_digest: str | None

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, value: str) -> RequestRef:
        try:
            data = json.loads(value)
        except (TypeError, ValueError):
            data = None
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise ValueError("not an Airlock approval button")
        return cls(**data)


def mrkdwn(text: Any) -> str:
    """User text made inert for Slack's mrkdwn (``&``, ``<``, ``>``), as Slack asks."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plan_summary(planned: Mapping[str, Any] | None) -> list[str]:
    """The plan's essentials, one line each: a release's version, hosts per wave, migrations and
    backup; a configuration update's set and hosts; otherwise the plan's first lines."""
    if not planned:
        return []
    plan = planned.get("plan")
    if isinstance(plan, Mapping) and "waves" in plan and "version" in plan:
        lines = [f"Version: {plan['version']}"]
        for number, wave in enumerate(plan["waves"], start=1):
            hosts = ", ".join(f"{h['host']} ({h.get('current_version') or 'none'})" for h in wave)
            lines.append(f"Wave {number}: {hosts}")
        migrations = [m.get("version") or m.get("name") or "?" for m in plan.get("migrations") or []]
        lines.append(f"Migrations: {', '.join(map(str, migrations)) or 'none pending'}")
        lines.append(f"Backup: {plan.get('backup') or 'none'}")
        if plan.get("reason"):
            lines.append(f"Reason: {plan['reason']}")
        return lines
    if isinstance(planned.get("set"), Mapping):
        changing = ", ".join(planned.get("to_change") or []) or "none"
        return [f"Config set: {planned['set']['id']}", f"Hosts to change: {changing}"]
    markdown = str(planned.get("markdown") or "")
    return [line.lstrip("#- ").strip() for line in markdown.splitlines() if line.strip()][:12]


def _section(lines: Sequence[str]) -> dict[str, Any]:
    text = "\n".join(mrkdwn(line) for line in lines) or "(no plan)"
    if len(text) > SECTION_LIMIT:
        text = text[: SECTION_LIMIT - 1] + "…"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def request_blocks(
    *, subject: str, summary: Sequence[str], approvers: Sequence[str], link: str, ref: RequestRef
) -> list[dict[str, Any]]:
    """The request as Block Kit: header, summary, who may answer, the link, the two buttons."""
    value = ref.encode()
    where = f"<{link}|the request in Airflow>" if link.startswith(("http://", "https://")) else "Airflow"
    who = f"Approvers: {mrkdwn(', '.join(approvers))}. Full plan: {where}"
    return [
        {"type": "header", "text": {"type": "plain_text", "text": subject[:150]}},
        _section(summary),
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": who}],
        },
        {
            "type": "actions",
            "block_id": "airlock_approval",
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE_ACTION,
                    "style": "primary",
                    "text": {"type": "plain_text", "text": "Approve"},
                    "value": value,
                    "confirm": {
                        "title": {"type": "plain_text", "text": "Approve this change?"},
                        "text": {"type": "mrkdwn", "text": mrkdwn(subject)},
                        "confirm": {"type": "plain_text", "text": "Approve"},
                        "deny": {"type": "plain_text", "text": "Cancel"},
                    },
                },
                {
                    "type": "button",
                    "action_id": REJECT_ACTION,
                    "style": "danger",
                    "text": {"type": "plain_text", "text": "Reject"},
                    "value": value,
                },
            ],
        },
    ]


def decided_blocks(*, subject: str, summary: Sequence[str], decision: str) -> list[dict[str, Any]]:
    """The same message once decided: no buttons, who decided and when."""
    return [
        {"type": "header", "text": {"type": "plain_text", "text": subject[:150]}},
        _section(summary),
        {"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn(decision)}]},
    ]


def slack_refusal(
    *,
    slack_user: str,
    mapping: Mapping[str, str],
    assigned: Sequence[str],
    triggered_by: str,
    allow_self_approval: bool,
) -> tuple[str | None, str | None]:
    """The Airflow user a Slack user answers as, or why they may not answer: ``(user, None)`` or
    ``(None, refusal)``. The gate's rules: only an assigned approver, never the triggering user
    unless the environment allows it."""
    user = mapping.get(slack_user)
    if user is None:
        return None, (
            f"Your Slack user ({slack_user}) is not mapped to an Airflow user for this environment "
            "(approval.slack_users): answer in the Airflow UI, or ask for the mapping."
        )
    if user == triggered_by and not allow_self_approval:
        return None, f"You ({user}) triggered this run, and this environment does not allow self-approval."
    if user not in assigned:
        return None, f"You ({user}) are not an assigned approver of this request ({', '.join(assigned)})."
    return user, None
