"""The approval gate's two limits are explicit: the answer's wait, and the task's own work."""

from __future__ import annotations

from datetime import timedelta

import pytest

from airlock.conventions import default_args
from airlock.operators.approval import APPROVAL_EXECUTION_TIMEOUT
from tests.support import load_dag

pytestmark = pytest.mark.usefixtures("environment")


@pytest.mark.parametrize(
    "dag_id", ["release_sandbox", "rollback_sandbox", "migrate_sandbox", "restore_sandbox"]
)
def test_the_gate_waits_the_environments_timeout_and_works_within_a_short_one(dag_id, environment):
    gate = load_dag(dag_id).get_task("approve")

    assert gate.response_timeout == environment.approval.timeout == timedelta(hours=1)
    assert gate.execution_timeout == APPROVAL_EXECUTION_TIMEOUT
    assert gate.execution_timeout != default_args(environment)["execution_timeout"]
