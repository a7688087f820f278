"""Steps and tasks every environment DAG shares (release, rollback, migrate, unlock, restore).

The lock: taken by a setup task, held (renewed) by every step that changes things, kept renewed in
the background while a long step works (:func:`keep_lock`), released by a teardown, broken (with
an audit row and a Slack message) when its holder is dead or by hand. The audit row of a run that
stopped before the step that writes its own (:func:`audit_unconcluded_run`). The per-host
preflight. Who triggered the run, and the run's task states.

Each ``*_task`` builder must be called inside a ``with DAG(...)`` block; it returns the task (or
mapped task) wired to that DAG.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import PokeReturnValue, TaskGroup, get_current_context, setup, task, teardown
from airflow.sdk.exceptions import AirflowFailException
from redis.exceptions import RedisError

from airlock.config import Environment, Wave
from airlock.core import outcome
from airlock.core.audit import audited_action, unconcluded_outcome
from airlock.core.evidence import approval_refusal
from airlock.core.freeze import FrozenError, freeze_override, inside_any, required_approvers
from airlock.hooks.hosts import inspect_host
from airlock.hooks.lock import (
    EnvironmentLock,
    InstallationPresence,
    LockHeldError,
    LockHolder,
    LockKeeper,
    LockLostError,
    LockQueue,
    LockUnavailableError,
    QueuedRun,
    installation_id,
    stale_reason,
)
from airlock.hooks.ops_store import AuditRecord, write_audit_record, write_audit_record_if_missing
from airlock.hooks.ssh import HostKeyError
from airlock.notifications.slack import post, render
from airlock.operators.approval import APPROVAL_TIMED_OUT

log = logging.getLogger(__name__)


class TaskIds:
    """The ids of the shared tasks, in every DAG that uses them."""

    LOCK = "lock"
    UNLOCK = "unlock"
    CHECK_HOST = "check_host"
    #: A queued release's wait for the lock (``rollout.on_lock_busy: wait``), before ``lock``.
    WAIT_FOR_LOCK = "wait_for_lock"
    #: The approval gate's id in every DAG that has one.
    APPROVE = "approve"
    #: The maintenance-window check of a maintenance DAG whose environment has windows.
    WINDOW = "in_maintenance_window"


#: Per audited action (``migrate``, ``restore``...), the steps that change something: a run with
#: no failure whose change steps all succeeded, yet wrote no row, is recorded as succeeded.
#: Filled by each DAG's tasks module (:func:`register_change_steps`).
_CHANGE_STEPS: dict[str, tuple[str, ...]] = {}


def register_change_steps(action: str, task_ids: Sequence[str]) -> None:
    """Declare the steps of ``action``'s DAG that change something (see :func:`audit_unconcluded_run`)."""
    _CHANGE_STEPS[action] = tuple(task_ids)


def mapped(task_id: str, map_index: int) -> str:
    """The key of one mapped task instance in :func:`run_task_states`."""
    return f"{task_id}_{map_index}"


def triggering_user(context: Any) -> str:
    """Who triggered the run (see :data:`airlock.core.outcome.UNKNOWN_USER` for a run without one)."""
    return outcome.triggering_user(context["dag_run"])


def require_run_approval(
    environment: Environment,
    context: Any,
    *,
    step: str,
    plan_digest: str,
    instead: str,
    override: Mapping[str, Any] | None = None,
) -> None:
    """Before ``step`` changes anything: this run's approval (the ``approve`` task's XCom) by an
    assigned approver, given in this run since its last clear, of the plan with ``plan_digest``;
    else a refusal saying why and ``instead``. A plan that overrides a freeze (``override``) needs
    a freeze approver's; environments without an approval gate need none otherwise."""
    approvers = required_approvers(environment, override)
    if approvers is None:
        return
    dag_run = context["dag_run"]
    refused = approval_refusal(
        context["ti"].xcom_pull(task_ids="approve"),
        step=step,
        plan_digest=plan_digest,
        run_id=dag_run.run_id,
        clear_number=getattr(dag_run, "clear_number", None) or 0,
        approvers=approvers,
        triggered_by=triggering_user(context),
        allow_self_approval=environment.approval.allow_self_approval,
        instead=instead,
    )
    if refused:
        raise AirflowFailException(refused)


