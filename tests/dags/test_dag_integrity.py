"""Every DAG file parses cleanly, offline, and every DAG and task follows the house rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import PROJECT, demo_document

# Parses dags/ the way the dag-processor does, with every socket connection refused and no
# connection secrets: parsing must need neither network nor database.
PARSE = r"""
import json, socket, sys

def refuse(*args, **kwargs):
    raise OSError("network access during DAG parsing")

socket.socket.connect = refuse
socket.create_connection = refuse

from airflow.dag_processing.dagbag import DagBag

bag = DagBag(dag_folder=sys.argv[1])
dags = {}
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "fileloc": dag.fileloc,
        "doc_md": bool(dag.doc_md and dag.doc_md.strip()),
        "owners": sorted({t.owner for t in dag.tasks}),
        "tags": sorted(dag.tags),
        "catchup": dag.catchup,
        "params": {name: dag.params.get_param(name).schema for name in dag.params},
        "defaults": {
            name: dag.params.get_param(name).value if dag.params.get_param(name).has_value else "<required>"
            for name in dag.params
        },
        "tasks": {
            t.task_id: {
                "retries": t.retries,
                "backoff": bool(t.retry_exponential_backoff),
                "max_retry_delay": t.max_retry_delay is not None,
                "execution_timeout": t.execution_timeout is not None,
                "is_hitl": type(t).__name__.endswith("ApprovalOperator"),
            }
            for t in dag.tasks
        },
    }
