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
    #: How often the run had been cleared when the request was posted: a re-run's request is
    #: never answered by an older message.
    clear_number: int = 0

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def decode(cls, value: str) -> RequestRef:
        try:
            data = json.loads(value)
        except (TypeError, ValueError):
            data = None
        types = {
            "environment": str,
            "dag_id": str,
            "run_id": str,
            "task_id": str,
            "map_index": int,
            "plan_digest": (str, type(None)),
            "clear_number": int,
        }
        if (
            not isinstance(data, dict)
            or set(data) != set(types)
            or not all(
                isinstance(data[key], kind) and not isinstance(data[key], bool) for key, kind in types.items()
            )
        ):
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
    override = planned.get("freeze_override") or (
        plan.get("freeze_override") if isinstance(plan, Mapping) else None
    )
    warning = (
        [
            f"FREEZE OVERRIDE: {override.get('name')} ({override.get('reason')}, "
            f"until {override.get('ends')}); why: {override.get('override_reason')}"
        ]
        if isinstance(override, Mapping)
        else []
    )
    return warning + _summary(planned, plan)


def _summary(planned: Mapping[str, Any], plan: Any) -> list[str]:
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


@dataclass(frozen=True)
class AirflowUser:
    id: str
    name: str


def slack_refusal(
    *,
    slack_user: str,
    mapping: Mapping[str, Any],
    assigned: Sequence[str],
    triggered_by: str,
    allow_self_approval: bool,
) -> tuple[AirflowUser | None, str | None]:
    """The Airflow user a Slack user answers as, or why they may not answer: ``(user, None)`` or
    ``(None, refusal)``. The gate's rules: only an assigned approver (by id), never the triggering
    user (by id or name) unless the environment allows it. A mapping value is a user id (where
    ids are names) or an object with ``id`` and ``name``."""
    mapped = mapping.get(slack_user)
    if mapped is None:
        return None, (
            f"Your Slack user ({slack_user}) is not mapped to an Airflow user for this environment "
            "(approval.slack_users): answer in the Airflow UI, or ask for the mapping."
        )
    if isinstance(mapped, str):
        user = AirflowUser(id=mapped, name=mapped)
    elif isinstance(mapped, Mapping):
        user = AirflowUser(id=str(mapped["id"]), name=str(mapped["name"]))
    else:
        user = AirflowUser(id=str(mapped.id), name=str(mapped.name))
    if triggered_by in (user.id, user.name) and not allow_self_approval:
        return (
            None,
            f"You ({user.name}) triggered this run, and this environment does not allow self-approval.",
        )
    if user.id not in assigned:
        return (
            None,
            f"You ({user.name}) are not an assigned approver of this request ({', '.join(assigned)}).",
        )
    return user, None
