"""The environment lock against real Redis: dead holders' locks are broken, live holders' never.

The holder's liveness comes from Airflow (for a run of this installation, a callable standing for
the Task SDK's ``get_dagrun_state``, which the DAG tests and the end-to-end tests exercise for
real) or from the other installation's sign of life in Redis.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from airlock.hooks.lock import EnvironmentLock, InstallationPresence, LockHeldError
from tests.support import wait_until

HERE = "installation-here"
THERE = "installation-there"


@pytest.fixture
def lock(redis_client):
    environment = "locktest"
    redis_client.delete(f"airlock:lock:{environment}")
    yield EnvironmentLock(environment=environment, redis_conn_id="airlock_redis", ttl=timedelta(minutes=10))
    redis_client.delete(f"airlock:lock:{environment}", *redis_client.keys("airlock:installation:*"))


def states(**by_run: str):
    """This installation's run states, as Airflow would answer them (unknown run: None)."""
    return lambda dag_id, run_id: by_run.get(run_id)


def take(lock: EnvironmentLock, run_id: str, *, installation: str = HERE, run_state=None):
    return lock.acquire(
        dag_id="release_locktest",
        run_id=run_id,
        purpose=f"release of {run_id}",
        triggered_by="alice",
        installation=installation,
        run_state=run_state or states(),
    )


def stored(redis_client, lock: EnvironmentLock) -> dict:
    return json.loads(redis_client.get(lock.key))


@pytest.mark.parametrize(
    ("state", "why"),
    [
        pytest.param("failed", "ended failed", id="ended-failed"),
        pytest.param("success", "ended success", id="ended-success"),
        pytest.param(None, "unknown to this Airflow installation", id="unknown-run"),
    ],
)
def test_a_lock_held_by_a_dead_run_of_this_installation_is_broken_and_taken(lock, redis_client, state, why):
    take(lock, "manual__old")

    acquired = take(lock, "manual__new", run_state=lambda dag_id, run_id: state)

    assert acquired.broke.run_id == "manual__old"
    assert why in acquired.broke_because
    assert stored(redis_client, lock)["run_id"] == "manual__new"


@pytest.mark.parametrize("state", ["running", "queued"])
def test_a_lock_held_by_a_live_run_of_this_installation_stays(lock, redis_client, state):
    take(lock, "manual__waiting")  # e.g. waiting for approval for hours, or across a restart

    with pytest.raises(LockHeldError, match=r"locked by release of manual__waiting .* still alive"):
        take(lock, "manual__new", run_state=states(manual__waiting=state))

    assert stored(redis_client, lock)["run_id"] == "manual__waiting"


def test_a_lock_of_another_installation_that_keeps_beating_stays(lock, redis_client):
    presence = InstallationPresence(redis_client)
    take(lock, "manual__theirs", installation=THERE)
    presence.beat(THERE, now=datetime.now(UTC) - timedelta(seconds=30))

    with pytest.raises(LockHeldError, match="manual__theirs"):
        take(lock, "manual__mine")

    assert stored(redis_client, lock)["run_id"] == "manual__theirs"


@pytest.mark.parametrize(
    ("beat", "why"),
    [
        pytest.param({"now": datetime.now(UTC) - timedelta(minutes=5)}, "silent since", id="silent"),
        pytest.param({"stopped": True}, "stopped at", id="stopped"),
        pytest.param(None, "no sign of life", id="never-seen"),
    ],
)
def test_a_lock_of_another_installation_that_stopped_or_went_silent_is_broken(lock, redis_client, beat, why):
    take(lock, "manual__gone", installation=THERE)
    if beat is not None:
        InstallationPresence(redis_client).beat(THERE, **beat)

    acquired = take(lock, "manual__mine")

    assert acquired.broke.installation == THERE
    assert why in acquired.broke_because
    assert stored(redis_client, lock)["installation"] == HERE


def test_a_lock_that_records_no_installation_is_never_broken(lock, redis_client):
    lock.acquire(run_id="manual__legacy", purpose="release 1", triggered_by="bob")

    with pytest.raises(LockHeldError, match=r"unlock_locktest"):
        take(lock, "manual__mine")

    assert stored(redis_client, lock)["run_id"] == "manual__legacy"


