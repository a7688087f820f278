"""Approval evidence: which recorded approvals let a step change production, and why not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from airlock.core.evidence import (
    approval_refusal,
    describe_user,
    host_drift,
    is_listed,
    is_triggering_user,
    response_refusal,
)

DIGEST = "d" * 64
ALICE = {"id": "7", "name": "alice"}  # a FAB user: numeric id, a name people know


def approval(**overrides):
    return {
        "chosen_options": ["Approve"],
        "responded_by_user": ALICE,
        "plan_digest": DIGEST,
        "run_id": "manual__1",
        "clear_number": 0,
        **overrides,
    }


def refusal(recorded, **overrides):
    arguments = {
        "step": "deploy of web-1",
        "plan_digest": DIGEST,
        "run_id": "manual__1",
        "clear_number": 0,
        "approvers": ["7"],
        "triggered_by": "bob",
        "allow_self_approval": False,
        **overrides,
    }
    return approval_refusal(recorded, **arguments)


@pytest.mark.parametrize(
    "approvers",
    [pytest.param(["7"], id="listed-by-id"), pytest.param(["alice"], id="listed-by-name")],
)
def test_an_approver_matches_by_id_or_by_name(approvers):
    assert refusal(approval(), approvers=approvers) is None
    assert is_listed(SimpleNamespace(id="7", name="alice"), approvers)


def test_no_recorded_approval_is_refused_saying_it_was_marked_by_hand_and_what_to_do():
    message = refusal(None)

    assert message.startswith("deploy of web-1 refused: this run has no recorded approval")
    assert "marked success by hand" in message
    assert "Trigger a new release" in message


@pytest.mark.parametrize(
    ("recorded", "overrides", "says"),
    [
        pytest.param(approval(chosen_options=["Reject"]), {}, "not Approve", id="rejected"),
        pytest.param(
            approval(responded_by_user={"id": "9", "name": "mallory"}),
            {},
            "mallory (id 9) is not an approver",
            id="not-an-approver",
        ),
        pytest.param(
            approval(), {"triggered_by": "alice"}, "alice (id 7) triggered this run", id="self-by-name"
        ),
        pytest.param(approval(), {"triggered_by": "7"}, "triggered this run", id="self-by-id"),
        pytest.param(approval(run_id="manual__0"), {}, "recorded for run manual__0", id="another-run"),
        pytest.param(approval(), {"clear_number": 1}, "before this run's tasks were cleared", id="cleared"),
        pytest.param(
            approval(plan_digest="e" * 64), {}, f"approved plan digest {'e' * 64}", id="another-plan"
        ),
    ],
)
def test_an_approval_that_does_not_cover_this_step_is_refused(recorded, overrides, says):
    message = refusal(recorded, **overrides)

    assert message is not None
    assert says in message
    assert "Nothing was changed" in message


def test_self_approval_is_allowed_when_the_environment_allows_it():
    assert refusal(approval(), triggered_by="alice", allow_self_approval=True) is None


def test_the_triggering_user_is_recognised_by_id_or_name():
    assert is_triggering_user({"id": "7", "name": "alice"}, "alice")
    assert is_triggering_user({"id": "7", "name": "alice"}, "7")
    assert not is_triggering_user({"id": "7", "name": "alice"}, "bob")
    assert response_refusal(ALICE, approvers=["alice"], triggered_by="bob", allow_self_approval=False) is None


def test_a_user_is_described_by_name_and_id_when_they_differ():
    assert describe_user({"id": "7", "name": "alice"}) == "alice (id 7)"
    assert describe_user({"id": "admin", "name": "admin"}) == "admin"
    assert describe_user(None) == "an unknown user"


@pytest.mark.parametrize(
    ("current", "drifted"),
    [
        pytest.param("1.0.0", False, id="as-planned"),
        pytest.param("2.0.0", False, id="already-switched-by-this-run"),
        pytest.param("1.5.0", True, id="changed-since-the-plan"),
        pytest.param(None, True, id="no-release-any-more"),
    ],
)
def test_a_host_changed_since_the_plan_is_refused(current, drifted):
    message = host_drift("web-1", planned_current="1.0.0", new_version="2.0.0", current=current)

    assert (message is not None) is drifted
    if drifted:
        assert "the approved plan saw 1.0.0" in message
