"""``rollback_<env>`` switches hosts only on this run's approval of this plan, as a release does.

The grid's "Mark success" on a waiting approval leaves the gate green with no answer: a rollback
run must then change nothing and say what to do, while an approver's answer still rolls back.
"""

from __future__ import annotations

import pytest

from tests.faults.test_approval_and_artifact import mark_success_by_hand
from tests.integration import releases
from tests.integration.releases import NEW, OLD, on_every_host, served_versions
from tests.support import load_dag, run_dag

HOSTS = ("web-1", "web-2", "web-3")


@pytest.fixture
def hosts_on_new(hosts_on_old):
    """Every host on NEW, with OLD recorded as the release before it."""
    on_every_host(hosts_on_old, NEW)
    return hosts_on_old


def test_a_rollback_whose_approval_was_marked_success_by_hand_switches_no_host(hosts_on_new, ops_url, capfd):
    environment = hosts_on_new
    rollback = load_dag(f"rollback_{environment.name}")

    run_id, states, answered = run_dag(rollback, {"reason": "bad build"}, answer=mark_success_by_hand)

    assert answered.get("ok") is True, answered
    assert states["approve"] == "success"
    assert states["conclude"] == "failed", states
    assert served_versions(environment) == dict.fromkeys(HOSTS, NEW)
    out, err = capfd.readouterr()
    assert "roll_back_host (web-1) refused: this run has no recorded approval" in out + err
    assert f"Trigger rollback_{environment.name} again" in out + err
    [(result, approved_by)] = releases.audit_rows(ops_url, run_id, "result", "approved_by")
    assert (result, approved_by) == ("failed", None)

    run_id, states, answered = run_dag(rollback, {"reason": "bad build"}, answer="Approve")

    assert states["conclude"] == "success", states
    assert served_versions(environment) == dict.fromkeys(HOSTS, OLD)