def run_task_states(context: Any) -> dict[str, str]:
    """Task id (:func:`mapped` for mapped ones) -> state, for this run."""
    ti = context["ti"]
    return ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})


def approval_timeout(context: Any) -> str | None:
    """The approval's timeout when nobody answered within it (what the gate recorded), else None."""
    return context["ti"].xcom_pull(task_ids=TaskIds.APPROVE, key=APPROVAL_TIMED_OUT)


def environment_lock(environment: Environment) -> EnvironmentLock:
    return EnvironmentLock(
        environment=environment.name, redis_conn_id=environment.redis_conn_id, ttl=environment.lock_ttl
    )


def _http_status(error: Exception) -> int | None:
    """The execution API's HTTP status behind a Task SDK error: ``AirflowRuntimeError`` in a
    worker (the supervisor forwards it), ``ServerResponseError`` in-process (``dag.test()``)."""
    response = getattr(error, "response", None)
    if response is not None:
        return response.status_code
    detail = getattr(getattr(error, "error", None), "detail", None)
    return detail.get("status_code") if isinstance(detail, dict) else None


def dag_run_state(context: Any) -> Callable[[str, str], str | None]:
    """This installation's state of a DAG run, asked through the Task SDK; None for a run it
    does not know. Any other failure to ask propagates: a lock is never broken on a guess."""
    ti = context["ti"]

    def state_of(dag_id: str, run_id: str) -> str | None:
        try:
            state = ti.get_dagrun_state(dag_id=dag_id, run_id=run_id)
        except Exception as error:
            if _http_status(error) == 404:
                return None
            raise
        return str(getattr(state, "value", state))  # the Task SDK answers with an enum

    return state_of


def lock(
    environment: Environment,
    *,
    dag_id: str,
    run_id: str,
    purpose: str,
    triggered_by: str,
    run_state: Callable[[str, str], str | None],
    version: str = "",
    reason: str | None = None,
    queued: QueuedRun | None = None,
) -> dict[str, Any] | None:
    """Take the environment's lock for this run; a dead holder's lock is broken and said so.

    A run that cannot take it (held by a live run, or Redis unreachable: fail closed) fails fast
    and leaves an audit row saying why. A ``queued`` run (:func:`wait_for_lock`) gets None instead
    while a live run holds the lock or runs queued before it are still in line.

    :param version: what the run is about (its ``version`` param, ...), for its audit row.
    :param reason: the run's reason, for its audit row.
    """
    try:
        acquired = environment_lock(environment).acquire(
            dag_id=dag_id,
            run_id=run_id,
            purpose=purpose,
            triggered_by=triggered_by,
            installation=installation_id(),
            run_state=run_state,
            queued=queued,
        )
    except (LockHeldError, LockUnavailableError) as error:
        if queued is not None and isinstance(error, LockHeldError):
            return None
        record_refused_run(
            environment,
            dag_id=dag_id,
            run_id=run_id,
            version=version or purpose,
            triggered_by=triggered_by,
            reason=reason,
            why=str(error),
        )
        raise AirflowFailException(str(error)) from None  # waiting is the holder's business: fail fast
    holder = acquired.holder
    if acquired.broke is not None:
        record_broken_lock(
            environment,
            stale=acquired.broke,
            why=f"stale lock: {acquired.broke_because}",
            dag_id=dag_id,
            run_id=run_id,
            who=triggered_by,
            message=render(
                "lock_broken",
                environment=environment.name,
                holder=acquired.broke.describe(),
                why=acquired.broke_because,
                taker=f"{purpose} (run {run_id})",
            ),
        )
    log.info("Locked environment %s for %s", environment.name, holder.describe())
    return {"run_id": holder.run_id, "since": holder.since}


