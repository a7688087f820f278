"""Queued releases against real Redis and the real audit table (``rollout.on_lock_busy: wait``).

Each call of :func:`airlock.tasks.environment.wait_for_lock` is one look of the waiting sensor;
the running scheduler's side (reschedule mode, no slot held, the order seen from outside) is
``tests/e2e/test_queued_releases.py``.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airlock.hooks.lock import EnvironmentLock, LockQueue
from airlock.tasks.environment import lock as take_lock
from airlock.tasks.environment import unlock, wait_for_lock
from airlock.web.overview import lock_state
from tests.integration.releases import audit_rows

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def queued_environment(environment, redis_client, ops_url):
    rollout = environment.rollout.model_copy(
        update={
            "on_lock_busy": "wait",
            "lock_wait_timeout": timedelta(minutes=10),
            "lock_poll_interval": timedelta(seconds=5),
        }
    )
    waiting = environment.model_copy(update={"rollout": rollout})
    keys = [f"airlock:lock:{environment.name}", f"airlock:lock:{environment.name}:queue"]
    redis_client.delete(*keys)
    yield waiting
    redis_client.delete(*keys)


def alive(**states: str):
    """This installation's run states (a run not named is running)."""
    return lambda dag_id, run_id: states.get(run_id, "running")


def look(environment, run_id: str, *, now: datetime = T0, run_state=None):
    """One look of ``run_id``'s wait_for_lock sensor; what it took, or None while it waits."""
    return wait_for_lock(
        environment,
        dag_id=f"release_{environment.name}",
        run_id=run_id,
        purpose=f"release {run_id}",
        triggered_by="alice",
        run_state=run_state or alive(),
        version="2.0.0",
        reason="queued in CI",
        now=now,
    )


def hold(environment, run_id: str):
    """A run that did not queue (``on_lock_busy: fail``, a rollback) takes the lock."""
    return take_lock(
        environment,
        dag_id=f"release_{environment.name}",
        run_id=run_id,
        purpose=f"release {run_id}",
        triggered_by="bob",
        run_state=alive(),
    )


def holder(environment) -> str | None:
    held = EnvironmentLock(
        environment=environment.name, redis_conn_id="airlock_redis", ttl=timedelta(hours=1)
    )
    current = held.holder()
    return current.run_id if current else None


def line(environment) -> list[str]:
    lock = EnvironmentLock(
        environment=environment.name, redis_conn_id="airlock_redis", ttl=timedelta(hours=1)
    )
    return [run.run_id for run, _ in LockQueue(lock).waiting()]


def test_waiting_runs_take_the_lock_first_come_first_served(queued_environment, caplog):
    env = queued_environment
    hold(env, "manual__a")
    caplog.set_level(logging.INFO, logger="airlock.tasks.environment")

    assert look(env, "manual__b", now=T0) is None
    assert look(env, "manual__c", now=T0 + timedelta(seconds=1)) is None
    assert line(env) == ["manual__b", "manual__c"]
    assert "it is held by release manual__a (run manual__a, by bob" in caplog.text
    assert "place 2" in caplog.text
    assert "ahead of this run: release manual__b" in caplog.text

    unlock(env, run_id="manual__a")
    # The lock is free, and c looks first: b joined first, so b takes it.
    assert look(env, "manual__c", now=T0 + timedelta(seconds=5)) is None
    assert holder(env) is None
    assert "free, but runs queued earlier go first" in caplog.text
    taken = look(env, "manual__b", now=T0 + timedelta(seconds=6))
    assert taken is not None
    assert taken["run_id"] == "manual__b"
    assert holder(env) == "manual__b"
    assert line(env) == ["manual__c"]

    # b's lock task takes the lock it already holds (idempotent), and c keeps waiting behind it.
    assert hold(env, "manual__b")["run_id"] == "manual__b"
    assert look(env, "manual__c", now=T0 + timedelta(seconds=10)) is None
    unlock(env, run_id="manual__b")
    assert look(env, "manual__c", now=T0 + timedelta(seconds=15))["run_id"] == "manual__c"
    assert line(env) == []


def test_a_rescheduled_look_keeps_its_place_in_line(queued_environment):
    env = queued_environment
    hold(env, "manual__a")
    look(env, "manual__b", now=T0)
    look(env, "manual__c", now=T0 + timedelta(seconds=1))

    look(env, "manual__b", now=T0 + timedelta(minutes=2))  # its next look, rescheduled or retried

    assert line(env) == ["manual__b", "manual__c"]


