"""Approving from Slack, against the running plugin app over real HTTP.

This module adds ``demo-slack`` to the running stack: the demo with ``approval.slack_channel``
set and two Slack users mapped (``U0ADMIN`` -> ``admin``, an approver; ``U0STRANGER`` ->
``stranger``, who is not). The stack's Slack receiver stands in for Slack's Web API and records
``chat.postMessage`` and ``chat.update``; the clicks are signed here with the stack's signing
secret, as Slack signs them, and sent to ``POST /airlock/slack/interactions``.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml
from slack_sdk.signature import SignatureVerifier

from tests.e2e.rest import Rest, answer, finished, listed_request

ENVIRONMENT = "demo-slack"
DAG_ID = f"release_{ENVIRONMENT}"
CHANNEL = "C0DEPLOYS"


@pytest.fixture(scope="module")
def slack_environment(stack):
    demo = yaml.safe_load((stack.environments_dir / "demo.yaml").read_text())
    unscheduled = {section: {**demo.get(section, {}), "schedule": None} for section in ("health", "logs")}
    environment = stack.add_environment(
        ENVIRONMENT,
        {
            "description": "The demo, approved from Slack (tests/e2e/test_slack_approvals.py)",
            "approval": {
                **demo["approval"],
                "slack_channel": CHANNEL,
                "slack_users": {"U0ADMIN": "admin", "U0STRANGER": "stranger"},
            },
            "backup": None,
            "db_maintenance": {"schedule": None},
            **unscheduled,
        },
        dag_ids=(DAG_ID,),
    )
    yield environment
    stack.remove_environment(ENVIRONMENT)


def posted_request(stack, run_id: str, timeout: float = 180) -> dict:
    """The chat.postMessage of this run's approval request, once Airlock sent it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for call in stack.slack.api_calls("chat.postMessage"):
            if run_id in json.dumps(call.get("blocks")):
                return call
        time.sleep(0.05)
    raise AssertionError(f"no approval message for {run_id}: {stack.slack.api_calls('chat.postMessage')}")


def button(message: dict, action_id: str) -> dict:
    [actions] = [block for block in message["blocks"] if block["type"] == "actions"]
    [found] = [element for element in actions["elements"] if element["action_id"] == action_id]
    return found


def click(
    stack, message: dict, action_id: str, slack_user: str, *, timestamp: int | None = None, secret=None
):
    """Slack's callback for a click: the form body, signed; returns (status, body, signed request)."""
    payload = {
        "type": "block_actions",
        "user": {"id": slack_user},
        "channel": {"id": CHANNEL},
        "message": {"ts": "1"},
        "response_url": f"http://127.0.0.1:{stack.slack.port}/response/{slack_user}",
        "actions": [{"action_id": action_id, "value": button(message, action_id)["value"]}],
    }
    body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    signature = SignatureVerifier(secret or stack.slack_signing_secret()).generate_signature(
        timestamp=stamp, body=body
    )
    return send(stack, body, stamp, signature)


def send(stack, body: bytes, stamp: str, signature: str):
    request = urllib.request.Request(
        f"{stack.api_url}/airlock/slack/interactions",
        data=body,
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature,
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), (body, stamp, signature)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), (body, stamp, signature)


def wait_for_update(stack, ts: str, text: str, timeout: float = 60) -> bool:
    """Whether the message at ``ts`` was updated (chat.update) to say ``text``, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for call in stack.slack.api_calls("chat.update"):
            if call.get("ts") == ts and text in json.dumps(call.get("blocks")):
                return True
        time.sleep(0.1)
    return False


def test_an_approval_clicked_in_slack_counts_once_for_the_mapped_approver_and_the_message_says_so(
    stack, slack_environment
):
    rest = Rest(stack)
    run_id = rest.trigger(DAG_ID, {"version": "2.0.0", "reason": "from Slack"})
    listed_request(rest, DAG_ID, run_id)
    message = posted_request(stack, run_id)
    assert message["channel"] == CHANNEL
    assert button(message, "airlock_approve")["confirm"]["confirm"]["text"] == "Approve"
    assert "Version: 2.0.0" in json.dumps(message["blocks"])

    # Refusals change nothing.
    status, _, _ = click(stack, message, "airlock_approve", "U0ADMIN", secret="not-the-signing-secret")
    assert status == 401
    status, _, _ = click(stack, message, "airlock_approve", "U0ADMIN", timestamp=int(time.time()) - 6 * 60)
    assert status == 401
    status, body, _ = click(stack, message, "airlock_approve", "U0NOBODY")
    assert status == 200
    assert "not mapped to an Airflow user" in body["text"]
    _, body, _ = click(stack, message, "airlock_approve", "U0STRANGER")
    assert "not an assigned approver" in body["text"]
    assert listed_request(rest, DAG_ID, run_id, timeout=5)  # still waiting

    # The approver's click; its replay is refused, and a later click is told who answered.
    status, body, signed = click(stack, message, "airlock_approve", "U0ADMIN")
    assert (status, body["text"]) == (200, "Approved as admin."), body
    assert send(stack, *signed)[0] == 401
    _, body, _ = click(stack, message, "airlock_reject", "U0ADMIN")
    assert body["text"] == "This request was already approved by admin.", body

    assert finished(rest, DAG_ID, run_id, timeout=300) == "success", rest.task_states(DAG_ID, run_id)
    [detail] = rest.call("GET", f"{rest.run_path(DAG_ID, run_id)}/hitlDetails")["hitl_details"]
    assert detail["responded_by_user"]["id"] == "admin"
    assert detail["chosen_options"] == ["Approve"]
    assert wait_for_update(stack, message["ts"], "Approved by admin at"), stack.slack.api_calls("chat.update")
    responses = [m for m in stack.slack.messages if m["path"].startswith("/response/")]
    assert any(m["text"] == "Approved as admin." for m in responses), responses


def test_a_request_decided_in_airflow_updates_its_slack_message(stack, slack_environment):
    rest = Rest(stack)
    run_id = rest.trigger(DAG_ID, {"version": "2.0.0", "reason": "rejected in the UI"})
    request = listed_request(rest, DAG_ID, run_id)
    message = posted_request(stack, run_id)

    answer(rest, request, "Reject")

    assert finished(rest, DAG_ID, run_id) == "failed"
    assert wait_for_update(stack, message["ts"], "Rejected by admin at"), stack.slack.api_calls("chat.update")
    _, body, _ = click(stack, message, "airlock_approve", "U0ADMIN")
    assert body["text"] == "This request was already rejected by admin.", body