def record_broken_lock(
    environment: Environment, *, stale: LockHolder, why: str, dag_id: str, run_id: str, who: str, message: str
) -> None:
    """Say that a lock was broken: the log, Slack, and an audit row (``action = 'break_lock'``)."""
    log.warning("Broke the lock of %s held by %s: %s", environment.name, stale.describe(), why)
    post(environment.slack_conn_id, message)
    write_audit_record(
        environment,
        AuditRecord(
            dag_id=dag_id,
            run_id=run_id,
            action="break_lock",
            version=stale.purpose,
            previous={"run_id": stale.run_id, "dag_id": stale.dag_id, "installation": stale.installation},
            triggered_by=who,
            approved_by=None,
            reason=why,
            started_at=None,
            result="broken",
            detail=stale.describe(),
        ),
    )


def record_refused_run(
    environment: Environment,
    *,
    dag_id: str,
    run_id: str,
    version: str,
    triggered_by: str,
    reason: str | None,
    why: str,
) -> None:
    """The audit row of a run that could not take the lock (nothing was changed)."""
    action = audited_action(dag_id, environment.name)
    if action is None:
        return
    write_audit_record(
        environment,
        AuditRecord(
            dag_id=dag_id,
            run_id=run_id,
            action=action,
            version=version,
            previous={},
            triggered_by=triggered_by,
            approved_by=None,
            reason=reason or None,
            started_at=None,
            result="failed",
            detail=f"not started: {why}",
        ),
    )


def hold_lock(environment: Environment, run_id: str) -> None:
    """Renew this run's lock before a step changes things; a run that lost it stops here.

    Redis unreachable: the run cannot prove it holds the lock, so it stops too (fail closed).
    """
    try:
        LockKeeper(environment_lock(environment), run_id).renew()
    except (LockLostError, LockUnavailableError) as error:
        raise AirflowFailException(str(error)) from None


@contextmanager
def keep_lock(environment: Environment, run_id: str) -> Iterator[Callable[[], None]]:
    """Hold this run's lock for a long step: renewed now, then every third of ``lock_ttl`` in the
    background while the block runs.

    Yields ``check``: call it before each change; it confirms with Redis that this run still holds
    the lock and raises ``AirflowFailException`` when it does not (lost, broken, or Redis
    unreachable), so the step stops before that change.
    """
    try:
        keeper = LockKeeper(environment_lock(environment), run_id)
        keeper.__enter__()
    except (LockLostError, LockUnavailableError) as error:
        raise AirflowFailException(str(error)) from None

    def check() -> None:
        try:
            keeper.check()
        except LockLostError as error:
            raise AirflowFailException(str(error)) from None

    try:
        yield check
    finally:
        keeper.__exit__(None, None, None)


def unlock(environment: Environment, *, run_id: str) -> None:
    if environment_lock(environment).release_for_run(run_id):
        log.info("Released the lock of %s", environment.name)
    else:
        log.info("Run %s did not hold the lock of %s; nothing to release", run_id, environment.name)


def audit_unconcluded_run(
    environment: Environment,
    *,
    dag_id: str,
    run_id: str,
    task_states: Mapping[str, str],
    params: Mapping[str, Any],
    triggered_by: str,
    approval: Mapping[str, Any] | None,
    approval_timeout: str | None = None,
    started_at: Any = None,
) -> bool:
    """The audit row of a run that stopped before the step writing its own (e.g. a checksum or host
    key mismatch before the plan, a rejection), from its task states; a run that wrote its row
    keeps it untouched. Returns whether a row was written."""
    action = audited_action(dag_id, environment.name)
    if action is None:
        return False
    ended = unconcluded_outcome(
        {task: state for task, state in task_states.items() if task != TaskIds.UNLOCK},
        approve_task_id=TaskIds.APPROVE,
        change_task_ids=_CHANGE_STEPS.get(action, ()),
        approval_timeout=approval_timeout,
    )
    version = params.get("version") or params.get("to_version") or params.get("backup") or ""
    written = write_audit_record_if_missing(
        environment,
        AuditRecord(
            dag_id=dag_id,
            run_id=run_id,
            action=action,
            version=str(version),
            previous={},
            triggered_by=triggered_by,
            approved_by=outcome.approver(approval),
            reason=params.get("reason") or None,
            started_at=started_at,
            result=ended.result,
            detail=ended.detail,
        ),
    )
    if written:
        log.info("Audit row of run %s: %s (%s)", run_id, ended.result, ended.detail)
    return written