print(json.dumps({"dags": dags, "errors": {k: v for k, v in bag.import_errors.items()}}))
"""


def parse(environments: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW_CONN_")}
    env["AIRLOCK_ENVIRONMENTS_DIR"] = str(environments)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = "postgresql://nobody@127.0.0.1:9/nowhere"
    result = subprocess.run(
        [sys.executable, "-c", PARSE, str(PROJECT / "dags")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shipped() -> dict:
    return parse(PROJECT / "include" / "environments")


def test_every_dag_file_imports_offline_without_errors(shipped):
    assert shipped["errors"] == {}
    assert shipped["dags"], "no DAG was found in dags/"


# The DAGs of one environment file (the demo's, with backup and config sections): a contract that
# users' access rules, dashboards and REST clients name.
PER_ENVIRONMENT = (
    "release",
    "rollback",
    "migrate",
    "backup",
    "restore",
    "health",
    "silence",
    "log_cleanup",
    "db_maintenance",
    "unlock",
    "config_update",
)


def test_each_environment_gets_exactly_its_dags_and_housekeeping_runs_once(shipped):
    expected = {f"{kind}_demo" for kind in PER_ENVIRONMENT} | {"airflow_housekeeping"}

    assert set(shipped["dags"]) == expected


def test_silence_params_are_validated_when_the_run_is_created(shipped):
    params = shipped["dags"]["silence_demo"]["params"]

    assert set(params) == {"check", "host", "duration", "reason"}
    assert shipped["dags"]["silence_demo"]["defaults"] == {
        "check": "*",
        "host": "*",
        "duration": "1h",
        "reason": "<required>",
    }
    assert params["duration"]["pattern"] == r"^\s*\d+\s*[smhd]\s*$"
    assert params["reason"]["minLength"] == 3


def test_every_dag_has_a_runbook_an_owner_tags_and_no_catchup(shipped):
    for dag_id, dag in shipped["dags"].items():
        assert dag["doc_md"], f"{dag_id} has no doc_md"
        assert dag["owners"], f"{dag_id} has no owner"
        assert "airflow" not in dag["owners"], f"{dag_id} keeps Airflow's default owner"
        assert dag["tags"], f"{dag_id} has no tags"
        assert dag["catchup"] is False, f"{dag_id} catches up"


def test_a_param_one_may_leave_empty_accepts_null_so_the_trigger_form_does_not_demand_it(shipped):
    # Airflow's trigger form sends an emptied text field as null and marks a field whose type
    # does not allow null as required: an optional text param must say ["null", "string"].
    for dag_id, dag in shipped["dags"].items():
        for name, schema in dag["params"].items():
            if dag["defaults"][name] in (None, ""):
                types = schema.get("type")
                assert isinstance(types, list), f"{dag_id}.{name}: optional, so its type must allow null"
                assert "null" in types, f"{dag_id}.{name}: optional, so its type must allow null"


# The tasks that must run at most once, by DAG (the id without its environment) and task id, with
# the reason. Every other task retries, with exponential backoff up to a bounded delay.
RUN_ONCE = {
    ("release", "validate_request"): "a rejected request does not get better by asking again",
    ("release", "plan"): "the approver approves the plan they read, built once",
    ("rollback", "plan"): "the approver approves the plan they read, built once",
    ("unlock", "plan"): "the approver approves the holder they read",
    ("unlock", "break_lock"): "breaking a lock twice could break the next holder's",
    ("migrate", "proceed"): "a dry run stops here on purpose",
    ("restore", "restore"): "a restore that failed halfway is read before it runs again (runbook)",
    ("db_maintenance", "reindex"): "an interrupted REINDEX CONCURRENTLY leaves an invalid index to look at",
    ("health", "verdict"): "the verdict only reports; the next run five minutes later checks again",
    ("silence", "validate_request"): "a refused silence request does not get better by asking again",
    ("config_update", "validate_request"): "a rejected request does not get better by asking again",
    ("config_update", "plan"): "the approver approves the plan they read, built once",
}


def test_every_task_has_an_execution_timeout_and_deliberate_retries(shipped):
    for dag_id, dag in shipped["dags"].items():
        kind = dag_id.removesuffix("_demo")
        for task_id, task in dag["tasks"].items():
            where = f"{dag_id}.{task_id}"
            if task["is_hitl"]:
                # A human's answer is bounded by the approval's response timeout instead.
                assert task["retries"] == 0, f"{where}: an approval must not be asked twice"
                continue
            assert task["execution_timeout"], f"{where} has no execution_timeout"
            if (kind, task_id) in RUN_ONCE:
                assert task["retries"] == 0, f"{where} retries: {RUN_ONCE[kind, task_id]}"
            else:
                assert task["retries"] > 0, f"{where} never retries, and it is not one that must run once"
                assert task["backoff"], f"{where} retries without exponential backoff"
                assert task["max_retry_delay"], f"{where} retries with an unbounded delay"


def test_a_broken_environment_is_an_import_error_naming_file_and_field_and_others_still_load(tmp_path):
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(demo_document()))
    (tmp_path / "staging.yaml").write_text(yaml.safe_dump({**demo_document(), "rollout": {"waves": [1]}}))

    parsed = parse(tmp_path)

    [(file, message)] = parsed["errors"].items()
    assert file.endswith("environments.py")
    assert "staging.yaml: rollout.waves: the last wave reaches 1 of 3 hosts" in message
    assert any(dag_id.endswith("_demo") for dag_id in parsed["dags"])
    assert not any(dag_id.endswith("_staging") for dag_id in parsed["dags"])


def test_without_required_approval_the_steps_chain_straight_on(tmp_path, monkeypatch):
    from tests.support import environment_dags

    files = ("release", "rollback", "migrate", "restore")
    dags = environment_dags(tmp_path, monkeypatch, "solo", files, approval={"required": False})

    assert not any("approve" in dag.task_ids for dag in dags.values())
    assert dags["release"].get_task("backup").upstream_task_ids == {"proceed"}
    assert dags["rollback"].get_task("roll_back_host").upstream_task_ids == {"plan"}
    assert dags["migrate"].get_task("apply").upstream_task_ids == {"proceed"}
    assert dags["restore"].get_task("safety_backup").upstream_task_ids == {"plan"}
