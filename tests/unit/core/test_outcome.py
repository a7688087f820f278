"""How a release or rollback run ended, and what it must roll back, from its steps' states."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from airlock.core.outcome import (
    ReleaseRun,
    approver,
    describe_failed,
    nothing_to_roll_back,
    release_outcome,
    rollback_outcome,
    triggering_user,
    user_id,
)

THREE_HOSTS = {"web-1": None, "web-2": None, "web-3": None}


def run(verifications, deploys=None, approval="success", failed="an earlier step") -> ReleaseRun:
    return ReleaseRun(
        verifications=verifications,
        deploys={**THREE_HOSTS, **(deploys or {})},
        approval=approval,
        failed=failed,
    )


def test_a_run_without_a_recorded_user_was_triggered_by_unknown():
    assert triggering_user(SimpleNamespace(triggering_user_name=None)) == "unknown"
    assert triggering_user(SimpleNamespace()) == "unknown"
    assert triggering_user(SimpleNamespace(triggering_user_name="alice")) == "alice"


@pytest.mark.parametrize(
    ("approval", "expected"),
    [
        pytest.param({"responded_by_user": {"id": "admin", "name": "Admin"}}, "admin", id="answered"),
        pytest.param({"responded_by_user": None}, None, id="nobody-answered"),
        pytest.param({}, None, id="no-responder-key"),
        pytest.param(None, None, id="no-gate"),
    ],
)
def test_the_approver_is_read_from_the_gates_result(approval, expected):
    assert approver(approval) == expected


def test_a_responder_may_come_as_a_mapping_or_an_object():
    assert user_id({"id": "bob"}) == "bob"
    assert user_id(SimpleNamespace(id="bob", name="Bob")) == "bob"
    assert user_id(None) is None


def test_failed_steps_are_named_for_a_reader_and_sorted():
    states = {
        "wave_2.deploy_1": "failed",
        "migrate": "success",
        "check_host_0": "up_for_retry",
        "wave_2.deploy_0": "success",
    }

    described = describe_failed(states, {"wave_2.deploy_1": "wave_2.deploy (web-3)"})

    assert described == "check_host_0, wave_2.deploy (web-3)"


def test_no_failed_step_is_an_earlier_step():
    assert describe_failed({"lock": "success", "plan": "upstream_failed"}) == "an earlier step"


def test_only_hosts_whose_deploy_ran_are_rolled_back():
    release = run(
        [None, None],
        deploys={"web-1": "failed", "web-2": "upstream_failed", "web-3": "skipped"},
    )

    assert release.attempted_hosts() == ["web-1"]
    assert nothing_to_roll_back(release, planned=True) is None


@pytest.mark.parametrize(
    ("release", "planned", "why"),
    [
        pytest.param(run([None, None]), False, "no plan", id="stopped-before-the-plan"),
        pytest.param(
            run(["success", "success"], deploys=dict.fromkeys(THREE_HOSTS, "success")),
            True,
            "every wave succeeded",
            id="all-verified",
        ),
        pytest.param(
            run([None, None], deploys={"web-1": "upstream_failed"}),
            True,
            "no host was touched",
            id="migration-failed",
        ),
    ],
)
def test_nothing_is_rolled_back_when_no_host_can_have_changed_or_all_went_well(release, planned, why):
    assert why in nothing_to_roll_back(release, planned=planned)


def test_a_release_whose_every_wave_verified_succeeded():
    outcome = release_outcome(
        run(["success", "success"]), planned=True, dry_run=False, rollback=None, backup="b"
    )

    assert (outcome.result, outcome.detail, outcome.ended_well) == ("succeeded", None, True)


def test_a_dry_run_only_planned():
    outcome = release_outcome(run([None, None]), planned=True, dry_run=True, rollback=None, backup=None)

    assert (outcome.result, outcome.detail, outcome.ended_well) == (
        "planned",
        "dry run: nothing changed",
        True,
    )


def test_a_failed_approval_is_a_rejection_that_changed_nothing():
    outcome = release_outcome(
        run([None, None], approval="failed"), planned=True, dry_run=False, rollback=None, backup=None
    )

    assert outcome.result == "rejected"
    assert outcome.detail == "rejected or timed out at approval; nothing changed"
    assert not outcome.ended_well


def test_a_rolled_back_release_names_what_failed_the_hosts_and_the_backup():
    outcome = release_outcome(
        run(["failed", None]),
        planned=True,
        dry_run=False,
        rollback={"failed": "wave_1.verify", "hosts": {"web-1": "back on 1.0.0"}},
        backup="demo-1-pre-release",
    )

    assert outcome.result == "rolled_back"
    assert outcome.detail == (
        "failed at wave_1.verify; {'web-1': 'back on 1.0.0'}; pre-release backup demo-1-pre-release"
    )
    assert not outcome.ended_well


def test_a_release_failed_before_any_switch_says_so():
    outcome = release_outcome(
        run([None, None], failed="migrate"), planned=True, dry_run=False, rollback=None, backup=None
    )

    assert (outcome.result, outcome.detail) == ("failed", "failed at migrate; no host was switched")


def test_a_release_without_a_plan_failed_even_if_nothing_ran():
    outcome = release_outcome(
        run([None, None], approval=None, failed="check_artifact"),
        planned=False,
        dry_run=False,
        rollback=None,
        backup=None,
    )

    assert (outcome.result, outcome.detail) == ("failed", "failed at check_artifact; no host was switched")


def test_a_rollback_succeeds_only_when_every_host_was_rolled_back():
    assert rollback_outcome(["success", "success"], approval="success", failed="-").result == "succeeded"
    failed = rollback_outcome(["success", "failed"], approval="success", failed="roll_back_host_1")
    assert (failed.result, failed.detail) == ("failed", "failed at roll_back_host_1")
    assert rollback_outcome([], approval=None, failed="plan").result == "failed"


def test_a_rejected_rollback_changed_nothing():
    outcome = rollback_outcome(["skipped", "skipped"], approval="failed", failed="approve")

    assert (outcome.result, outcome.detail) == (
        "rejected",
        "rejected or timed out at approval; nothing changed",
    )
