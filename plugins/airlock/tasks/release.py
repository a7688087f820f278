"""The steps of ``release_<env>``, one function per task; ``dags/release.py`` wires them.

Each step takes the environment and what it needs from earlier steps (XCom values, all plain
JSON), does one thing, and returns plain JSON. Each is safe to run again after a crash.
"""

from __future__ import annotations

import dataclasses
import logging
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airlock.config import Environment
from airlock.core.release import (
    InvalidReleaseRequest,
    ReleasePlan,
    RollbackPlan,
    build_plan,
    build_rollback_plan,
    validate_request,
    validate_version,
)
from airlock.hooks.artifacts import release_artifact
from airlock.hooks.hosts import (
    HostNotServingError,
    deploy_to_host,
    inspect_host,
    prune_host,
    roll_back_host,
)
from airlock.hooks.lock import EnvironmentLock, LockHeldError, LockHolder, LockLostError, installation_id
from airlock.hooks.migrations import Migration, MigrationError, MigrationRunner, discover_migrations
from airlock.hooks.ops_store import AuditRecord, write_audit_record
from airlock.hooks.ssh import HostKeyError
from airlock.notifications.slack import post, render, summarize_error
from airlock.tasks.backup import BackupError, require_fresh_backup, take_backup
from airlock.tasks.smoke import run_smoke_tests

log = logging.getLogger(__name__)

#: Task states meaning a step was attempted (and may have changed something).
ATTEMPTED = {"success", "failed", "up_for_retry", "running", "upstream_failed_after_run"}


def triggering_user(context: Any) -> str:
    return context["dag_run"].triggering_user_name or "unknown"


def run_task_states(context: Any) -> dict[str, str]:
    """Task id (``task_id_<map_index>`` for mapped ones) -> state, for this run."""
    ti = context["ti"]
    return ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})


def environment_lock(environment: Environment) -> EnvironmentLock:
    return EnvironmentLock(
        environment=environment.name, redis_conn_id=environment.redis_conn_id, ttl=environment.lock_ttl
    )


