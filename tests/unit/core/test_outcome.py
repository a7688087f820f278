"""How a release or rollback run ended, and what it must roll back, from its steps' states."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from airlock.core.outcome import (
    HostRollback,
    ReleaseRun,
    RollbackReport,
    approver,
    describe_failed,
    nothing_to_roll_back,
    release_outcome,
    rollback_outcome,
    rollback_waves,
    triggering_user,
    user_id,
)

THREE_HOSTS = {"web-1": None, "web-2": None, "web-3": None}


def run(
    verifications, deploys=None, approval="success", failed="an earlier step", approval_timeout=None
) -> ReleaseRun:
    return ReleaseRun(
        verifications=verifications,
        deploys={**THREE_HOSTS, **(deploys or {})},
        approval=approval,
        failed=failed,
        approval_timeout=approval_timeout,
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
    assert outcome.detail == "rejected at approval; nothing changed"
    assert not outcome.ended_well


def test_an_approval_nobody_answered_in_time_timed_out_and_is_not_called_a_rejection():
    outcome = release_outcome(
        run([None, None], approval="failed", approval_timeout="0:00:25"),
        planned=True,
        dry_run=False,
        rollback=None,
        backup=None,
    )

    assert (outcome.result, outcome.detail, outcome.ended_well) == (
        "timed_out",
        "approval timed out: nobody answered within 0:00:25; nothing changed",
        False,
    )


def report(*hosts: tuple[str, bool, str], failed: str = "wave_1.verify") -> dict:
    """A rollback step's report: (host, confirmed back, note) per host."""
    return RollbackReport(
        failed=failed,
        version="2.0.0",
        hosts=[HostRollback(host, "1.0.0", back, note) for host, back, note in hosts],
    ).to_dict()


def test_a_rolled_back_release_names_what_failed_the_hosts_and_the_backup():
    outcome = release_outcome(
        run(["failed", None]),
        planned=True,
        dry_run=False,
        rollback=report(("web-1", True, "back on 1.0.0")),
        backup="demo-1-pre-release",
    )

    assert outcome.result == "rolled_back"
    assert outcome.detail == (
        "failed at wave_1.verify. Rolled back web-1 (back on 1.0.0). "
        "Database not rolled back; pre-release backup: demo-1-pre-release."
    )
    assert not outcome.ended_well


def test_a_rollback_that_could_not_put_a_host_back_is_incomplete_and_names_it():
    outcome = release_outcome(
        run(["success", "failed"]),
        planned=True,
        dry_run=False,
        rollback=report(
            ("web-1", True, "back on 1.0.0"),
            ("web-2", False, "not put back on 1.0.0: connection refused"),
            ("web-3", True, "never switched by this run; left alone"),
            failed="wave_2.verify",
        ),
        backup=None,
    )

    assert outcome.result == "rollback_incomplete"
    assert outcome.detail == (
        "failed at wave_2.verify. Rollback INCOMPLETE: web-2 may still serve 2.0.0 "
        "(not put back on 1.0.0: connection refused). Rolled back: web-1 (back on 1.0.0), "
        "web-3 (never switched by this run; left alone)."
    )
    assert not outcome.ended_well


def test_a_rollback_step_that_failed_without_a_report_is_incomplete_not_no_host_switched():
    outcome = release_outcome(
        ReleaseRun(
            verifications=["failed", None],
            deploys={"web-1": "success", "web-2": None},
            approval="success",
            failed="rollback, wave_1.verify",
            rollback="failed",
        ),
        planned=True,
        dry_run=False,
        rollback=None,
        backup=None,
    )

    assert outcome.result == "rollback_incomplete"
    assert "hosts this run may have switched: web-1" in outcome.detail
    assert "No host was switched" not in outcome.detail


def test_a_release_failed_before_any_switch_says_so():
    outcome = release_outcome(
        run([None, None], failed="migrate"), planned=True, dry_run=False, rollback=None, backup=None
    )

    assert (outcome.result, outcome.detail) == ("failed", "failed at migrate. No host was switched.")


def test_a_release_failed_in_its_migrations_names_those_it_applied():
    outcome = release_outcome(
        run([None, None], failed="migrate"),
        planned=True,
        dry_run=False,
        rollback=None,
        backup="b-1",
        migrations_applied=["V10__a.sql"],
    )

    assert outcome.detail == (
        "failed at migrate. No host was switched. Migrations applied by this run (not rolled back): "
        "V10__a.sql. Database not rolled back; pre-release backup: b-1."
    )


def test_a_release_without_a_plan_failed_even_if_nothing_ran():
    outcome = release_outcome(
        run([None, None], approval=None, failed="check_artifact"),
        planned=False,
        dry_run=False,
        rollback=None,
        backup=None,
    )

    assert (outcome.result, outcome.detail) == ("failed", "failed at check_artifact. No host was switched.")


def test_only_deploys_that_failed_for_good_count_for_fail_fast():
    release = run([None, None], deploys={"web-1": "up_for_retry", "web-2": "failed", "web-3": "running"})

    assert release.failed_hosts() == ["web-2"]


@pytest.mark.parametrize(
    ("switched", "expected"),
    [
        pytest.param({"web-1", "web-2", "web-3"}, [["web-2", "web-3"], ["web-1"]], id="every-host"),
        pytest.param({"web-1", "web-3"}, [["web-3"], ["web-1"]], id="only-switched-hosts"),
        pytest.param({"web-1"}, [["web-1"]], id="empty-waves-dropped"),
    ],
)
def test_a_rollback_goes_in_the_rollouts_waves_last_wave_first(switched, expected):
    assert rollback_waves([["web-1"], ["web-2", "web-3"]], switched) == expected


def test_a_rollback_succeeds_only_when_every_host_was_rolled_back():
    both = {"web-1": "success", "web-2": "success"}
    assert rollback_outcome(both, approval="success", failed="-").result == "succeeded"
    failed = rollback_outcome({"web-1": "failed", "web-2": "failed"}, approval="success", failed="x")
    assert (failed.result, failed.detail) == ("failed", "failed at x")
    assert rollback_outcome({}, approval=None, failed="plan").result == "failed"


def test_a_rollback_that_switched_some_hosts_but_not_others_is_incomplete():
    outcome = rollback_outcome(
        {"web-1": "success", "web-2": "failed"}, approval="success", failed="roll_back_host (web-2)"
    )

    assert outcome.result == "rollback_incomplete"
    assert outcome.detail == (
        "failed at roll_back_host (web-2). Rollback INCOMPLETE: not back: web-2; back: web-1."
    )


def test_a_rejected_rollback_changed_nothing():
    outcome = rollback_outcome({"web-1": "skipped", "web-2": "skipped"}, approval="failed", failed="approve")

    assert (outcome.result, outcome.detail) == ("rejected", "rejected at approval; nothing changed")


def test_a_rollback_whose_approval_nobody_answered_in_time_timed_out():
    outcome = rollback_outcome(
        {"web-1": "skipped"}, approval="failed", failed="approve", approval_timeout="1:00:00"
    )

    assert outcome.result == "timed_out"
    assert "nobody answered within 1:00:00" in outcome.detail
