"""Releases, backups and restores on the Celery stack: two workers that share nothing but the
broker, the databases, the hosts and the backup store.

Which worker ran a task instance is its ``hostname`` in the REST API (each worker reports its own
loopback address); its log is fetched by the api-server from that worker's log server.
"""

from __future__ import annotations

import time

import psycopg
import pytest
import redis

from airlock.core.restore import sibling_name
from tests.e2e.conftest import E2E_REDIS_DB
from tests.e2e.rest import Rest, approve_the_moment_it_is_listed, served

LOCK = "airlock:lock:demo"


@pytest.fixture
def keys():
    client = redis.Redis(host="127.0.0.1", port=6379, db=E2E_REDIS_DB, decode_responses=True)
    yield client
    client.close()


def finished(rest: Rest, dag_id: str, run_id: str, timeout: float) -> str:
    """The run's final state. A poll the api-server leaves unanswered for 30 s (seen on this
    2-core machine shared by seven stacks, while a backup's dump and verify took the CPU) counts
    as "not finished yet"; the run's own deadline still holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = rest.run_state(dag_id, run_id)
        except TimeoutError:
            print(f"the api-server did not answer a poll of {dag_id} within 30 s")
            continue
        if state in ("success", "failed"):
            return state
        time.sleep(1)
    raise AssertionError(f"{dag_id} {run_id} did not finish within {timeout:.0f}s")


def task_instances(rest: Rest, dag_id: str, run_id: str) -> list[dict]:
    return rest.call("GET", f"{rest.run_path(dag_id, run_id)}/taskInstances", limit=100)["task_instances"]


def ran_on(rest: Rest, dag_id: str, run_id: str) -> dict[str, str]:
    """Each task instance that ran (``task_id[map_index]``) and the worker address it ran on."""
    return {
        ti["task_id"] + ("" if ti["map_index"] < 0 else f"[{ti['map_index']}]"): ti["hostname"]
        for ti in task_instances(rest, dag_id, run_id)
        if ti["hostname"]
    }


def log_text(rest: Rest, ti: dict) -> str:
    task = f"taskInstances/{ti['task_id']}/logs/{ti['try_number']}"
    path = f"{rest.run_path(ti['dag_id'], ti['dag_run_id'])}/{task}"
    content = rest.call("GET", path, map_index=ti["map_index"])["content"]
    return "\n".join(entry if isinstance(entry, str) else str(entry) for entry in content)


def audit(stack, run_id: str) -> list[tuple]:
    with psycopg.connect(stack.ops_url) as connection:
        return connection.execute(
            "SELECT action, result, version, detail FROM airlock.releases WHERE run_id = %s ORDER BY id",
            (run_id,),
        ).fetchall()


def tries(rest: Rest, dag_id: str, run_id: str) -> list[tuple]:
    """Every task instance's state, try and worker: what a failed assertion shows."""
    return [
        (ti["task_id"], ti["map_index"], ti["state"], ti["try_number"], ti["hostname"])
        for ti in task_instances(rest, dag_id, run_id)
    ]


def test_a_release_runs_on_both_workers_and_both_workers_logs_are_readable_through_the_api(celery_stack):
    stack = celery_stack
    rest = Rest(stack)
    addresses = {worker.address for worker in stack.celery_workers}

    run_id = rest.trigger("release_demo", {"version": "1.1.0", "reason": "celery e2e"})
    approve_the_moment_it_is_listed(rest, "release_demo", run_id, timeout=600)

    assert finished(rest, "release_demo", run_id, timeout=900) == "success", rest.task_states(
        "release_demo", run_id
    )
    assert served(stack) == ["1.1.0"] * 3
    hosts = ran_on(rest, "release_demo", run_id)
    assert set(hosts.values()) == addresses, hosts
    for address in addresses:
        ti = next(
            ti
            for ti in task_instances(rest, "release_demo", run_id)
            if ti["hostname"] == address and ti["state"] == "success"
        )
        text = log_text(rest, ti)
        assert f"http://{address}:{stack.ports.worker_logs}/log/" in text, text[:2000]
        assert "Could not read served logs" not in text, text[:2000]