def test_of_two_takers_racing_for_a_stale_lock_exactly_one_wins(lock, redis_client):
    def dead_or_running(dag_id: str, run_id: str) -> str:
        return "failed" if run_id.startswith("manual__dead") else "running"

    for attempt in range(20):
        redis_client.delete(lock.key)
        take(lock, f"manual__dead-{attempt}")
        start = threading.Barrier(2)
        results: dict[str, object] = {}

        def taker(name: str, attempt=attempt, start=start, results=results) -> None:
            start.wait()
            try:
                results[name] = take(lock, f"manual__{name}-{attempt}", run_state=dead_or_running)
            except LockHeldError as error:
                results[name] = error

        threads = [threading.Thread(target=taker, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        winners = [name for name, result in results.items() if not isinstance(result, LockHeldError)]
        assert len(winners) == 1, results
        assert stored(redis_client, lock)["run_id"] == f"manual__{winners[0]}-{attempt}"


def test_breaking_by_token_leaves_a_lock_that_changed_hands_alone(lock, redis_client):
    planned = take(lock, "manual__stuck").holder
    redis_client.delete(lock.key)
    take(lock, "manual__live")  # the stuck run finished and a live one took the lock meanwhile

    assert lock.break_holder(planned.token) is None
    assert stored(redis_client, lock)["run_id"] == "manual__live"
    assert lock.break_holder(stored(redis_client, lock)["token"]).run_id == "manual__live"
    assert redis_client.get(lock.key) is None


# -- the lock held while a long step works (LockKeeper) -------------------------------------------


def test_a_kept_lock_is_renewed_in_the_background_while_the_step_works(lock, redis_client):
    from airlock.hooks.lock import LockKeeper

    take(lock, "manual__long")
    with LockKeeper(lock, "manual__long", interval=timedelta(milliseconds=50)) as keeper:
        redis_client.pexpire(lock.key, 2000)  # as if most of lock_ttl had gone by in a long pg_dump
        renewed = keeper.renewals
        wait_until(lambda: keeper.renewals > renewed)

        assert redis_client.pttl(lock.key) > 2000  # renewed back to the whole TTL (10 minutes)
        keeper.check()  # still held: the step may make its next change
    assert stored(redis_client, lock)["run_id"] == "manual__long"


def test_a_step_that_lost_its_lock_stops_before_its_next_change(lock, redis_client):
    from airlock.hooks.lock import LockKeeper, LockLostError

    take(lock, "manual__slow")
    changes = []

    def switch(keeper: LockKeeper, host: str) -> None:
        keeper.check()
        changes.append(f"host {host} switched")

    with LockKeeper(lock, "manual__slow", interval=timedelta(milliseconds=50)) as keeper:
        switch(keeper, "web-1")
        redis_client.delete(lock.key)  # it expired (or was broken by unlock_<env>) ...
        take(lock, "manual__other")  # ... and another run took it
        with pytest.raises(LockLostError, match=r"no longer holds the lock .* by release of manual__other"):
            switch(keeper, "web-2")
        wait_until(lambda: keeper.lost is not None)  # the background renewal found it lost too

    assert changes == ["host web-1 switched"]
    assert stored(redis_client, lock)["run_id"] == "manual__other"  # the other run's lock is untouched


def test_the_keeper_ends_with_the_step(lock, redis_client):
    from airlock.hooks.lock import LockKeeper

    take(lock, "manual__short")
    with LockKeeper(lock, "manual__short", interval=timedelta(milliseconds=20)) as keeper:
        keeper.check()

    assert keeper.renewals >= 2  # entering, and the check

    assert not [t for t in threading.enumerate() if t.name.startswith("airlock-lock-keeper-locktest")]


# -- the lock task: two triggers at once, and the audit row of the one that could not start ------


def test_of_two_runs_triggered_together_exactly_one_takes_the_lock_and_the_other_is_audited(
    environment, postgres_url, redis_client, ops_url
):
    from airflow.sdk.exceptions import AirflowFailException

    from airlock.tasks.environment import lock as take_lock
    from tests.integration.releases import audit_rows

    redis_client.delete(f"airlock:lock:{environment.name}")
    start = threading.Barrier(2)
    results: dict[str, object] = {}

    def trigger(run_id: str) -> None:
        start.wait()
        try:
            results[run_id] = take_lock(
                environment,
                dag_id=f"release_{environment.name}",
                run_id=run_id,
                purpose=f"release 2.0.0 ({run_id})",
                triggered_by="alice",
                run_state=lambda dag_id, run_id: "running",
                version="2.0.0",
                reason="two CI jobs at once",
            )
        except AirflowFailException as error:
            results[run_id] = error

    runs = [f"manual__race-{side}-{threading.get_ident()}" for side in ("a", "b")]
    threads = [threading.Thread(target=trigger, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    try:
        winners = [run for run in runs if not isinstance(results[run], AirflowFailException)]
        assert len(winners) == 1, results
        [loser] = [run for run in runs if run not in winners]
        assert f"locked by release 2.0.0 ({winners[0]})" in str(results[loser])
        assert json.loads(redis_client.get(f"airlock:lock:{environment.name}"))["run_id"] == winners[0]
        assert audit_rows(ops_url, winners[0], "result") == []  # its own steps will write it
        [(action, version, result, detail, reason)] = audit_rows(
            ops_url, loser, "action", "version", "result", "detail", "reason"
        )
        assert (action, version, result, reason) == ("release", "2.0.0", "failed", "two CI jobs at once")
        assert detail.startswith(f"not started: Environment {environment.name} is locked by release 2.0.0")
    finally:
        redis_client.delete(f"airlock:lock:{environment.name}")