def test_a_run_that_died_in_line_is_dropped_by_the_next_to_look(queued_environment):
    env = queued_environment
    hold(env, "manual__a")
    look(env, "manual__b", now=T0)
    look(env, "manual__c", now=T0 + timedelta(seconds=1))
    unlock(env, run_id="manual__a")

    # b was stopped by hand while it waited; c must not wait behind it for ever.
    taken = look(env, "manual__c", now=T0 + timedelta(seconds=5), run_state=alive(manual__b="failed"))

    assert taken["run_id"] == "manual__c"
    assert line(env) == []


def test_a_dead_holder_is_broken_by_the_first_in_line(queued_environment, slack_messages):
    env = queued_environment
    hold(env, "manual__a")

    taken = look(env, "manual__b", now=T0, run_state=alive(manual__a="failed"))

    assert taken["run_id"] == "manual__b"
    assert holder(env) == "manual__b"
    assert any("manual__a" in text and "ended failed" in text for text in slack_messages.texts()), (
        slack_messages.texts()
    )


def test_a_run_gives_up_at_the_timeout_naming_the_holder_and_leaves_the_line(queued_environment, ops_url):
    env = queued_environment
    hold(env, "manual__a")
    assert look(env, "manual__timeout", now=T0) is None
    assert look(env, "manual__timeout", now=T0 + timedelta(minutes=9, seconds=59)) is None

    with pytest.raises(AirflowFailException) as gave_up:
        look(env, "manual__timeout", now=T0 + timedelta(minutes=10))

    message = str(gave_up.value)
    assert message.startswith(f"Gave up waiting for the lock of {env.name} after 0:10:00 in line")
    assert "(rollout.lock_wait_timeout is 0:10:00)" in message
    assert "it is held by release manual__a (run manual__a, by bob" in message
    assert "Nothing was changed" in message
    assert line(env) == []
    assert holder(env) == "manual__a"
    [(action, result, detail, reason)] = audit_rows(
        ops_url, "manual__timeout", "action", "result", "detail", "reason"
    )
    assert (action, result, reason) == ("release", "failed", "queued in CI")
    assert "Gave up waiting for the lock" in detail


def test_a_run_that_does_not_queue_takes_a_free_lock_at_once(queued_environment):
    """A rollback (or a release with on_lock_busy: fail) never waits behind queued releases."""
    env = queued_environment
    hold(env, "manual__a")
    look(env, "manual__b", now=T0)
    unlock(env, run_id="manual__a")

    assert hold(env, "manual__rollback")["run_id"] == "manual__rollback"
    assert line(env) == ["manual__b"]


def test_the_board_shows_who_waits_for_the_lock(queued_environment, redis_client):
    env = queued_environment
    hold(env, "manual__a")
    look(env, "manual__b", now=T0)
    look(env, "manual__c", now=T0 + timedelta(seconds=1))

    state = lock_state(env)

    assert state.holder["run_id"] == "manual__a"
    assert [(run["run_id"], run["purpose"], run["since"]) for run in state.queue] == [
        ("manual__b", "release manual__b", "2026-12-02T09:00:00+00:00"),
        ("manual__c", "release manual__c", "2026-12-02T09:00:01+00:00"),
    ]
    assert json.loads(redis_client.get(f"airlock:lock:{env.name}"))["run_id"] == "manual__a"


def test_a_waiter_that_stopped_looking_is_dropped_even_while_its_run_looks_alive(queued_environment):
    """Its run may belong to another installation that keeps beating, or be stuck elsewhere:
    a waiter silent for several poll intervals must not hold the line for ever."""
    env = queued_environment
    hold(env, "manual__a")
    look(env, "manual__silent", now=T0)
    look(env, "manual__c", now=T0 + timedelta(seconds=1))
    unlock(env, run_id="manual__a")

    assert look(env, "manual__c", now=T0 + timedelta(seconds=30)) is None  # still within its looks
    taken = look(env, "manual__c", now=T0 + timedelta(minutes=10))

    assert taken["run_id"] == "manual__c"
    assert line(env) == []


def test_only_the_first_in_line_breaks_a_dead_holders_lock(queued_environment, slack_messages):
    env = queued_environment
    hold(env, "manual__a")
    look(env, "manual__b", now=T0)
    dead_a = alive(manual__a="failed")

    assert look(env, "manual__c", now=T0 + timedelta(seconds=1), run_state=dead_a) is None
    assert holder(env) == "manual__a"  # c is not first: it leaves the dead lock to b
    assert look(env, "manual__b", now=T0 + timedelta(seconds=2), run_state=dead_a)["run_id"] == "manual__b"
    assert any("ended failed" in text for text in slack_messages.texts())
