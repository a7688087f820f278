"""Locks that outlived their runs: broken by the next run by itself, or by hand with ``unlock_<env>``.

Real Redis, sshd hosts, PostgreSQL and Slack; DAGs run with ``dag.test()``, which answers the
holder's run state through the Task SDK exactly as a worker does.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

import pytest

from airlock.hooks.lock import installation_id
from tests.integration.releases import GOOD_MIGRATION, audit_rows
from tests.support import load_dag, run_dag

#: The triggering user ``dag.test()`` records for a run.
DAG_TEST_USER = "dag_test"


def hold(redis_client, environment, **fields) -> dict:
    value = {
        "token": secrets.token_hex(16),
        "run_id": "manual__2026-11-30T10:00:00+00:00",
        "purpose": "release 9.9.9",
        "triggered_by": "alice",
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        **fields,
    }
    redis_client.set(f"airlock:lock:{environment.name}", json.dumps(value), px=3_600_000)
    return value


def audit(ops_url: str, run_id: str) -> list[tuple]:
    return audit_rows(ops_url, run_id, "action", "version", "triggered_by", "reason", "result", "detail")


@pytest.fixture
def unlock(environment, sandbox):
    return load_dag(f"unlock_{environment.name}")


def test_the_next_run_breaks_the_lock_of_a_run_this_airflow_never_heard_of(
    hosts_on_old, slack_messages, redis_client, postgres_url, ops_url
):
    environment = hosts_on_old
    stale = hold(
        redis_client, environment, dag_id=f"release_{environment.name}", installation=installation_id()
    )

    # Any run that takes the lock judges its holder: here a dry run of migrate_<env> (no gate).
    run_id, states, _ = run_dag(
        load_dag(f"migrate_{environment.name}"), {"version": GOOD_MIGRATION, "dry_run": True}
    )

    assert states["lock"] == "success", states
    assert states["unlock"] == "success", states
    [broke] = [t for t in slack_messages.texts() if "broke the stale lock" in t]
    assert f"run {stale['run_id']}" in broke
    assert "unknown to this Airflow installation" in broke
    assert audit(ops_url, run_id)[0][:3] == ("break_lock", "release 9.9.9", DAG_TEST_USER)
    assert redis_client.get(f"airlock:lock:{environment.name}") is None


def test_the_next_run_breaks_the_lock_of_a_run_of_this_airflow_that_ended(
    hosts_on_old, slack_messages, redis_client, postgres_url, ops_url
):
    environment = hosts_on_old
    migrate = load_dag(f"migrate_{environment.name}")
    ended, _, _ = run_dag(migrate, {"version": GOOD_MIGRATION, "dry_run": True})
    hold(
        redis_client,
        environment,
        run_id=ended,
        dag_id=f"migrate_{environment.name}",
        installation=installation_id(),
    )

    run_id, states, _ = run_dag(
        load_dag(f"migrate_{environment.name}"), {"version": GOOD_MIGRATION, "dry_run": True}
    )

    assert states["lock"] == "success", states
    [broke] = [t for t in slack_messages.texts() if "broke the stale lock" in t]
    assert f"run {ended} of migrate_{environment.name} ended success" in broke
    assert audit(ops_url, run_id)[0][:2] == ("break_lock", "release 9.9.9")


def test_unlock_breaks_exactly_the_lock_it_showed_after_approval(
    unlock, hosts_on_old, slack_messages, redis_client, postgres_url, ops_url
):
    environment = hosts_on_old
    held = hold(redis_client, environment)  # an older Airlock's lock: no installation to judge

    run_id, states, answered = run_dag(
        unlock, {"reason": "worker VM deleted mid-release"}, answer="Approve", as_user="admin"
    )

    assert answered["ok"] is True
    assert states["break_lock"] == "success", states
    assert redis_client.get(f"airlock:lock:{environment.name}") is None
    [(action, purpose, who, reason, result, detail)] = audit(ops_url, run_id)
    assert (action, purpose, who, reason, result) == (
        "break_lock",
        "release 9.9.9",
        DAG_TEST_USER,
        "worker VM deleted mid-release",
        "broken",
    )
    assert held["run_id"] in detail
    assert any(f"{DAG_TEST_USER} broke the lock of release 9.9.9" in t for t in slack_messages.texts())


def test_unlock_rejected_leaves_the_lock(
    unlock, hosts_on_old, slack_messages, redis_client, postgres_url, ops_url
):
    environment = hosts_on_old
    held = hold(redis_client, environment)

    run_id, states, answered = run_dag(unlock, {"reason": "not sure"}, answer="Reject", as_user="admin")

    assert answered["ok"] is True
    assert states["approve"] == "failed"
    assert json.loads(redis_client.get(f"airlock:lock:{environment.name}")) == held
    assert audit(ops_url, run_id) == []  # no break_lock row
    texts = slack_messages.texts()
    assert any(f"breaking the lock of {environment.name} was rejected by admin" in t for t in texts), texts
    assert not [t for t in texts if "broke the lock" in t]


def test_unlock_of_a_free_lock_changes_nothing(unlock, hosts_on_old, redis_client):
    _, states, _ = run_dag(unlock, {"reason": "checking"})

    assert states["plan"] == "skipped"
    assert states["break_lock"] == "skipped"
    assert redis_client.get(f"airlock:lock:{hosts_on_old.name}") is None
