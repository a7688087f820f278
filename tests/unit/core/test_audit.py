"""Which runs the audit trail records, and the row of a run that stopped before concluding."""

from __future__ import annotations

import pytest

from airlock.core.audit import audited_action, unconcluded_outcome


@pytest.mark.parametrize(
    ("dag_id", "action"),
    [
        pytest.param("release_demo", "release", id="release"),
        pytest.param("rollback_demo", "rollback", id="rollback"),
        pytest.param("migrate_demo", "migrate", id="migrate"),
        pytest.param("restore_demo", "restore", id="restore"),
        pytest.param("unlock_demo", None, id="unlock-has-its-own-row"),
        pytest.param("backup_demo", None, id="backup-not-audited"),
        pytest.param("release_demo-eu", None, id="another-environment"),
    ],
)
def test_audited_actions(dag_id, action):
    assert audited_action(dag_id, "demo") == action


@pytest.mark.parametrize(
    ("states", "result", "detail"),
    [
        pytest.param(
            {"lock": "success", "check_artifact": "failed", "plan": "upstream_failed"},
            "failed",
            "failed at check_artifact",
            id="checksum-mismatch-before-plan",
        ),
        pytest.param(
            {"lock": "success", "check_host_1": "failed"}, "failed", "failed at check_host_1", id="host-key"
        ),
        pytest.param(
            {"plan": "success", "approve": "failed", "apply": "upstream_failed"},
            "rejected",
            None,
            id="rejected",
        ),
        pytest.param(
            {"plan": "success", "proceed": "success", "apply": "skipped"}, "planned", None, id="dry-run"
        ),
        pytest.param(
            {"plan": "success", "approve": "success", "apply": "success"}, "succeeded", None, id="done"
        ),
    ],
)
def test_the_outcome_of_a_run_without_its_own_row(states, result, detail):
    outcome = unconcluded_outcome(states, approve_task_id="approve", change_task_ids=["apply"])

    assert outcome.result == result
    if detail:
        assert outcome.detail == detail


def test_a_run_whose_approval_timed_out_is_audited_as_timed_out():
    states = {"plan": "success", "approve": "failed", "apply": "upstream_failed"}

    outcome = unconcluded_outcome(
        states, approve_task_id="approve", change_task_ids=["apply"], approval_timeout="0:00:25"
    )

    assert (outcome.result, outcome.detail) == (
        "timed_out",
        "approval timed out: nobody answered within 0:00:25; nothing changed",
    )
