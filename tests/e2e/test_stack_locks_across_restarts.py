"""The environment lock on the running stack: never outliving its run, never taken from a live one.

A restart keeps a release that waits for approval (and its lock); a hard stop mid-deploy
resolves after the restart and frees the lock; a lock left by an installation that is gone (a
demo in another clone, stopped) is broken at once, and one of an installation that is alive is
kept. The lock values of other installations are written to Redis exactly as their schedulers
and runs write them.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime

import psycopg
import pytest
import redis

from airlock.hooks.lock import InstallationPresence
from tests.e2e.conftest import E2E_REDIS_DB
from tests.e2e.rest import Rest, answer, approve_the_moment_it_is_listed, finished, listed_request, served

LOCK = "airlock:lock:demo"


@pytest.fixture
def keys():
    client = redis.Redis(host="127.0.0.1", port=6379, db=E2E_REDIS_DB, decode_responses=True)
    yield client
    client.close()


def other_version(stack) -> str:
    return "1.1.0" if served(stack)[0] == "2.0.0" else "2.0.0"


def held_elsewhere(keys, installation: str, run_id: str) -> dict:
    """The lock as a release of another installation holds it."""
    value = {
        "token": secrets.token_hex(16),
        "run_id": run_id,
        "purpose": "release 2.0.0",
        "triggered_by": "admin",
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "dag_id": "release_demo",
        "installation": installation,
    }
    keys.set(LOCK, json.dumps(value), px=2 * 3600 * 1000)
    return value


def audit_rows(stack, action: str) -> list[tuple]:
    with psycopg.connect(stack.ops_url) as connection:
        return connection.execute(
            "SELECT run_id, result, reason, detail FROM airlock.releases WHERE action = %s ORDER BY id",
            (action,),
        ).fetchall()


def test_a_release_waiting_for_approval_keeps_its_lock_and_request_across_a_restart(stack, keys):
    version = other_version(stack)
    rest = Rest(stack)
    waiting = rest.trigger("release_demo", {"version": version, "reason": "survives a restart"})
    listed_request(rest, "release_demo", waiting)

    stack.restart_airflow()

    rest = Rest(stack)
    detail = listed_request(rest, "release_demo", waiting, timeout=30)
    refused = rest.trigger("release_demo", {"version": version})
    assert finished(rest, "release_demo", refused) == "failed"
    assert any(f"is locked by release {version} (run {waiting}" in t for t in stack.slack.texts())
    assert json.loads(keys.get(LOCK))["run_id"] == waiting
    answer(rest, detail)
    assert finished(rest, "release_demo", waiting) == "success"
    assert served(stack) == [version] * 3
    assert keys.get(LOCK) is None


def test_a_hard_stop_mid_deploy_resolves_after_the_restart_and_the_next_release_goes_ahead(stack, keys):
    version = other_version(stack)
    rest = Rest(stack)
    cut_off = rest.trigger("release_demo", {"version": version, "reason": "cut off"})
    approve_the_moment_it_is_listed(rest, "release_demo", cut_off)
    deadline = time.monotonic() + 180
    while rest.task_states("release_demo", cut_off).get("wave_1.deploy[0]") != "running":
        assert time.monotonic() < deadline, rest.task_states("release_demo", cut_off)
        time.sleep(0.1)

    stack.restart_airflow(kill=True)

    rest = Rest(stack)
    # Its deploy is reset by the restarted scheduler's orphan sweep (every 30 s) and rerun: within
    # minutes, not after Airflow's default 5-minute sweep and a 90-second heartbeat timeout.
    ended = finished(rest, "release_demo", cut_off, timeout=240)
    assert keys.get(LOCK) is None, f"the run ended {ended} and left its lock"
    assert len(set(served(stack))) == 1, served(stack)
    following = "1.1.0" if served(stack)[0] == "2.0.0" else "2.0.0"
    again = rest.trigger("release_demo", {"version": following, "reason": "after the hard stop"})
    approve_the_moment_it_is_listed(rest, "release_demo", again)
    assert finished(rest, "release_demo", again) == "success"
    assert served(stack) == [following] * 3


def test_a_lock_left_by_an_installation_that_is_gone_is_broken_and_the_release_goes_ahead(stack, keys):
    version = other_version(stack)
    gone = held_elsewhere(keys, "a-clone-whose-demo-stopped", "manual__2026-11-30T10:00:00+00:00")
    InstallationPresence(keys).beat("a-clone-whose-demo-stopped", stopped=True)
    stack.slack.clear()
    rest = Rest(stack)

    run_id = rest.trigger("release_demo", {"version": version, "reason": "fresh clone"})
    approve_the_moment_it_is_listed(rest, "release_demo", run_id)

    assert finished(rest, "release_demo", run_id) == "success"
    assert served(stack) == [version] * 3
    broke = [t for t in stack.slack.texts() if "broke the stale lock" in t]
    assert len(broke) == 1, broke
    assert f"run {gone['run_id']}" in broke[0]
    assert "stopped at" in broke[0]
    assert [row[:2] for row in audit_rows(stack, "break_lock")][-1] == (run_id, "broken")


def test_a_lock_of_an_installation_that_is_alive_is_kept(stack, keys):
    held = held_elsewhere(keys, "another-live-airflow", "manual__2026-12-01T09:00:00+00:00")
    InstallationPresence(keys).beat("another-live-airflow")
    rest = Rest(stack)
    try:
        run_id = rest.trigger("release_demo", {"version": other_version(stack)})
        assert finished(rest, "release_demo", run_id) == "failed"
        assert json.loads(keys.get(LOCK)) == held
        assert any(f"run {held['run_id']}" in t and "still alive" in t for t in stack.slack.texts())
    finally:
        keys.delete(LOCK)
