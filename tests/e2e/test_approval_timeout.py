"""An approval nobody answers, stopped by the running scheduler's own HITL timeout sweep.

The demo's approval waits an hour, so this module adds a second environment to the running stack,
``demo-timeout``: the demo's hosts, database and connections with a 25-second
``approval.timeout`` (and no scheduled DAGs and no backup, so nothing but this test's release runs
for it). Nothing in the test answers, pushes or marks the approval: Airflow's scheduler applies
the request's default (*Reject*) once the deadline passes, and the gate ends the release.
"""

from __future__ import annotations

import json
from datetime import datetime

import psycopg
import pytest
import redis
import yaml

from tests.e2e.conftest import E2E_REDIS_DB
from tests.e2e.rest import Rest, finished, listed_request, served

ENVIRONMENT = "demo-timeout"
DAG_ID = f"release_{ENVIRONMENT}"
TIMEOUT_SECONDS = 25
#: The scheduler sweeps parked approvals every ``trigger_timeout_check_interval`` (15 s).
SWEEP_SECONDS = 15


@pytest.fixture(scope="module")
def short_timeout_environment(stack):
    demo = yaml.safe_load((stack.environments_dir / "demo.yaml").read_text())
    unscheduled = {section: {**demo.get(section, {}), "schedule": None} for section in ("health", "logs")}
    environment = stack.add_environment(
        ENVIRONMENT,
        {
            "description": "The demo with a short approval timeout (tests/e2e/test_approval_timeout.py)",
            # Posted to Slack as an interactive message too: the timeout must update it.
            "approval": {**demo["approval"], "timeout": f"{TIMEOUT_SECONDS}s", "slack_channel": "C0TIMEOUT"},
            "backup": None,
            "db_maintenance": {"schedule": None},
            **unscheduled,
        },
        dag_ids=(DAG_ID,),
    )
    yield environment
    stack.remove_environment(ENVIRONMENT)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_an_approval_nobody_answers_is_timed_out_by_the_scheduler_and_changes_nothing(
    stack, short_timeout_environment
):
    environment = short_timeout_environment
    assert environment.approval.timeout.total_seconds() == TIMEOUT_SECONDS  # and lock_ttl validated
    rest = Rest(stack)
    before = served(stack)
    stack.slack.clear()

    run_id = rest.trigger(DAG_ID, {"version": "2.0.0", "reason": "nobody will answer"})
    request = listed_request(rest, DAG_ID, run_id)
    keys = redis.Redis(host="127.0.0.1", port=6379, db=E2E_REDIS_DB, decode_responses=True)
    held = keys.get(f"airlock:lock:{ENVIRONMENT}")

    assert finished(rest, DAG_ID, run_id, timeout=TIMEOUT_SECONDS + 4 * SWEEP_SECONDS + 120) == "failed"

    # The scheduler answered with the default, no earlier than the deadline, within a sweep or two.
    [answered] = rest.call("GET", f"{rest.run_path(DAG_ID, run_id)}/hitlDetails")["hitl_details"]
    assert answered["responded_by_user"] is None
    assert answered["chosen_options"] == ["Reject"]
    waited = (when(answered["responded_at"]) - when(request["created_at"])).total_seconds()
    assert TIMEOUT_SECONDS <= waited <= TIMEOUT_SECONDS + 2 * SWEEP_SECONDS + 10, waited
    states = rest.task_states(DAG_ID, run_id)
    assert states["approve"] == "failed", states
    assert states["unlock"] == "success", states
    assert not [task for task, state in states.items() if task.startswith("wave_") and state == "success"]
    assert states.get("migrate") in (None, "upstream_failed", "skipped"), states

    # What a user checks: every host as before, the lock (held while waiting) freed, one honest
    # audit row, and Slack saying the approval timed out, never that someone rejected it.
    assert served(stack) == before
    assert held is not None
    assert run_id in held
    assert keys.get(f"airlock:lock:{ENVIRONMENT}") is None
    keys.close()
    with psycopg.connect(stack.ops_url) as connection:
        rows = connection.execute(
            "SELECT action, version, result, detail, approved_by, reason FROM airlock.releases"
            " WHERE run_id = %s",
            (run_id,),
        ).fetchall()
    assert rows == [
        (
            "release",
            "2.0.0",
            "timed_out",
            "approval timed out: nobody answered within 0:00:25; nothing changed",
            None,
            "nobody will answer",
        )
    ]
    texts = stack.slack.texts()
    assert any(
        f"*{ENVIRONMENT}*: approval of release 2.0.0 timed out: nobody answered within 0:00:25. "
        "Nothing changed on any host." in text
        for text in texts
    ), texts
    assert not any("rejected" in text for text in texts), texts
    [message] = [m for m in stack.slack.api_calls("chat.postMessage") if run_id in json.dumps(m["blocks"])]
    [update] = [call for call in stack.slack.api_calls("chat.update") if call["ts"] == message["ts"]]
    assert "Timed out: nobody answered within 0:00:25; not approved." in json.dumps(update["blocks"])
    assert not [block for block in update["blocks"] if block["type"] == "actions"]  # no buttons left
