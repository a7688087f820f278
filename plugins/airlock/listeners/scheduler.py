"""What Airlock runs inside the scheduler: a thread started by the ``on_starting`` listener.

Every second it resumes approvals Airflow left stranded (:mod:`stranded_approvals`); every
``PRESENCE_INTERVAL`` (15 s) it renews this installation's sign of life in the Redis of every
environment (``airlock:installation:<id>``), which other installations sharing that Redis read
before breaking a lock held by one of this installation's runs (``airlock.hooks.lock``). A clean
stop (``before_stopping``) marks the installation stopped, so its locks need not wait out the
silence timeout.

The scheduler forks (the LocalExecutor's workers, at its start and whenever one died). A fork
while this thread is inside a tick (importing a module, logging, holding a database connection)
hands the child those locks held by nobody, and the child hangs at its first use of one: the
LocalExecutor then runs fewer tasks at once, or none. So a fork waits for the tick to end, and
a tick waits for a fork to finish (``_fork_guard``, taken by ``os.register_at_fork``).

Only the scheduler's job runs it. ``on_starting`` fires while the job is still being built, so
the thread reads the job type before doing anything; other components and task processes (which
also call ``on_starting``) return at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)
TICK_SECONDS = 1.0
_stop = threading.Event()
_started = threading.Lock()
_thread: threading.Thread | None = None
_fork_guard = threading.Lock()


def _before_fork() -> None:
    _fork_guard.acquire()


def _after_fork_in_parent() -> None:
    _fork_guard.release()


def _after_fork_in_child() -> None:
    global _fork_guard
    _fork_guard = threading.Lock()  # the child has no tick thread; its copy of the lock is held


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


def _redis_clients() -> list:
    from airlock.config import load_environments
    from airlock.hooks.redis import redis_client

    connections = sorted({environment.redis_conn_id for environment in load_environments()})
    return [redis_client(conn_id) for conn_id in connections]


def announce_presence(*, stopped: bool = False) -> None:
    """One sign of life (or of a clean stop) in every environment's Redis; failures are logged."""
    from airlock.hooks.lock import InstallationPresence, installation_id

    installation = installation_id()
    for client in _redis_clients():
        try:
            InstallationPresence(client).beat(installation, stopped=stopped)
        except Exception:
            log.warning("Could not record installation %s's sign of life", installation, exc_info=True)


def _tick(presence_due: float) -> float:
    from airflow.utils.session import create_session

    from airlock.hooks.lock import PRESENCE_INTERVAL
    from airlock.listeners.stranded_approvals import resume_stranded_approvals

    try:
        with create_session() as session:
            resume_stranded_approvals(session)
    except Exception:
        log.warning("Could not look for stranded approvals", exc_info=True)
    if time.monotonic() < presence_due:
        return presence_due
    try:
        announce_presence()
    except Exception:  # e.g. a broken environment file: the next tick tries again
        log.warning("Could not record this installation's sign of life", exc_info=True)
    return time.monotonic() + PRESENCE_INTERVAL.total_seconds()


def _is_scheduler(component: object, wait: float = 30) -> bool:
    deadline = time.monotonic() + wait
    while getattr(component, "job_type", None) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return getattr(component, "job_type", None) == "SchedulerJob"


def _run(component: object) -> None:
    if not _is_scheduler(component):
        return
    with _fork_guard:
        log.info("Airlock: resuming stranded approvals and keeping up this installation's sign of life")
    presence_due = 0.0
    while not _stop.is_set():
        with _fork_guard:
            presence_due = _tick(presence_due)
        _stop.wait(TICK_SECONDS)


@hookimpl
def on_starting(component: object) -> None:
    global _thread
    from airflow.jobs.job import Job

    if not isinstance(component, Job):
        return
    with _started:
        if _thread is None:
            _thread = threading.Thread(target=_run, args=(component,), name="airlock-scheduler", daemon=True)
            _thread.start()


@hookimpl
def before_stopping(component: object) -> None:
    if getattr(component, "job_type", None) != "SchedulerJob":
        return
    _stop.set()
    announce_presence(stopped=True)