def validate(conf: Mapping[str, Any] | None, params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        request = validate_request(conf or {}, params)
    except InvalidReleaseRequest as error:
        raise AirflowFailException(f"Invalid release request: {error}") from None
    return {"version": request.version, "dry_run": request.dry_run, "reason": request.reason}


def lock(
    environment: Environment,
    *,
    dag_id: str,
    run_id: str,
    purpose: str,
    triggered_by: str,
    run_state: Callable[[str, str], str | None],
) -> dict[str, Any]:
    """Take the environment's lock for this run; a dead holder's lock is broken and said so."""
    try:
        acquired = environment_lock(environment).acquire(
            dag_id=dag_id,
            run_id=run_id,
            purpose=purpose,
            triggered_by=triggered_by,
            installation=installation_id(),
            run_state=run_state,
        )
    except LockHeldError as error:
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


def _http_status(error: Exception) -> int | None:
    """The execution API's HTTP status behind a Task SDK error: ``AirflowRuntimeError`` in a
    worker (the supervisor forwards it), ``ServerResponseError`` in-process (``dag.test()``)."""
    response = getattr(error, "response", None)
    if response is not None:
        return response.status_code
    detail = getattr(getattr(error, "error", None), "detail", None)
    return detail.get("status_code") if isinstance(detail, dict) else None


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


def unlock(environment: Environment, *, run_id: str) -> None:
    if environment_lock(environment).release_for_run(run_id):
        log.info("Released the lock of %s", environment.name)
    else:
        log.info("Run %s did not hold the lock of %s; nothing to release", run_id, environment.name)


def check_artifact(environment: Environment, version: str) -> dict[str, Any]:
    artifact = release_artifact(environment.deploy, version)
    log.info("Artifact %s verified: SHA-256 %s, %d bytes", artifact.url, artifact.sha256, artifact.size)
    return {"url": artifact.url, "sha256": artifact.sha256, "size": artifact.size}


def check_host(environment: Environment, host_name: str) -> dict[str, Any]:
    try:
        state = inspect_host(environment, environment.host(host_name))
    except HostKeyError as error:
        raise AirflowFailException(str(error)) from None  # never transient: retrying only delays
    log.info("Host %s runs %s with %d MB free", host_name, state.current_version, state.free_disk_mb)
    return state.to_dict()


def check_database(environment: Environment) -> dict[str, Any]:
    try:
        row = PostgresHook(postgres_conn_id=environment.database.conn_id).get_first(
            "SELECT current_database(), current_setting('server_version')"
        )
    except Exception as error:
        reason = summarize_error(error)
        raise RuntimeError(
            f"Application database ({environment.database.conn_id}) is not reachable: {reason}"
        ) from error
    return {"database": row[0], "server_version": row[1]}


def check_backup(environment: Environment) -> dict[str, Any] | None:
    """Preflight: the newest verified backup is younger than ``backup.max_age`` (when required)."""
    try:
        newest = require_fresh_backup(environment)
    except BackupError as error:
        raise AirflowFailException(str(error)) from None
    return newest.summary() if newest else None


def takes_pre_release_backup(environment: Environment) -> bool:
    return environment.backup is not None and environment.backup.required_for_release


def pre_release_backup(environment: Environment, *, dag_id: str, run_id: str) -> dict[str, Any]:
    """After approval, before migrations: a backup of the database as it is (not verified here)."""
    hold_lock(environment, run_id)
    return take_backup(environment, kind="pre-release", dag_id=dag_id, run_id=run_id).summary()


def describe_backups(environment: Environment, newest: Mapping[str, Any] | None) -> str:
    """The plan's Backup section."""
    if not takes_pre_release_backup(environment):
        return "None: this environment does not take pre-release backups (backup.required_for_release)."
    return (
        f"A pre-release backup (`{environment.name}-<time>-pre-release`) is taken after approval, "
        f"before migrations and before any host is switched. Newest verified backup: "
        f"`{newest['name']}`, taken {newest['finished_at']}."
        if newest
        else "A pre-release backup is taken after approval, before migrations."
    )


def plan(
    environment: Environment,
    *,
    request: Mapping[str, Any],
    artifact: Mapping[str, Any],
    host_states: list[Mapping[str, Any]],
    database: Mapping[str, Any],
    migrations: list[Mapping[str, str]],
    backup: Mapping[str, Any] | None,
    triggered_by: str,
) -> dict[str, Any]:
    checks = [
        f"Artifact verified ({artifact['size']} bytes)",
        *(f"{s['host']}: reachable, host key verified, {s['free_disk_mb']} MB free" for s in host_states),
        f"Database {database['database']} reachable (PostgreSQL {database['server_version']})",
        f"Migrations validated against the database: {len(migrations)} pending",
    ]
    if backup:
        checks.append(f"Newest verified backup {backup['name']} is younger than backup.max_age")
    release_plan = build_plan(
        environment=environment,
        request=validate_request({}, request),
        artifact=artifact,
        host_states=list(host_states),
        triggered_by=triggered_by,
        checks=checks,
        migrations=[{"file": m["file"], "sql": m["sql"]} for m in migrations],
        backup=describe_backups(environment, backup),
    )
    markdown = release_plan.to_markdown()
    log.info("Release plan:\n%s", markdown)
    return {"plan": release_plan.to_dict(), "markdown": markdown}


def announce(environment: Environment, planned: Mapping[str, Any]) -> bool:
    """Post the start (or the dry-run plan) and tell the DAG whether to go on."""
    release_plan = ReleasePlan.from_dict(planned["plan"])
    if release_plan.dry_run:
        post(
            environment.slack_conn_id,
            render(
                "release_planned",
                environment=environment.name,
                version=release_plan.version,
                link="see the plan task's XCom",
            ),
        )
        return False
    reason = f": {release_plan.reason}" if release_plan.reason else ""
    post(
        environment.slack_conn_id,
        render(
            "release_started",
            environment=environment.name,
            version=release_plan.version,
            triggered_by=release_plan.triggered_by,
            reason=reason,
        ),
    )
    return True


def hold_lock(environment: Environment, run_id: str) -> None:
    try:
        environment_lock(environment).extend_for_run(run_id)
    except LockLostError as error:
        raise AirflowFailException(str(error)) from None


def deploy(
    environment: Environment, *, version: str, host_name: str, wave_hosts: list[str], run_id: str
) -> dict[str, Any]:
    if host_name not in wave_hosts:
        raise AirflowFailException(f"host {host_name} is not part of this wave ({', '.join(wave_hosts)})")
    hold_lock(environment, run_id)
    artifact = release_artifact(environment.deploy, version)
    try:
        release = deploy_to_host(environment, environment.host(host_name), version, artifact)
    except HostNotServingError as error:
        # The health wait already gave the host its whole health_timeout: retrying would only
        # delay the rollback. Connection and upload errors are retried as usual.
        raise AirflowFailException(str(error)) from None
    log.info(
        "Host %s: %s -> %s (%s)",
        host_name,
        release.previous_version,
        version,
        "switched" if release.changed else "already there",
    )
    return release.to_dict()


def verify(environment: Environment, *, wave_hosts: list[str]) -> list[dict[str, Any]]:
    if not wave_hosts:
        raise AirflowFailException("this wave has no host: a wave must never deploy to nobody")
    results = run_smoke_tests(environment, [environment.host(name) for name in wave_hosts])
    for result in results:
        log.info("Smoke test %s on %s passed: %s", result.test, result.target, result.detail)
    return [result.__dict__ for result in results]


def failed_steps(task_states: Mapping[str, str]) -> list[str]:
    return sorted(task for task, state in task_states.items() if state in ("failed", "up_for_retry"))


def describe_failed(task_states: Mapping[str, str], environment: Environment) -> str:
    """Name failed tasks readably: ``wave_1.deploy_2`` becomes ``wave_1.deploy (web-3)``."""
    names = []
    for task in failed_steps(task_states):
        base, _, index = task.rpartition("_")
        if base.endswith(".deploy") and index.isdigit():
            wave_number = int(base.split(".")[0].removeprefix("wave_"))
            hosts = environment.waves[wave_number - 1].hosts
            names.append(f"{base} ({hosts[int(index)].name})" if int(index) < len(hosts) else task)
        else:
            names.append(task)
    return ", ".join(names) or "an earlier step"


def roll_back(
    environment: Environment,
    *,
    planned: Mapping[str, Any] | None,
    task_states: Mapping[str, str],
    run_id: str,
    backup: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Put every host this run switched back on its previous release; skip when nothing failed.

    Code only: migrations stay applied; the message names the pre-release backup for the data.
    """
    if planned is None:
        raise AirflowSkipException("no plan: the run stopped before any host could change")
    release_plan = ReleasePlan.from_dict(planned["plan"])
    waves_verified = all(
        task_states.get(f"wave_{n}.verify") == "success" for n in range(1, len(release_plan.waves) + 1)
    )
    if waves_verified:
        raise AirflowSkipException("every wave succeeded: nothing to roll back")
    attempted = {
        environment.waves[wave_number - 1].hosts[index].name
        for wave_number in range(1, len(release_plan.waves) + 1)
        for index in range(len(environment.waves[wave_number - 1].hosts))
        if task_states.get(f"wave_{wave_number}.deploy_{index}")
        not in (None, "skipped", "upstream_failed", "removed")
    }
    if not attempted:
        raise AirflowSkipException("no host was touched by this run: nothing to roll back")
    hold_lock(environment, run_id)
    previous = release_plan.previous_versions()

    def restore(host_name: str) -> tuple[str, str]:
        target = previous[host_name]
        if target is None:
            return host_name, "had no previous release; left as is"
        changed = roll_back_host(environment, environment.host(host_name), target)
        return host_name, f"back on {target}" if changed else f"was still on {target}"

    with ThreadPoolExecutor(max_workers=min(8, len(attempted))) as pool:
        outcomes = dict(pool.map(restore, sorted(attempted)))
    failed = describe_failed(task_states, environment)
    hosts = ", ".join(f"{host} ({outcome})" for host, outcome in sorted(outcomes.items()))
    post(
        environment.slack_conn_id,
        render(
            "release_rolled_back",
            environment=environment.name,
            version=release_plan.version,
            failed=failed,
            hosts=hosts,
            detail=f"Database not rolled back; pre-release backup: {backup['name']}." if backup else "",
        ),
    )
    return {"failed": failed, "hosts": outcomes}


def conclude(
    environment: Environment,
    *,
    dag_id: str,
    run_id: str,
    params: Mapping[str, Any],
    planned: Mapping[str, Any] | None,
    approval: Mapping[str, Any] | None,
    rollback: Mapping[str, Any] | None,
    task_states: Mapping[str, str],
    started_at: datetime | None,
    triggered_by: str,
    backup: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Prune and celebrate, or record why not; the run ends failed unless the release went out.

    ``backup`` is the pre-release backup's summary, named in the record of a failed release:
    restoring it is the way back for the data.
    """
    release_plan = ReleasePlan.from_dict(planned["plan"]) if planned else None
    version = release_plan.version if release_plan else str(params.get("version"))
    responded = (approval or {}).get("responded_by_user") or {}
    approved_by = responded.get("id") if isinstance(responded, dict) else None
    waves = len(environment.waves)
    succeeded = release_plan is not None and all(
        task_states.get(f"wave_{n}.verify") == "success" for n in range(1, waves + 1)
    )

    if release_plan is not None and release_plan.dry_run:
        result, detail = "planned", "dry run: nothing changed"
    elif succeeded:
        result, detail = "succeeded", None
    elif task_states.get("approve") == "failed":
        result, detail = "rejected", "rejected or timed out at approval; nothing changed"
    elif rollback:
        result, detail = "rolled_back", f"failed at {rollback['failed']}; {rollback['hosts']}"
    else:
        result, detail = (
            "failed",
            f"failed at {describe_failed(task_states, environment)}; no host was switched",
        )
    if backup and result in ("rolled_back", "failed"):
        detail = f"{detail}; pre-release backup {backup['name']}"

    if release_plan is not None:
        write_audit_record(
            environment,
            AuditRecord(
                dag_id=dag_id,
                run_id=run_id,
                action="release",
                version=version,
                previous=release_plan.previous_versions(),
                triggered_by=triggered_by,
                approved_by=approved_by,
                reason=release_plan.reason,
                started_at=started_at,
                result=result,
                detail=detail,
            ),
        )

    if result == "succeeded":
        assert release_plan is not None
        previous = {v for v in release_plan.previous_versions().values() if v}
        for host in environment.hosts:
            pruned = prune_host(environment, host, protect=previous | {version})
            if pruned:
                log.info("Pruned %s on %s", ", ".join(pruned), host.name)
        duration = f"{(datetime.now(UTC) - started_at).total_seconds():.0f}s" if started_at else "done"
        post(
            environment.slack_conn_id,
            render(
                "release_succeeded",
                environment=environment.name,
                version=version,
                hosts=", ".join(h.name for h in environment.hosts),
                duration=duration,
            ),
        )
    elif result == "failed" and release_plan is not None:
        post(
            environment.slack_conn_id,
            render(
                "release_failed",
                environment=environment.name,
                version=version,
                failed=describe_failed(task_states, environment),
                detail=f"Pre-release backup: {backup['name']}." if backup else "",
            ),
        )
    if result not in ("succeeded", "planned"):
        raise AirflowFailException(f"Release {version} to {environment.name}: {result} ({detail})")
    return {"result": result, "version": version, "backup": backup["name"] if backup else None}


def plan_rollback(
    environment: Environment,
    *,
    conf: Mapping[str, Any] | None,
    params: Mapping[str, Any],
    host_states: list[Mapping[str, Any]],
    triggered_by: str,
) -> dict[str, Any]:
    unknown = sorted(set(conf or {}) - {"to_version", "reason"})
    to_version = params.get("to_version") or None
    try:
        if unknown:
            raise InvalidReleaseRequest(
                f"unknown parameter(s) {', '.join(unknown)}: use to_version and reason"
            )
        if to_version is not None:
            validate_version(to_version)
        rollback_plan = build_rollback_plan(
            environment=environment,
            to_version=to_version,
            host_states=list(host_states),
            triggered_by=triggered_by,
            reason=params.get("reason") or "",
        )
    except InvalidReleaseRequest as error:
        raise AirflowFailException(str(error)) from None
    markdown = rollback_plan.to_markdown()
    log.info("Rollback plan:\n%s", markdown)
    return {"plan": rollback_plan.to_dict(), "markdown": markdown}


def roll_back_one(
    environment: Environment, *, planned: Mapping[str, Any], host_name: str, run_id: str
) -> dict[str, Any]:
    hold_lock(environment, run_id)
    rollback_plan = RollbackPlan.from_dict(planned["plan"])
    [target] = [p for p in rollback_plan.hosts if p.host == host_name]
    changed = roll_back_host(environment, environment.host(host_name), target.new_version)
    return {"host": host_name, "version": target.new_version, "changed": changed}


def conclude_rollback(
    environment: Environment,
    *,
    dag_id: str,
    run_id: str,
    planned: Mapping[str, Any] | None,
    approval: Mapping[str, Any] | None,
    task_states: Mapping[str, str],
    started_at: datetime | None,
) -> dict[str, Any]:
    if planned is None:
        raise AirflowFailException(
            f"Rollback of {environment.name} stopped before planning: see the failed task"
        )
    rollback_plan = RollbackPlan.from_dict(planned["plan"])
    responded = (approval or {}).get("responded_by_user") or {}
    rolled = [task for task in task_states if task.startswith("roll_back_host")]
    succeeded = bool(rolled) and all(task_states[task] == "success" for task in rolled)
    if succeeded:
        result, detail = "succeeded", None
    elif task_states.get("approve") == "failed":
        result, detail = "rejected", "rejected or timed out at approval; nothing changed"
    else:
        result, detail = "failed", f"failed at {', '.join(failed_steps(task_states)) or 'an earlier step'}"
    write_audit_record(
        environment,
        AuditRecord(
            dag_id=dag_id,
            run_id=run_id,
            action="rollback",
            version=", ".join(sorted({p.new_version for p in rollback_plan.hosts})),
            previous={p.host: p.current_version for p in rollback_plan.hosts},
            triggered_by=rollback_plan.triggered_by,
            approved_by=responded.get("id") if isinstance(responded, dict) else None,
            reason=rollback_plan.reason,
            started_at=started_at,
            result=result,
            detail=detail,
        ),
    )
    if not succeeded:
        raise AirflowFailException(f"Rollback of {environment.name}: {result} ({detail})")
    post(
        environment.slack_conn_id,
        render(
            "rollback_succeeded",
            environment=environment.name,
            targets=rollback_plan.targets(),
            triggered_by=rollback_plan.triggered_by,
        ),
    )
    return {"result": result}


def artifact_migrations(environment: Environment, version: str, workdir: Path) -> list[Migration]:
    """The migrations shipped in ``migrations/`` of the version's artifact (fetched and verified)."""
    artifact = release_artifact(environment.deploy, version)
    with tarfile.open(artifact.path) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith("migrations/") and m.isfile()]
        archive.extractall(workdir, members=members, filter="data")
    directory = workdir / "migrations"
    return discover_migrations(directory) if directory.is_dir() else []


def migration_runner(environment: Environment) -> MigrationRunner:
    return MigrationRunner(environment.database.conn_id, environment.migrations)


def check_migrations(environment: Environment, version: str) -> list[dict[str, str]]:
    """Preflight: validate the version's migrations against the database; list the pending ones."""
    with tempfile.TemporaryDirectory(prefix="airlock-migrations-") as workdir:
        try:
            shipped = artifact_migrations(environment, version, Path(workdir))
            pending = migration_runner(environment).pending(shipped)
        except MigrationError as error:
            raise AirflowFailException(f"Migrations of {version} refused: {error}") from None
    for migration in pending:
        log.info("Pending migration %s", migration.filename)
    return [{"file": m.filename, "version": m.version_text, "sql": m.sql} for m in pending]


def migrate(environment: Environment, *, version: str, run_id: str) -> list[str]:
    """Apply the version's pending migrations in order, each in its own transaction."""
    hold_lock(environment, run_id)
    with tempfile.TemporaryDirectory(prefix="airlock-migrations-") as workdir:
        try:
            applied = migration_runner(environment).apply(
                artifact_migrations(environment, version, Path(workdir)), run_id
            )
        except MigrationError as error:
            raise AirflowFailException(str(error)) from None
    log.info("Applied migrations: %s", ", ".join(applied) or "none pending")
    return applied


# -- the ALL_DONE tasks read what the run produced from its context --------------------------------


def roll_back_run(environment: Environment, context: Any) -> dict[str, Any]:
    """``release_<env>``'s ``rollback`` task: this run's plan, task states and pre-release backup."""
    ti = context["ti"]
    return roll_back(
        environment,
        planned=ti.xcom_pull(task_ids="plan"),
        task_states=run_task_states(context),
        run_id=context["run_id"],
        backup=ti.xcom_pull(task_ids="backup"),
    )


def conclude_run(environment: Environment, context: Any) -> dict[str, Any]:
    """``release_<env>``'s ``conclude`` task, from what the run's tasks returned."""
    ti, dag_run = context["ti"], context["dag_run"]
    return conclude(
        environment,
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        params=context["params"],
        planned=ti.xcom_pull(task_ids="plan"),
        approval=ti.xcom_pull(task_ids="approve"),
        rollback=ti.xcom_pull(task_ids="rollback"),
        backup=ti.xcom_pull(task_ids="backup"),
        task_states=run_task_states(context),
        started_at=dag_run.start_date,
        triggered_by=triggering_user(context),
    )


def conclude_rollback_run(environment: Environment, context: Any) -> dict[str, Any]:
    """``rollback_<env>``'s ``conclude`` task, from what the run's tasks returned."""
    ti, dag_run = context["ti"], context["dag_run"]
    return conclude_rollback(
        environment,
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        planned=ti.xcom_pull(task_ids="plan"),
        approval=ti.xcom_pull(task_ids="approve"),
        task_states=run_task_states(context),
        started_at=dag_run.start_date,
    )


def plan_unlock(environment: Environment, *, reason: str) -> dict[str, Any]:
    """What ``unlock_<env>`` would break: the current holder, for the approver to read."""
    reason = " ".join(reason.split())
    if not reason:
        raise AirflowFailException("Give a reason: it is kept in the audit trail")
    holder = environment_lock(environment).holder()
    if holder is None:
        raise AirflowSkipException(f"The lock of {environment.name} is free; nothing to break")
    lines = [
        f"## Break the lock of {environment.name}",
        "",
        f"- Held by: {holder.describe()}",
        f"- DAG: {holder.dag_id or '(not recorded)'}",
        f"- Installation: {holder.installation or '(not recorded)'}",
        f"- Reason given: {reason}",
        "",
        "Breaking it lets the next release, rollback, migration or restore start while that run"
        " may still be changing things: make sure it is dead or stopped first.",
    ]
    return {"holder": dataclasses.asdict(holder), "reason": reason, "markdown": "\n".join(lines)}


def break_lock(
    environment: Environment, *, planned: Mapping[str, Any], dag_id: str, run_id: str, who: str
) -> str:
    """Break exactly the lock the plan showed (compare-and-delete on its token), with an audit row."""
    broken = environment_lock(environment).break_holder(planned["holder"]["token"])
    if broken is None:
        current = environment_lock(environment).holder()
        now = f"it is now held by {current.describe()}" if current else "it is free now"
        raise AirflowFailException(
            f"The lock of {environment.name} changed hands since the plan ({now}); nothing was broken"
        )
    record_broken_lock(
        environment,
        stale=broken,
        why=planned["reason"],
        dag_id=dag_id,
        run_id=run_id,
        who=who,
        message=render(
            "lock_broken_by_hand",
            environment=environment.name,
            who=who,
            holder=broken.describe(),
            why=planned["reason"],
        ),
    )
    return broken.describe()