def require_host_ready(environment: Environment, host_name: str) -> dict[str, Any]:
    """Preflight of one host: reachable with its key verified; its free disk and releases."""
    try:
        state = inspect_host(environment, environment.host(host_name))
    except HostKeyError as error:
        raise AirflowFailException(str(error)) from None  # never transient: retrying only delays
    log.info("Host %s runs %s with %d MB free", host_name, state.current_version, state.free_disk_mb)
    return state.to_dict()


def frozen_check(environment: Environment, params: Mapping[str, Any], what: str) -> dict[str, Any] | None:
    """Refuse (no retry) a run starting during one of the environment's freezes, unless it asks
    for a ``freeze_override`` the environment allows; returns that override (None: not frozen).
    A dry run changes nothing, so a freeze never refuses one (its log says the freeze is open)."""
    if params.get("dry_run"):
        try:
            freeze_override(environment, moment=datetime.now(UTC), override_reason=None, what=what)
        except FrozenError as error:
            log.warning("A dry run goes ahead during a freeze; applying it would be refused now: %s", error)
        return None
    try:
        override = freeze_override(
            environment, moment=datetime.now(UTC), override_reason=params.get("freeze_override"), what=what
        )
    except FrozenError as error:
        raise AirflowFailException(str(error)) from None
    if override:
        log.warning("%s starts during freeze %s: %s", what, override["name"], override["override_reason"])
    return override


def lock_task(
    environment: Environment,
    purpose: str,
    *,
    refuse: Callable[[Environment], None] | None = None,
    freezable: bool = False,
):
    """The setup task taking the environment's lock; a competing run fails fast naming this one.

    ``purpose`` is templated, e.g. ``"release {{ params.version }}"``. ``refuse``, if given, runs
    once the lock is held (so nothing can change what it checks meanwhile) and raises to stop the
    run; the lock is then freed (the teardown of a failed setup never runs) and the run's audit
    row says why. A ``freezable`` run is refused the same way during one of the environment's
    freezes (:func:`frozen_check`).
    """

    @setup
    @task(task_id=TaskIds.LOCK, retries=3)
    def take_lock(purpose: str):
        context = get_current_context()
        params = context["params"]
        version = str(params.get("version") or params.get("to_version") or params.get("backup") or "")
        taken = lock(
            environment,
            dag_id=context["dag"].dag_id,
            run_id=context["run_id"],
            purpose=purpose,
            triggered_by=triggering_user(context),
            run_state=dag_run_state(context),
            version=version,
            reason=params.get("reason"),
        )
        try:
            if freezable:
                frozen_check(environment, params, purpose[:1].upper() + purpose[1:])
            if refuse is not None:
                refuse(environment)
        except Exception as refusal:
            # A setup task that fails never gets its teardown run: free the lock and write the
            # run's audit row here, or the lock would stay held until its TTL.
            unlock(environment, run_id=context["run_id"])
            record_refused_run(
                environment,
                dag_id=context["dag"].dag_id,
                run_id=context["run_id"],
                version=version,
                triggered_by=triggering_user(context),
                reason=params.get("reason"),
                why=str(refusal),
            )
            raise
        return taken

    return take_lock(purpose)