@pytest.fixture
def kept_databases(celery_stack):
    """Drops the ``<database>_before_restore_<time>`` databases a restore keeps, afterwards."""
    yield
    from psycopg import sql

    stamp = "20000101000000"  # the restore's kept name: sibling_name(database, "_before_restore_<stamp>")
    prefix = sibling_name(celery_stack.database, f"_before_restore_{stamp}").removesuffix(stamp)
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as connection:
        names = connection.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
            (prefix,),
        ).fetchall()
        for (name,) in names:
            connection.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_backup_dumped_on_one_worker_is_restored_on_the_other_through_the_backup_store(
    celery_stack, kept_databases
):
    stack = celery_stack
    first, second = stack.celery_workers
    rest = Rest(stack)
    with psycopg.connect(stack.database_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS celery_e2e_marker (value text)")
        connection.execute("TRUNCATE celery_e2e_marker")
        connection.execute("INSERT INTO celery_e2e_marker VALUES ('before the backup')")

    stack.kill_worker(second)
    try:
        backup = rest.trigger("backup_demo", {})
        assert finished(rest, "backup_demo", backup, timeout=900) == "success"
    finally:
        stack.start_worker(second)
    dumped_on = ran_on(rest, "backup_demo", backup)
    assert set(dumped_on.values()) == {first.address}, dumped_on

    with psycopg.connect(stack.database_url, autocommit=True) as connection:
        connection.execute("UPDATE celery_e2e_marker SET value = 'after the backup'")
    stack.kill_worker(first)
    try:
        restore = rest.trigger("restore_demo", {"reason": "celery e2e: restore on the other worker"})
        approve_the_moment_it_is_listed(rest, "restore_demo", restore, timeout=600)
        assert finished(rest, "restore_demo", restore, timeout=900) == "success", rest.task_states(
            "restore_demo", restore
        )
    finally:
        stack.start_worker(first)

    restored_on = ran_on(rest, "restore_demo", restore)
    assert set(restored_on.values()) == {second.address}, restored_on
    with psycopg.connect(stack.database_url) as connection:
        rows = connection.execute("SELECT value FROM celery_e2e_marker").fetchall()
    assert rows == [("before the backup",)]


def test_a_worker_killed_mid_wave_is_survived_and_comes_back_to_work(celery_stack, keys):
    stack = celery_stack
    rest = Rest(stack)
    before = served(stack)[0]
    version = "2.0.0" if before != "2.0.0" else "1.1.0"
    run_id = rest.trigger("release_demo", {"version": version, "reason": "celery e2e: a worker dies"})
    approve_the_moment_it_is_listed(rest, "release_demo", run_id, timeout=600)
    deadline = time.monotonic() + 600
    while not (deploying := [
        ti for ti in task_instances(rest, "release_demo", run_id)
        if ti["task_id"].endswith(".deploy") and ti["state"] == "running" and ti["hostname"]
    ]):  # fmt: skip
        assert time.monotonic() < deadline, rest.task_states("release_demo", run_id)
        time.sleep(0.2)
    victim = next(worker for worker in stack.celery_workers if worker.address == deploying[0]["hostname"])
    survivor = next(worker for worker in stack.celery_workers if worker is not victim)

    stack.kill_worker(victim)

    ended = finished(rest, "release_demo", run_id, timeout=1200)
    hosts = served(stack)
    states = tries(rest, "release_demo", run_id)
    assert hosts in ([version] * 3, [before] * 3), (ended, hosts, states)
    assert (ended == "success") == (hosts == [version] * 3), states
    assert keys.get(LOCK) is None, f"the run ended {ended} and left its lock"
    outcome = [row for row in audit(stack, run_id) if row[0] == "release"]
    assert [row[1] for row in outcome] == ["succeeded" if ended == "success" else "rolled_back"], (
        outcome,
        states,
    )
    retried = next(
        ti for ti in task_instances(rest, "release_demo", run_id) if ti["task_id"] == deploying[0]["task_id"]
        and ti["map_index"] == deploying[0]["map_index"]
    )  # fmt: skip
    assert retried["try_number"] > deploying[0]["try_number"], states
    assert retried["hostname"] == survivor.address, states

    stack.start_worker(victim)
    stack.kill_worker(survivor)
    try:
        backup = rest.trigger("backup_demo", {})
        assert finished(rest, "backup_demo", backup, timeout=900) == "success"
    finally:
        stack.start_worker(survivor)
    assert set(ran_on(rest, "backup_demo", backup).values()) == {victim.address}
