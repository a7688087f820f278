"""Queued releases on the running scheduler (``rollout.on_lock_busy: wait``).

This module adds two environments to the running stack: the demo's hosts, database and
connections, no schedules and no backup, and releases that wait for a held lock instead of
failing: ``demo-queue`` waits up to 5 minutes, ``demo-queue-brief`` 30 seconds. Each has its own
lock, so the demo's own releases never queue behind these.

What a release manager sees: a release triggered while another one waits for approval does not
fail; its ``wait_for_lock`` task sits in *up for reschedule* (no worker slot taken), the board
lists it in line, and it goes ahead once the holder is done, first come, first served; a wait
that outlasts ``rollout.lock_wait_timeout`` ends the run with a message naming the holder.
"""

from __future__ import annotations

import time
from datetime import datetime

import psycopg
import pytest
import redis
import yaml

from tests.e2e.conftest import E2E_REDIS_DB
from tests.e2e.rest import Rest, answer, finished, listed_request, served

QUEUE = "demo-queue"
BRIEF = "demo-queue-brief"
BRIEF_TIMEOUT_SECONDS = 30


@pytest.fixture(scope="module")
def queued_environments(stack):
    demo = yaml.safe_load((stack.environments_dir / "demo.yaml").read_text())
    unscheduled = {section: {**demo.get(section, {}), "schedule": None} for section in ("health", "logs")}

    def add(name: str, wait: str):
        return stack.add_environment(
            name,
            {
                "description": f"The demo; releases wait {wait} for the lock (test_queued_releases.py)",
                "rollout": {
                    **demo["rollout"],
                    "on_lock_busy": "wait",
                    "lock_wait_timeout": wait,
                    "lock_poll_interval": "2s",
                },
                "backup": None,
                "db_maintenance": {"schedule": None},
                **unscheduled,
            },
            dag_ids=(f"release_{name}",),
        )

    environments = {QUEUE: add(QUEUE, "5m"), BRIEF: add(BRIEF, f"{BRIEF_TIMEOUT_SECONDS}s")}
    yield environments
    for name in environments:
        stack.remove_environment(name)


def task(rest: Rest, dag_id: str, run_id: str, task_id: str) -> dict:
    return rest.call("GET", f"{rest.run_path(dag_id, run_id)}/taskInstances/{task_id}")


def waiting_in_line(rest: Rest, dag_id: str, run_id: str, timeout: float = 180) -> None:
    """Until the run's wait_for_lock has looked once and handed its slot back."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = task(rest, dag_id, run_id, "wait_for_lock")["state"]
        if state == "up_for_reschedule":
            return
        assert state in (None, "scheduled", "queued", "running"), (state, rest.task_states(dag_id, run_id))
        time.sleep(0.2)
    raise AssertionError(f"{run_id} never waited for the lock: {rest.task_states(dag_id, run_id)}")


def started(instance: dict) -> datetime:
    return datetime.fromisoformat(instance["start_date"].replace("Z", "+00:00"))


def board_line(rest: Rest, name: str) -> list[str]:
    [card] = [e for e in rest.call("GET", "/airlock/api/environments")["environments"] if e["name"] == name]
    return [run["run_id"] for run in card["queue"]]


def test_releases_queue_behind_the_holder_without_a_slot_and_go_first_come_first_served(
    stack, queued_environments
):
    rest = Rest(stack)
    dag_id = f"release_{QUEUE}"
    before = served(stack)

    holder = rest.trigger(dag_id, {"version": "2.0.0", "reason": "holds the lock while it waits"})
    request = listed_request(rest, dag_id, holder)
    first = rest.trigger(dag_id, {"version": "2.0.0", "dry_run": True, "reason": "queued first"})
    waiting_in_line(rest, dag_id, first)
    second = rest.trigger(dag_id, {"version": "2.0.0", "dry_run": True, "reason": "queued second"})
    waiting_in_line(rest, dag_id, second)

    # Both wait, neither failed, and the board shows the line in order.
    assert rest.run_state(dag_id, first) == rest.run_state(dag_id, second) == "running"
    assert board_line(rest, QUEUE) == [first, second]
    assert rest.task_states(dag_id, second)["lock"] in (None, "none"), rest.task_states(dag_id, second)

    answer(rest, request, "Reject")  # the holder ends; the line moves
    assert finished(rest, dag_id, holder) == "failed"
    assert finished(rest, dag_id, first, timeout=300) == "success"
    assert finished(rest, dag_id, second, timeout=300) == "success"

    locked_first = task(rest, dag_id, first, "lock")
    locked_second = task(rest, dag_id, second, "lock")
    assert locked_first["state"] == locked_second["state"] == "success"
    assert started(locked_first) < started(locked_second)
    assert board_line(rest, QUEUE) == []
    assert served(stack) == before  # a rejected release and two dry runs change nothing
    with psycopg.connect(stack.ops_url) as connection:
        results = dict(
            connection.execute(
                "SELECT run_id, result FROM airlock.releases WHERE run_id = ANY(%s)", ([first, second],)
            ).fetchall()
        )
    assert results == {first: "planned", second: "planned"}


def test_a_queued_release_gives_up_at_its_timeout_naming_the_holder(stack, queued_environments):
    rest = Rest(stack)
    dag_id = f"release_{BRIEF}"
    stack.slack.clear()

    holder = rest.trigger(dag_id, {"version": "2.0.0", "reason": "holds the lock"})
    request = listed_request(rest, dag_id, holder)
    try:
        queued = rest.trigger(dag_id, {"version": "2.0.0", "reason": "waits too long"})
        waiting_in_line(rest, dag_id, queued)

        assert finished(rest, dag_id, queued, timeout=BRIEF_TIMEOUT_SECONDS + 120) == "failed"
        states = rest.task_states(dag_id, queued)
        assert states["wait_for_lock"] == "failed", states
        assert states["lock"] == "upstream_failed", states
        assert not [name for name, state in states.items() if name.startswith("wave_") and state == "success"]
        # The holder still holds its lock and still waits for its approval.
        keys = redis.Redis(host="127.0.0.1", port=6379, db=E2E_REDIS_DB, decode_responses=True)
        assert holder in keys.get(f"airlock:lock:{BRIEF}")
        assert keys.zcard(f"airlock:lock:{BRIEF}:queue") == 0
        keys.close()
        assert rest.run_state(dag_id, holder) == "running"

        with psycopg.connect(stack.ops_url) as connection:
            [(result, detail)] = connection.execute(
                "SELECT result, detail FROM airlock.releases WHERE run_id = %s", (queued,)
            ).fetchall()
        assert result == "failed"
        assert f"Gave up waiting for the lock of {BRIEF}" in detail
        assert f"held by release 2.0.0 (run {holder}" in detail
        assert stack.slack.wait_for(
            lambda texts: any("Gave up waiting for the lock" in text for text in texts), timeout=60
        ), stack.slack.texts()
    finally:
        answer(rest, request, "Reject")
        finished(rest, dag_id, holder)