def wait_for_lock(
    environment: Environment,
    *,
    dag_id: str,
    run_id: str,
    purpose: str,
    triggered_by: str,
    run_state: Callable[[str, str], str | None],
    version: str = "",
    reason: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any] | None:
    """One look of a queued release at the environment's lock (``rollout.on_lock_busy: wait``).

    The run takes its place in line (or keeps the one it has), drops runs ahead of it that died
    in line, and takes the lock if it is free (or its holder is dead) and the run is first in
    line: then it returns what :func:`lock` returns. Otherwise it logs who holds the lock and who
    is ahead, and returns None (the sensor looks again after ``rollout.lock_poll_interval``).
    After ``rollout.lock_wait_timeout`` in line it leaves the line and fails, with an audit row;
    nothing was changed. The wait counts toward nothing else: the lock's TTL and the approval's
    clock start once the lock is taken.
    """
    rollout = environment.rollout
    now = now or datetime.now(UTC)
    environment_lock_ = environment_lock(environment)
    queue = LockQueue(environment_lock_)
    me = QueuedRun(
        installation=installation_id(),
        dag_id=dag_id,
        run_id=run_id,
        purpose=purpose,
        triggered_by=triggered_by,
    )
    try:
        joined = queue.join(me, now=now)
        presence = InstallationPresence(environment_lock_.client).last
        # A waiter that stopped looking (its sensor gone, its run stopped where this installation
        # cannot ask) is dead too; generous, as a busy scheduler may look late.
        silent_after = 5 * rollout.lock_poll_interval + timedelta(minutes=2)

        def dead(run: QueuedRun, since: datetime) -> str | None:
            if run == me:
                return None
            last = queue.last_look(run)
            if last is not None and now - last > silent_after:
                return f"it has not looked at the lock since {last.isoformat(timespec='seconds')}"
            return stale_reason(
                run.as_holder(since),
                installation=me.installation,
                run_state=run_state,
                presence=presence,
                now=now,
            )

        for dropped, why in queue.prune(dead):
            log.warning(
                "Dropped %s from the line for the lock of %s: %s", dropped.describe(), environment.name, why
            )
    except RedisError as error:
        raise AirflowFailException(
            f"Cannot queue for the lock of {environment.name}: Redis ({environment.redis_conn_id}) did "
            f"not answer ({error}). Nothing was changed; see the troubleshooting runbook, 'Redis is down'."
        ) from None
    taken = lock(
        environment,
        dag_id=dag_id,
        run_id=run_id,
        purpose=purpose,
        triggered_by=triggered_by,
        run_state=run_state,
        version=version,
        reason=reason,
        queued=me,
    )
    waited = now - joined
    if taken is not None:
        log.info("Took the lock of %s after waiting %s in line", environment.name, _seconds(waited))
        return taken
    holder = environment_lock_.holder()
    ahead = queue.ahead_of(me)
    held = f"held by {holder.describe()}" if holder else "free, but runs queued earlier go first"
    line = "; ".join(run.describe() for run in ahead) or "nobody"
    if waited >= rollout.lock_wait_timeout:
        queue.leave(me)
        why = (
            f"Gave up waiting for the lock of {environment.name} after {_seconds(waited)} in line "
            f"(rollout.lock_wait_timeout is {_seconds(rollout.lock_wait_timeout)}): it is {held}; "
            f"ahead of this run: {line}. Nothing was changed: trigger the release again once that "
            "run has finished, or stop it."
        )
        record_refused_run(
            environment,
            dag_id=dag_id,
            run_id=run_id,
            version=version or purpose,
            triggered_by=triggered_by,
            reason=reason,
            why=why,
        )
        raise AirflowFailException(why)
    gives_up = (joined + rollout.lock_wait_timeout).isoformat(timespec="seconds")
    log.info(
        "Waiting for the lock of %s (rollout.on_lock_busy: wait), in line for %s, place %d: it is %s; "
        "ahead of this run: %s. Gives up at %s; looks again in %s, holding no worker slot meanwhile.",
        environment.name,
        _seconds(waited),
        len(ahead) + 1,
        held,
        line,
        gives_up,
        _seconds(rollout.lock_poll_interval),
    )
    return None


def _seconds(duration: timedelta) -> str:
    return str(timedelta(seconds=round(duration.total_seconds())))


def wait_for_lock_task(environment: Environment, purpose: str):
    """The sensor a queued release waits in before ``lock`` (``rollout.on_lock_busy: wait``).

    Reschedule mode: between looks it holds no worker slot. ``purpose`` is templated as for
    :func:`lock_task`. Its own deadline (``rollout.lock_wait_timeout``, from when the run joined
    the line) says why it gave up; the sensor's timeout is only a backstop behind it.
    """
    rollout = environment.rollout
    backstop = rollout.lock_wait_timeout + 3 * rollout.lock_poll_interval + timedelta(minutes=1)

    @task.sensor(
        task_id=TaskIds.WAIT_FOR_LOCK,
        mode="reschedule",
        poke_interval=rollout.lock_poll_interval.total_seconds(),
        timeout=backstop.total_seconds(),
        retries=3,
    )
    def queue_for_lock(purpose: str):
        context = get_current_context()
        params = context["params"]
        taken = wait_for_lock(
            environment,
            dag_id=context["dag"].dag_id,
            run_id=context["run_id"],
            purpose=purpose,
            triggered_by=triggering_user(context),
            run_state=dag_run_state(context),
            version=str(params.get("version") or ""),
            reason=params.get("reason"),
        )
        return PokeReturnValue(is_done=taken is not None, xcom_value=taken)

    return queue_for_lock(purpose)


