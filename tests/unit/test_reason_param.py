"""``reason`` is one line of at most 500 characters, refused by the trigger form and the REST API."""

from __future__ import annotations

import copy

import pytest
from airflow.sdk.exceptions import ParamValidationError

from tests.support import load_dag

pytestmark = pytest.mark.usefixtures("environment")


@pytest.mark.parametrize("dag_id", ["release_sandbox", "rollback_sandbox", "restore_sandbox"])
@pytest.mark.parametrize(
    "reason",
    [
        pytest.param("fix\n### Migrations", id="newline"),
        pytest.param("fix\rnext", id="carriage-return"),
        pytest.param("x" * 501, id="too-long"),
    ],
)
def test_a_bad_reason_is_refused(dag_id, reason):
    params = copy.deepcopy(load_dag(dag_id).params)

    with pytest.raises(ParamValidationError, match="reason"):
        params["reason"] = reason


@pytest.mark.parametrize("dag_id", ["release_sandbox", "rollback_sandbox", "restore_sandbox"])
def test_a_one_line_reason_of_500_characters_is_accepted(dag_id):
    params = copy.deepcopy(load_dag(dag_id).params)
    params["reason"] = "é" * 500
    if "version" in params:
        params["version"] = "2.0.0"

    assert params.validate()["reason"] == "é" * 500


@pytest.mark.parametrize("dag_id", ["release_sandbox", "migrate_sandbox"])
@pytest.mark.parametrize(
    "override",
    [pytest.param("hotfix\n### Approval", id="newline"), pytest.param("x" * 501, id="too-long")],
)
def test_a_bad_freeze_override_is_refused_when_the_run_is_created(dag_id, override):
    params = copy.deepcopy(load_dag(dag_id).params)

    with pytest.raises(ParamValidationError, match="freeze_override"):
        params["freeze_override"] = override
