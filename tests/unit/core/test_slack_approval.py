"""Interactive approval messages: what they show, what their buttons carry, who may answer."""

from __future__ import annotations

import json

import pytest

from airlock.core.slack_approval import (
    APPROVE_ACTION,
    REJECT_ACTION,
    RequestRef,
    decided_blocks,
    plan_summary,
    request_blocks,
    slack_refusal,
)

REF = RequestRef(
    environment="demo",
    dag_id="release_demo",
    run_id="manual__1",
    task_id="approve",
    map_index=-1,
    plan_digest="ab" * 32,
)
RELEASE_PLAN = {
    "plan": {
        "version": "2.0.0",
        "reason": "ship <!channel> it",
        "waves": [
            [{"host": "web-1", "current_version": "1.0.0", "new_version": "2.0.0"}],
            [{"host": "web-2", "current_version": None, "new_version": "2.0.0"}],
        ],
        "migrations": [{"file": "V2__x.sql", "version": "2", "sql": "..."}],
        "backup": "demo-20261202T0900Z",
    },
    "markdown": "## Release",
    "digest": "ab" * 32,
}


def test_a_release_request_shows_version_waves_migrations_and_backup_with_user_text_inert():
    summary = plan_summary(RELEASE_PLAN)
    assert summary == [
        "Version: 2.0.0",
        "Wave 1: web-1 (1.0.0)",
        "Wave 2: web-2 (none)",
        "Migrations: 2",
        "Backup: demo-20261202T0900Z",
        "Reason: ship <!channel> it",
    ]
    blocks = request_blocks(
        subject="Release 2.0.0 to demo?", summary=summary, approvers=["admin"], link="http://x/y", ref=REF
    )
    text = json.dumps(blocks)
    assert "&lt;!channel&gt;" in text
    assert "<!channel>" not in text
    assert "<http://x/y|the request in Airflow>" in text


def test_approve_asks_for_a_confirmation_and_both_buttons_name_exactly_this_request():
    blocks = request_blocks(
        subject="Release 2.0.0 to demo?", summary=[], approvers=["admin"], link="x", ref=REF
    )
    [actions] = [block for block in blocks if block["type"] == "actions"]
    approve, reject = actions["elements"]
    assert (approve["action_id"], approve["text"]["text"], approve["style"]) == (
        APPROVE_ACTION,
        "Approve",
        "primary",
    )
    assert (reject["action_id"], reject["text"]["text"], reject["style"]) == (
        REJECT_ACTION,
        "Reject",
        "danger",
    )
    assert approve["confirm"]["confirm"]["text"] == "Approve"
    assert RequestRef.decode(approve["value"]) == RequestRef.decode(reject["value"]) == REF
    assert "Airflow" in json.dumps(blocks)  # a link that is not a URL is not made one


def test_a_decided_message_has_no_buttons_and_says_who_decided():
    blocks = decided_blocks(
        subject="Release 2.0.0 to demo?", summary=["Version: 2.0.0"], decision="Approved by rita"
    )
    assert not [block for block in blocks if block["type"] == "actions"]
    assert "Approved by rita" in json.dumps(blocks)


@pytest.mark.parametrize(
    "value", ['{"environment": "demo"}', "[1]", "not json", json.dumps({**vars(REF), "x": 1})]
)
def test_a_value_that_is_not_an_airlock_button_is_refused(value):
    with pytest.raises(ValueError, match="not an Airlock approval button"):
        RequestRef.decode(value)


MAPPING = {"U0RITA": "rita", "U0CARL": "carl", "U0MALLORY": "mallory"}


@pytest.mark.parametrize(
    ("slack_user", "allow_self", "user", "why"),
    [
        pytest.param("U0RITA", False, "rita", None, id="assigned-approver"),
        pytest.param("U0NOBODY", False, None, "not mapped", id="unmapped"),
        pytest.param("U0MALLORY", False, None, "not an assigned approver", id="unassigned"),
        pytest.param("U0CARL", False, None, "does not allow self-approval", id="self-approval"),
        pytest.param("U0CARL", True, "carl", None, id="self-approval-allowed"),
    ],
)
def test_only_an_assigned_approver_mapped_from_slack_may_answer(slack_user, allow_self, user, why):
    answered, refusal = slack_refusal(
        slack_user=slack_user,
        mapping=MAPPING,
        assigned=["rita", "carl"],
        triggered_by="carl",
        allow_self_approval=allow_self,
    )
    assert (answered.id if answered else None) == user
    assert (refusal is None) if why is None else (why in refusal)


def test_under_fab_a_user_mapped_by_id_is_still_refused_their_own_release_by_name():
    """FAB's ids are numbers and the run records the trigger's name: both are compared."""
    mapping = {"U0ALICE": {"id": "7", "name": "alice"}}
    answered, refusal = slack_refusal(
        slack_user="U0ALICE", mapping=mapping, assigned=["7"], triggered_by="alice", allow_self_approval=False
    )
    assert answered is None
    assert "triggered this run" in refusal
    answered, refusal = slack_refusal(
        slack_user="U0ALICE", mapping=mapping, assigned=["7"], triggered_by="bob", allow_self_approval=False
    )
    assert (answered.id, answered.name, refusal) == ("7", "alice", None)


def test_a_freeze_override_leads_the_summary():
    planned = {
        **RELEASE_PLAN,
        "plan": {
            **RELEASE_PLAN["plan"],
            "freeze_override": {
                "name": "year-end",
                "reason": "close",
                "ends": "2027-01-04T00:00+01:00",
                "override_reason": "hotfix",
            },
        },
    }
    assert plan_summary(planned)[0] == (
        "FREEZE OVERRIDE: year-end (close, until 2027-01-04T00:00+01:00); why: hotfix"
    )


def test_a_button_value_with_wrong_types_is_refused():
    forged = {**vars(REF), "map_index": "0"}
    with pytest.raises(ValueError, match="not an Airlock approval button"):
        RequestRef.decode(json.dumps(forged))
