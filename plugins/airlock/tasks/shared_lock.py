"""The shared mode of the environment lock, as the steps use it: backups and maintenance hold it,
migrations wait for them.

A ``pg_dump`` holds ACCESS SHARE on every table for as long as it runs, and VACUUM, ANALYZE and
REINDEX CONCURRENTLY hold SHARE UPDATE EXCLUSIVE on the table they work on; a migration's
``ALTER TABLE`` behind either fails on ``lock_timeout``. So each such step holds the shared mode
(:func:`hold_shared`) and :func:`apply_migrations <airlock.tasks.migrate.apply_migrations>` first
closes the gate and waits, bounded by ``migrations.maintenance_wait`` and logged by name, until
none is left (:func:`migration_gate`). The rule and why it is this one: docs/architecture.md,
"Backups, maintenance and migrations".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from airflow.sdk.exceptions import AirflowFailException

from airlock.config import Environment
from airlock.hooks.lock import (
    LockLostError,
    MaintenanceRunningError,
    MigrationGate,
    SharedHold,
    SharedLock,
)
from airlock.tasks.environment import environment_lock


def shared_lock(environment: Environment) -> SharedLock:
    return SharedLock(environment=environment.name, redis_conn_id=environment.redis_conn_id)


@contextmanager
def hold_shared(environment: Environment, *, dag_id: str, run_id: str, purpose: str) -> Iterator[SharedHold]:
    """Hold the shared mode while a backup or maintenance step works on the database.

    Waits (at most ``migrations.maintenance_wait``) while a migration runs; Redis unreachable
    stops the step before it touches the database (fail closed). Yields the hold: call its
    ``check()`` before each change of a step that makes several.
    """
    hold = SharedHold(
        shared_lock(environment),
        dag_id=dag_id,
        run_id=run_id,
        purpose=purpose,
        wait=environment.migrations.maintenance_wait,
    )
    with hold:
        yield hold


@contextmanager
def migration_gate(
    environment: Environment, run_id: str, check: Callable[[], None]
) -> Iterator[Callable[[], None]]:
    """Close the gate for ``run_id``'s migrations and wait until no backup or maintenance step holds
    the database; the run must hold the environment lock (``check`` confirms it while waiting).

    Yields the check to call before each migration: the environment lock is still held and the
    gate still closed. Holders still there after ``migrations.maintenance_wait``: the step fails,
    naming them, and nothing is migrated.
    """
    holder = environment_lock(environment).holder()
    if holder is None or holder.run_id != run_id:
        raise AirflowFailException(f"Run {run_id} does not hold the lock of {environment.name}: no migration")
    gate = MigrationGate(
        shared_lock(environment), holder, wait=environment.migrations.maintenance_wait, check=check
    )
    try:
        gate.__enter__()
    except MaintenanceRunningError as error:
        raise AirflowFailException(str(error)) from None

    def before_each() -> None:
        check()
        try:
            gate.still_closed()
        except LockLostError as error:
            raise AirflowFailException(str(error)) from None

    try:
        yield before_each
    finally:
        gate.__exit__(None, None, None)