def in_maintenance_window(environment: Environment, run_type: str) -> bool:
    """Whether a run of a maintenance DAG does its work now: any run triggered by hand (a person
    chose the time), a scheduled one only inside one of ``maintenance_windows`` (if any)."""
    if run_type != "scheduled" or inside_any(environment.maintenance_windows, datetime.now(UTC)):
        return True
    windows = "; ".join(f"{w.cron} for {w.duration} ({w.timezone})" for w in environment.maintenance_windows)
    log.info(
        "Outside the maintenance windows of %s (%s): this scheduled run does nothing. Trigger the "
        "DAG by hand to run it now.",
        environment.name,
        windows,
    )
    return False


def maintenance_window_task(environment: Environment):
    """The first task of a maintenance DAG whose environment has ``maintenance_windows``: a
    scheduled run outside them skips every other task (None when there are no windows)."""
    if not environment.maintenance_windows:
        return None

    @task.short_circuit(task_id=TaskIds.WINDOW, retries=0)
    def in_window():
        """Scheduled runs work only inside the environment's maintenance windows."""
        return in_maintenance_window(environment, str(get_current_context()["dag_run"].run_type))

    return in_window()


def lock_in_turn(environment: Environment, after: Any, *, purpose: str, **options: Any):
    """The ``lock`` task, after ``after``: with ``rollout.on_lock_busy: wait`` the run first queues
    for a held lock (:func:`wait_for_lock_task`) instead of failing at once. ``options`` are
    :func:`lock_task`'s."""
    taken = lock_task(environment, purpose=purpose, **options)
    if environment.rollout.on_lock_busy == "wait":
        after >> wait_for_lock_task(environment, purpose) >> taken
    else:
        after >> taken
    return taken


def in_waves(environment: Environment, after: Any, wave_steps: Callable[[Wave], tuple[Any, Any]]) -> list:
    """The rollout's waves, one task group each, one after another once ``after`` is done.

    ``wave_steps(wave)`` builds a wave's tasks inside its group and returns its first and last
    (a change and its smoke tests). Returns every wave's first and last task, for the rollback
    that runs once they are all done.
    """
    previous, wave_tasks = after, []
    for wave in environment.waves:
        tooltip = f"Wave {wave.number}: {', '.join(wave.host_names)}"
        with TaskGroup(group_id=wave.group_id, tooltip=tooltip):
            first, last = wave_steps(wave)
        previous >> first
        previous = last
        wave_tasks += [first, last]
    return wave_tasks


def unlock_task(environment: Environment):
    """The teardown that frees the environment's lock, whatever happened (only this run's lock),
    then writes the run's audit row if no step did (:func:`audit_unconcluded_run`)."""

    @teardown
    @task(task_id=TaskIds.UNLOCK, retries=3)
    def release_lock():
        context = get_current_context()
        unlock(environment, run_id=context["run_id"])
        dag_run = context["dag_run"]
        audit_unconcluded_run(
            environment,
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            task_states=run_task_states(context),
            params=context["params"],
            triggered_by=triggering_user(context),
            approval=context["ti"].xcom_pull(task_ids=TaskIds.APPROVE),
            approval_timeout=approval_timeout(context),
            started_at=dag_run.start_date,
        )

    return release_lock()


def check_hosts_task(environment: Environment):
    """One mapped task per host: reachable with its key verified, free disk, current release."""

    @task(task_id=TaskIds.CHECK_HOST, retries=3, map_index_template="{{ host_name }}")
    def check_host(host_name: str):
        get_current_context()["host_name"] = host_name
        return require_host_ready(environment, host_name)

    return check_host.expand(host_name=[host.name for host in environment.hosts])
