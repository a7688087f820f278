"""The steps of ``release_<env>``, one function per task; ``dags/release.py`` wires them.

Each step takes the environment and what it needs from earlier steps (XCom values, all plain
JSON), does one thing, and returns plain JSON. Each is safe to run again after a crash. What a
step needs from the run itself (its id, who triggered it, its task states) the step reads from
the context; the decisions on those states (what to roll back, how the run ended) are
``airlock.core.outcome``'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airlock.config import Environment, Wave
from airlock.core.backups import BackupError
from airlock.core.evidence import approval_refusal, host_drift
from airlock.core.freeze import describe_override, required_approvers
from airlock.core.outcome import (
    ALREADY_THERE,
    HOST_FAILED,
    HOST_STATES,
    NOT_SWITCHED,
    ROLLBACK_INCOMPLETE,
    SWITCHED,
    HostDeploy,
    HostRollback,
    ReleaseRun,
    RollbackReport,
    approver,
    approver_name,
    deploy_table,
    describe_failed,
    nothing_to_roll_back,
    release_outcome,
    rollback_waves,
)
from airlock.core.release import (
    InvalidReleaseRequest,
    ReleasePlan,
    build_plan,
    describe_backups,
    evidence_markdown,
    migration_checksum,
    plan_digest,
    preflight_checks,
    validate_committed_at,
    validate_request,
)
from airlock.hooks.artifacts import Artifact, ArtifactChangedError, pinned, release_artifact
from airlock.hooks.hosts import (
    HostNotServingError,
    LiveReleaseError,
    ReleaseMarkerError,
    deploy_to_host,
    host_session,  # noqa: F401  (a release step's way to a host's layout, used by the tests)
    prune_host,
    roll_back_host,
)
from airlock.hooks.lock import AttentionMark, SwitchedHosts
from airlock.hooks.ops_store import AuditRecord, write_audit_record
from airlock.hooks.postgres import first_row
from airlock.notifications.slack import post, render, summarize_error
from airlock.tasks import environment as shared
from airlock.tasks.backup import require_fresh_backup, take_backup
from airlock.tasks.environment import (
    approval_timeout,
    frozen_check,
    keep_lock,
    mapped,
    run_task_states,
    triggering_user,
)
from airlock.tasks.migrate import apply_migrations, migrations_applied_by_run
from airlock.tasks.smoke import run_smoke_tests

log = logging.getLogger(__name__)


class TaskIds(shared.TaskIds):
    """The task ids of ``release_<env>``; a wave's are its TaskGroup's (``wave_<n>.deploy``)."""

    VALIDATE_REQUEST = "validate_request"
    CHECK_ARTIFACT = "check_artifact"
    CHECK_DATABASE = "check_database"
    CHECK_MIGRATIONS = "check_migrations"
    CHECK_BACKUP = "check_backup"
    PLAN = "plan"
    PROCEED = "proceed"
    APPROVE = "approve"
    BACKUP = "backup"
    MIGRATE = "migrate"
    #: In each wave's TaskGroup: the wave's deploy (mapped over its batches of hosts, one batch
    #: unless ``rollout.hosts_per_task``), then the wave's verification.
    DEPLOY = "deploy"
    VERIFY = "verify"
    ROLLBACK = "rollback"
    CONCLUDE = "conclude"

    @staticmethod
    def deploy(wave: Wave) -> str:
        return f"{wave.group_id}.{TaskIds.DEPLOY}"

    @staticmethod
    def verify(wave: Wave) -> str:
        return f"{wave.group_id}.{TaskIds.VERIFY}"


def validate(conf: Mapping[str, Any] | None, params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        request = validate_request(conf or {}, params)
    except InvalidReleaseRequest as error:
        raise AirflowFailException(f"Invalid release request: {error}") from None
    return {
        "version": request.version,
        "dry_run": request.dry_run,
        "reason": request.reason,
        "artifact_sha256": request.artifact_sha256,
        "committed_at": request.committed_at.isoformat() if request.committed_at else None,
        "freeze_override": request.freeze_override or None,
    }


def check_artifact(environment: Environment, version: str, expected_sha256: str = "") -> dict[str, Any]:
    """Preflight: the version's artifact matches its published SHA-256 and, when the trigger
    pinned one (``artifact_sha256``), that one too."""
    try:
        artifact = release_artifact(environment.deploy, version, expected_sha256=expected_sha256 or None)
    except ArtifactChangedError as error:
        raise AirflowFailException(
            f"{error}: the trigger pinned artifact_sha256 {error.expected}. Nothing was touched; publish "
            "the expected artifact, or trigger again with the SHA-256 of the one published"
        ) from None
    log.info("Artifact %s verified: SHA-256 %s, %d bytes", artifact.url, artifact.sha256, artifact.size)
    return {"url": artifact.url, "sha256": artifact.sha256, "size": artifact.size}


def require_database_reachable(environment: Environment) -> dict[str, Any]:
    """Preflight: the application database answers; its name and server version, for the plan."""
    try:
        row = first_row(
            environment.database.conn_id, "SELECT current_database(), current_setting('server_version')"
        )
    except Exception as error:
        reason = summarize_error(error)
        raise RuntimeError(
            f"Application database ({environment.database.conn_id}) is not reachable: {reason}"
        ) from error
    return {"database": row[0], "server_version": row[1]}


def require_recent_backup(environment: Environment) -> dict[str, Any] | None:
    """Preflight: the newest verified backup is younger than ``backup.max_age`` (when required)."""
    try:
        newest = require_fresh_backup(environment)
    except BackupError as error:
        raise AirflowFailException(str(error)) from None
    return newest.summary() if newest else None


def pre_release_backup(environment: Environment, *, dag_id: str, run_id: str) -> dict[str, Any]:
    """After approval, before migrations: a backup of the database as it is (not verified here).

    The lock is renewed in the background while ``pg_dump`` runs, however long it takes."""
    with keep_lock(environment, run_id):
        return take_backup(environment, kind="pre-release", dag_id=dag_id, run_id=run_id).summary()


def plan_release(
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
    """The release plan from the preflight results, and its Markdown (the approver's reading).

    A freeze open now refuses the release here too (it may have begun since the lock step),
    unless the request overrides it: the plan then carries the override, and its approval must
    come from a freeze approver."""
    override = frozen_check(environment, request, f"Release {request['version']}")
    release_plan = build_plan(
        environment=environment,
        request=validate_request({}, request),
        artifact=artifact,
        host_states=list(host_states),
        triggered_by=triggered_by,
        checks=preflight_checks(
            artifact=artifact,
            host_states=host_states,
            database=database,
            migrations=migrations,
            backup=backup,
        ),
        migrations=[
            {"file": m["file"], "sql": m["sql"], "checksum": migration_checksum(m)} for m in migrations
        ],
        backup=describe_backups(environment, backup),
        freeze_override=override,
    )
    digest = plan_digest(release_plan)
    markdown = f"{release_plan.to_markdown()}\n\n{evidence_markdown(release_plan, digest)}"
    log.info("Release plan (digest %s):\n%s", digest, markdown)
    return {
        "plan": release_plan.to_dict(),
        "markdown": markdown,
        "digest": digest,
        "freeze_override": override,
    }


def require_approval(
    environment: Environment,
    *,
    step: str,
    planned: Mapping[str, Any] | None,
    approval: Mapping[str, Any] | None,
    run_id: str,
    clear_number: int,
    triggered_by: str,
) -> ReleasePlan:
    """Before ``step`` changes anything: this run's approved plan, or a refusal saying why not and
    what to do. Environments without an approval gate need no approval evidence."""
    if planned is None:
        raise AirflowFailException(f"{step} refused: this run has no plan. Trigger a new release.")
    release_plan = ReleasePlan.from_dict(planned["plan"])
    approvers = required_approvers(environment, release_plan.freeze_override)
    if approvers is None:
        return release_plan
    refused = approval_refusal(
        approval,
        step=step,
        plan_digest=plan_digest(release_plan),
        run_id=run_id,
        clear_number=clear_number,
        approvers=approvers,
        triggered_by=triggered_by,
        allow_self_approval=environment.approval.allow_self_approval,
    )
    if refused:
        raise AirflowFailException(refused)
    return release_plan


def drift_check(release_plan: ReleasePlan, host_name: str) -> Callable[[str | None], None]:
    """The check that the host still runs what the approved plan saw (or this run's version),
    given the release its ``current`` points to: else the deploy is refused before any change."""
    [planned] = [p for wave in release_plan.waves for p in wave if p.host == host_name]

    def check(current: str | None) -> None:
        drift = host_drift(
            host_name,
            planned_current=planned.current_version,
            new_version=planned.new_version,
            current=current,
        )
        if drift:
            raise AirflowFailException(drift)

    return check


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
                link=f"see the {TaskIds.PLAN} task's XCom",
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


@dataclass(frozen=True)
class FailFast:
    """What one host's deploy knows of this run's other deploys (fail-fast).

    :param failed_hosts: the hosts of this run whose deploy failed for good, read afresh on each
        call (this run's task states).
    :param record_switch: records, durably and before ``current`` changes, that this run is about
        to switch the host (what the rollback reads to know which hosts it may have changed).
    """

    failed_hosts: Callable[[], list[str]]
    record_switch: Callable[[], None]

    def refuse_if_another_failed(self, host_name: str) -> None:
        failed = [host for host in self.failed_hosts() if host != host_name]
        if failed:
            raise AirflowSkipException(
                f"Not switching {host_name}: the deploy of {', '.join(failed)} failed in this run, and "
                "once a host has failed no further host is switched (fail-fast); its current release "
                "is unchanged"
            )

    def before_switch(self, host_name: str) -> None:
        self.refuse_if_another_failed(host_name)
        self.record_switch()


def deploy_host(
    environment: Environment,
    *,
    version: str,
    host_name: str,
    wave_hosts: list[str],
    run_id: str,
    approved: ReleasePlan | None = None,
    fail_fast: FailFast | None = None,
    lock_check: Callable[[], None] | None = None,
    artifact: Artifact | None = None,
) -> dict[str, Any]:
    """Install ``version`` on one host of a wave, switch it and wait until it serves it.

    ``approved``: the run's approved plan. The host must still run what it saw, and only the
    artifact whose SHA-256 it shows is installed; either refusal comes before any change.
    With ``fail_fast`` (every deploy has it), a deploy refuses (skipped, nothing switched)
    when another host of this run failed: at its start, and again right before the switch.
    ``lock_check``: the check of a lock the caller keeps (:func:`deploy_hosts` keeps one for all
    its hosts); without it the deploy keeps the run's lock itself. ``artifact``: the verified
    artifact the caller fetched for all its hosts (the approved one); without it the deploy
    fetches it.
    """
    if host_name not in wave_hosts:
        raise AirflowFailException(f"host {host_name} is not part of this wave ({', '.join(wave_hosts)})")
    if fail_fast is not None:
        fail_fast.refuse_if_another_failed(host_name)
    with ExitStack() as stack:
        still_held = lock_check or stack.enter_context(keep_lock(environment, run_id))
        if artifact is None:
            untouched = f"{host_name} was not touched"
            artifact = approved_artifact(environment, version, approved, untouched=untouched)

        def before_switch() -> None:
            still_held()  # a run that lost its lock switches nothing
            if fail_fast is not None:
                fail_fast.before_switch(host_name)

        try:
            release = deploy_to_host(
                environment,
                environment.host(host_name),
                version,
                artifact,
                before_switch=before_switch,
                check_current=drift_check(approved, host_name) if approved is not None else None,
            )
        except (HostNotServingError, LiveReleaseError, ReleaseMarkerError) as error:
            # The health wait already gave the host its whole health_timeout, and a live release
            # without a marker or an unreadable marker needs a person: retrying would only delay
            # the rollback. Connection and upload errors are retried as usual.
            raise AirflowFailException(str(error)) from None
    log.info(
        "Host %s: %s -> %s (%s)",
        host_name,
        release.previous_version,
        version,
        "switched" if release.changed else "already there",
    )
    return release.to_dict()


def approved_artifact(
    environment: Environment, version: str, approved: ReleasePlan | None, *, untouched: str
) -> Artifact:
    """The verified artifact of ``version``: with ``approved``, only the one its plan shows."""
    try:
        return release_artifact(
            environment.deploy, version, expected_sha256=approved.artifact_sha256 if approved else None
        )
    except ArtifactChangedError as error:
        raise AirflowFailException(error.since_approval(untouched)) from None


def deploy_hosts(
    environment: Environment,
    *,
    version: str,
    hosts: list[str],
    wave_hosts: list[str],
    run_id: str,
    approved: ReleasePlan | None = None,
    others_failed: Callable[[], list[str]] = list,
    record_switch: Callable[[str], None] = lambda host: None,
) -> list[HostDeploy]:
    """Deploy ``hosts`` (a wave, or one batch of it) together: each host over its own SSH
    connection, at most ``rollout.max_parallel_per_wave`` at once, under one kept lock.

    Fail-fast: once a host fails (or ``others_failed`` names one, another batch's), no host not
    yet switched is; those already switching finish. Every host's line is returned, a failure's
    included, so the caller can report them all before it fails. The artifact is fetched and
    verified once for all of them, under the lock; if that fails (an artifact republished since
    the plan, an unreadable store) every host's line is a failure saying why, none touched.
    """
    failed: list[str] = []
    guard = threading.Lock()

    def failed_hosts() -> list[str]:
        with guard:
            mine = list(failed)
        return sorted({*mine, *others_failed()})

    def deploy_one(host_name: str, still_held: Callable[[], None]) -> HostDeploy:
        started = time.monotonic()
        fail_fast = FailFast(failed_hosts=failed_hosts, record_switch=lambda: record_switch(host_name))
        try:
            release = deploy_host(
                environment,
                version=version,
                host_name=host_name,
                wave_hosts=wave_hosts,
                run_id=run_id,
                approved=approved,
                fail_fast=fail_fast,
                lock_check=still_held,
                artifact=artifact,
            )
        except AirflowSkipException as skipped:
            return HostDeploy(host_name, NOT_SWITCHED, seconds=time.monotonic() - started, why=str(skipped))
        except Exception as error:
            with guard:
                failed.append(host_name)
            log.warning("Deploy of %s failed", host_name, exc_info=True)
            return HostDeploy(
                host_name,
                HOST_FAILED,
                seconds=time.monotonic() - started,
                why=summarize_error(error),
                retry=not isinstance(error, AirflowFailException),
            )
        return HostDeploy(
            host_name,
            SWITCHED if release["changed"] else ALREADY_THERE,
            before=release["previous_version"],
            after=version,
            seconds=time.monotonic() - started,
        )

    with keep_lock(environment, run_id) as still_held, ExitStack() as stack:
        try:
            artifact = approved_artifact(environment, version, approved, untouched="No host was touched")
            # Its own path for the wave: another task's cache eviction cannot remove it mid-upload.
            artifact = stack.enter_context(pinned(artifact))
        except Exception as error:
            # Each host's line says why, so the report, the audit row and Slack name the artifact.
            log.warning("Deploy of %s refused before any host", version, exc_info=True)
            retry = not isinstance(error, AirflowFailException)
            return [HostDeploy(host, HOST_FAILED, why=summarize_error(error), retry=retry) for host in hosts]
        workers = max(1, min(environment.rollout.max_parallel_per_wave, len(hosts)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deploy") as pool:
            return list(pool.map(lambda host: deploy_one(host, still_held), hosts))


def switched_hosts(environment: Environment, run_id: str) -> SwitchedHosts:
    """The hosts this run is about to switch or switched (recorded before each switch)."""
    return SwitchedHosts(environment=environment.name, redis_conn_id=environment.redis_conn_id, run_id=run_id)


def attention_mark(environment: Environment) -> AttentionMark:
    return AttentionMark(environment=environment.name, redis_conn_id=environment.redis_conn_id)


def refuse_while_attention_needed(environment: Environment) -> None:
    """A release refuses to start while the environment is marked as needing attention."""
    attention = attention_mark(environment).get()
    if attention is not None:
        raise AirflowFailException(
            f"Release refused: {environment.name} needs attention. {attention.resolve}. "
            f'See docs/runbooks/rollback.md, "Rollback incomplete". Why: {attention.describe()}'
        )


def verify(environment: Environment, *, wave_hosts: list[str]) -> list[dict[str, Any]]:
    if not wave_hosts:
        raise AirflowFailException("this wave has no host: a wave must never deploy to nobody")
    results = run_smoke_tests(environment, [environment.host(name) for name in wave_hosts])
    for result in results:
        log.info("Smoke test %s on %s passed: %s", result.test, result.target, result.detail)
    return [result.__dict__ for result in results]


def release_run(
    environment: Environment,
    task_states: Mapping[str, str],
    *,
    approval_timeout: str | None = None,
    reports: Mapping[str, list[Mapping[str, Any]]] | None = None,
) -> ReleaseRun:
    """What this run's steps did, from its task states: each wave's verification, each host's
    deploy, the approval (and ``approval_timeout`` when nobody answered it), the rollback, and the
    failed steps named for a reader (``wave_1.deploy (web-1)``).

    A host's deploy state is its deploy task's, or, where ``reports`` holds that task's deploy
    report (task key -> :class:`HostDeploy` dicts), what the report says of the host."""
    deploys: dict[str, str | None] = {}
    names: dict[str, str] = {}
    why: dict[str, str] = {}
    for wave in environment.waves:
        for index, batch in enumerate(wave.batches(environment.rollout.hosts_per_task)):
            key = mapped(TaskIds.deploy(wave), index)
            state = task_states.get(key)
            lines = {line.host: line for line in map(HostDeploy.from_dict, (reports or {}).get(key) or [])}
            for host in batch:
                line = lines.get(host)
                deploys[host] = HOST_STATES[line.result] if line else state
                if line and line.result == HOST_FAILED and line.why:
                    why[host] = line.why
            failed_here = [host for host in batch if deploys[host] == "failed"] or batch
            names[key] = f"{TaskIds.deploy(wave)} ({', '.join(failed_here)})"
    return ReleaseRun(
        verifications=[task_states.get(TaskIds.verify(wave)) for wave in environment.waves],
        deploys=deploys,
        approval=task_states.get(TaskIds.APPROVE),
        failed=describe_failed(task_states, names),
        rollback=task_states.get(TaskIds.ROLLBACK),
        approval_timeout=approval_timeout,
        why=why,
    )


def deploy_reports(environment: Environment, context: Any) -> dict[str, list[dict[str, Any]]]:
    """Each deploy task's report that this run holds, by task key (see :func:`release_run`)."""
    ti, reports = context["ti"], {}
    for wave in environment.waves:
        for index, _ in enumerate(wave.batches(environment.rollout.hosts_per_task)):
            report = ti.xcom_pull(task_ids=TaskIds.deploy(wave), key=DEPLOY_REPORT, map_indexes=index)
            if report:
                reports[mapped(TaskIds.deploy(wave), index)] = report
    return reports


def resolve_instructions(environment: Environment, targets: Mapping[str, str | None]) -> str:
    """How an operator clears the needs-attention mark, named for this environment."""
    versions = sorted({v for v in targets.values() if v})
    to_version = versions[0] if len(versions) == 1 else "<the release every host should run>"
    return (
        f"To resolve: make the hosts reachable, then trigger rollback_{environment.name} with "
        f"to_version={to_version}; once it succeeds (every host healthy on it) the mark is cleared "
        "and releases may start again"
    )


def roll_back_switched_hosts(
    environment: Environment,
    *,
    planned: Mapping[str, Any] | None,
    run: ReleaseRun,
    run_id: str,
    switched: set[str] | None = None,
) -> dict[str, Any]:
    """Roll every host this run switched back to its previous release; skip when nothing failed.

    The hosts go back in the rollout's waves, last wave first, each wave's hosts together (at
    most ``rollout.max_parallel_per_wave`` at once). ``switched`` names the hosts this run
    recorded before switching them; with the hosts whose deploy succeeded they are the ones put
    back. A host whose deploy ran but never reached its switch is left alone. Every host's
    result is collected, a failure to put one back included (a :class:`RollbackReport`).

    Code only: migrations stay applied; the conclusion names the pre-release backup for the data.
    """
    why_not = nothing_to_roll_back(run, planned=planned is not None)
    if why_not:
        raise AirflowSkipException(why_not)
    assert planned is not None
    release_plan = ReleasePlan.from_dict(planned["plan"])
    previous = release_plan.previous_versions()
    succeeded = {host for host, state in run.deploys.items() if state == "success"}
    to_roll_back = (switched or set()) | succeeded
    results: dict[str, HostRollback] = {
        host: HostRollback(host, previous.get(host), True, "never switched by this run; left alone")
        for host in run.attempted_hosts()
        if host not in to_roll_back
    }

    def roll_back_to_previous(host_name: str) -> HostRollback:
        target = previous.get(host_name)
        if target is None:
            return HostRollback(host_name, None, True, "had no previous release; left as is")
        try:
            changed = roll_back_host(environment, environment.host(host_name), target)
        except Exception as error:
            log.exception("Could not roll %s back to %s", host_name, target)
            return HostRollback(
                host_name, target, False, f"not put back on {target}: {summarize_error(error)}"
            )
        return HostRollback(
            host_name, target, True, f"back on {target}" if changed else f"was still on {target}"
        )

    waves = [[host.name for host in wave.hosts] for wave in environment.waves]
    # Renewed in the background; a run that lost its lock stops before its next wave, and the
    # step's failure makes the outcome rollback_incomplete (conclude names the hosts).
    with keep_lock(environment, run_id) as still_held:
        for wave in rollback_waves(waves, to_roll_back):
            still_held()
            log.info("Rolling back %s", ", ".join(wave))
            workers = min(environment.rollout.max_parallel_per_wave, len(wave))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(roll_back_to_previous, wave):
                    results[result.host] = result
    ordered = [results[host] for wave in waves for host in wave if host in results]
    report = RollbackReport(failed=run.failed, version=release_plan.version, hosts=ordered)
    for result in report.hosts:
        log.info("Rollback of %s: %s", result.host, result.note)
    return report.to_dict()


#: The Slack message of each way a release can end badly (they all show the outcome's detail).
SLACK_TEMPLATES = {
    "failed": "release_failed",
    "rolled_back": "release_rolled_back",
    ROLLBACK_INCOMPLETE: "release_rollback_incomplete",
}

#: The XCom key of a deploy task's report (a :class:`HostDeploy` dict per host), however it ended.
DEPLOY_REPORT = "hosts"

#: The XCom key under which a ``rollback`` that could not finish leaves its report.
ROLLBACK_REPORT = "rollback_report"


def conclude_release(
    environment: Environment,
    *,
    dag_id: str,
    run_id: str,
    params: Mapping[str, Any],
    planned: Mapping[str, Any] | None,
    approval: Mapping[str, Any] | None,
    rollback: Mapping[str, Any] | None,
    run: ReleaseRun,
    started_at: datetime | None,
    triggered_by: str,
    backup: Mapping[str, Any] | None = None,
    migrations_applied: list[str] | None = None,
) -> dict[str, Any]:
    """Prune and celebrate, or record why not; the run ends failed unless the release went out.

    ``backup`` is the pre-release backup's summary, named in the record of a failed release:
    restoring it is the way back for the data; ``migrations_applied`` the migrations this run
    applied (they stay applied). The audit row's detail and the Slack message say the same
    thing. A rollback that could not put every host back (``rollback_incomplete``) marks the
    environment as needing attention: no release starts until ``rollback_<env>`` succeeds.
    """
    release_plan = ReleasePlan.from_dict(planned["plan"]) if planned else None
    version = release_plan.version if release_plan else str(params.get("version"))
    outcome = release_outcome(
        run,
        planned=release_plan is not None,
        dry_run=release_plan is not None and release_plan.dry_run,
        rollback=rollback,
        backup=backup["name"] if backup else None,
        migrations_applied=migrations_applied,
    )
    if release_plan is not None and release_plan.freeze_override:
        approved_by = approver(approval) or "nobody"
        note = f"{describe_override(release_plan.freeze_override)}; approved by {approved_by}."
        outcome = replace(outcome, detail=f"{outcome.detail or ''} {note}".strip())
    resolve = ""
    if outcome.result == ROLLBACK_INCOMPLETE:
        assert release_plan is not None
        resolve = resolve_instructions(environment, release_plan.previous_versions())
        attention_mark(environment).set(
            dag_id=dag_id, run_id=run_id, what=f"release {version}: {outcome.detail}", resolve=resolve
        )

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
                approved_by=approver(approval),
                approved_by_name=approver_name(approval),
                reason=release_plan.reason,
                started_at=started_at,
                result=outcome.result,
                detail=outcome.detail,
                committed_at=validate_committed_at(params.get("committed_at")),
            ),
        )

    if outcome.result == "succeeded":
        assert release_plan is not None
        previous = {v for v in release_plan.previous_versions().values() if v}
        workers = min(environment.rollout.max_parallel_per_wave, len(environment.hosts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prune") as pool:
            prunes = pool.map(
                lambda host: prune_host(environment, host, protect=previous | {version}), environment.hosts
            )
            for host, pruned in zip(environment.hosts, prunes, strict=True):
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
    elif release_plan is not None and outcome.result in SLACK_TEMPLATES:
        post(
            environment.slack_conn_id,
            render(
                SLACK_TEMPLATES[outcome.result],
                environment=environment.name,
                version=version,
                detail=outcome.detail,
                resolve=resolve,
            ),
        )
    if not outcome.ended_well:
        raise AirflowFailException(
            f"Release {version} to {environment.name}: {outcome.result} ({outcome.detail})"
        )
    return {"result": outcome.result, "version": version, "backup": backup["name"] if backup else None}


# -- task bodies: what they need from the run comes from its context ---------------------------------


def validate_run_request() -> dict[str, Any]:
    """The ``validate_request`` task: this run's conf and params."""
    context = get_current_context()
    return validate(context["dag_run"].conf, context["params"])


def plan(
    environment: Environment,
    *,
    request: Mapping[str, Any],
    artifact: Mapping[str, Any],
    host_states: list[Mapping[str, Any]],
    database: Mapping[str, Any],
    migrations: list[Mapping[str, str]],
    backup: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``plan`` task: :func:`plan_release`, requested by whoever triggered this run."""
    return plan_release(
        environment,
        request=request,
        artifact=artifact,
        host_states=list(host_states),
        database=database,
        migrations=migrations,
        backup=backup,
        triggered_by=triggering_user(get_current_context()),
    )


def approved_plan(environment: Environment, context: Any, step: str) -> ReleasePlan:
    """This run's plan, once :func:`require_approval` has found this run's approval of it."""
    ti, dag_run = context["ti"], context["dag_run"]
    return require_approval(
        environment,
        step=step,
        planned=ti.xcom_pull(task_ids=TaskIds.PLAN),
        approval=ti.xcom_pull(task_ids=TaskIds.APPROVE),
        run_id=dag_run.run_id,
        clear_number=getattr(dag_run, "clear_number", None) or 0,
        triggered_by=triggering_user(context),
    )


def backup(environment: Environment) -> dict[str, Any]:
    """The ``backup`` task: the pre-release backup of this run, once its approval is checked."""
    context = get_current_context()
    approved_plan(environment, context, TaskIds.BACKUP)
    dag_run = context["dag_run"]
    return pre_release_backup(environment, dag_id=dag_run.dag_id, run_id=dag_run.run_id)


def migrate(environment: Environment, request: Mapping[str, Any]) -> list[str]:
    """The ``migrate`` task: the approved plan's migrations, from its artifact, under this run's lock."""
    context = get_current_context()
    release_plan = approved_plan(environment, context, TaskIds.MIGRATE)
    return apply_migrations(
        environment,
        version=request["version"],
        run_id=context["run_id"],
        expected_sha256=release_plan.artifact_sha256,
    )


def deploy(
    environment: Environment, *, hosts: list[str], request: Mapping[str, Any], wave_hosts: list[str]
) -> list[dict[str, Any]]:
    """A wave's ``deploy`` task: its hosts together (its map index shows their names).

    The report (each host's before, after, result, time and why) is logged as a table and kept
    in XCom (key ``hosts``) however the task ends. A host that failed fails the task: retried
    when every failure may be cured by a retry (which touches only the hosts not yet on the
    version), failed for good at once otherwise. A batch stopped by another batch's failure
    before switching any host is skipped."""
    context = get_current_context()
    context["hosts_label"] = ", ".join(hosts)
    ti, run_id = context["ti"], context["run_id"]
    release_plan = approved_plan(environment, context, f"{TaskIds.DEPLOY} of {', '.join(hosts)}")
    switched = switched_hosts(environment, run_id)
    siblings = len(hosts) < len(wave_hosts)  # the wave is deployed in batches, by several tasks

    def others_failed() -> list[str]:
        """Another batch's failed hosts (this run's task states): read only when there are batches."""
        return release_run(environment, run_task_states(context)).failed_hosts() if siblings else []

    lines = deploy_hosts(
        environment,
        version=request["version"],
        hosts=hosts,
        wave_hosts=wave_hosts,
        run_id=run_id,
        approved=release_plan,
        others_failed=others_failed,
        record_switch=switched.add,
    )
    report = [line.to_dict() for line in lines]
    ti.xcom_push(key=DEPLOY_REPORT, value=report)
    log.info("Deploy of %s to %s:\n%s", request["version"], ", ".join(hosts), deploy_table(lines))
    failed = [line for line in lines if line.result == HOST_FAILED]
    if failed:
        summary = "; ".join(f"{line.host}: {line.why}" for line in failed)
        if all(line.retry for line in failed):
            raise RuntimeError(
                f"Deploy failed on {summary} (a retry touches only the hosts not on the version)"
            )
        raise AirflowFailException(f"Deploy failed on {summary}")
    if any(line.result == NOT_SWITCHED for line in lines):
        raise AirflowSkipException(
            "; ".join(f"{line.host}: {line.why}" for line in lines if line.result == NOT_SWITCHED)
        )
    return report


def rollback(environment: Environment) -> dict[str, Any]:
    """The ``rollback`` task: this run's plan, task states and switch record.

    A rollback that could not put every host back marks the environment as needing attention,
    leaves its report for ``conclude`` and fails (a retry tries every host again).
    """
    context = get_current_context()
    ti, run_id = context["ti"], context["run_id"]
    planned = ti.xcom_pull(task_ids=TaskIds.PLAN)
    report = roll_back_switched_hosts(
        environment,
        planned=planned,
        run=release_run(environment, run_task_states(context), reports=deploy_reports(environment, context)),
        run_id=run_id,
        switched=switched_hosts(environment, run_id).hosts(),
    )
    rolled_back = RollbackReport.from_dict(report)
    mark = attention_mark(environment)
    if rolled_back.incomplete:
        ti.xcom_push(key=ROLLBACK_REPORT, value=report)
        release_plan = ReleasePlan.from_dict(planned["plan"])
        mark.set(
            dag_id=ti.dag_id,
            run_id=run_id,
            what=f"release {rolled_back.version}: rollback incomplete: {rolled_back.still_on_new_build()}",
            resolve=resolve_instructions(environment, release_plan.previous_versions()),
        )
        raise RuntimeError(f"Rollback incomplete: {rolled_back.still_on_new_build()}")
    mark.clear_if_set_by(run_id)  # an earlier try could not finish; this one did
    return report


def applied_by_this_run(
    environment: Environment, planned: Mapping[str, Any] | None, run_id: str
) -> list[str]:
    """The migrations this run applied, from the database's history (none when it planned none)."""
    if not planned or not ReleasePlan.from_dict(planned["plan"]).migrations:
        return []
    try:
        return migrations_applied_by_run(environment, run_id)
    except Exception:
        log.exception("Could not read which migrations run %s applied", run_id)
        return ["(unknown: the migration history could not be read, see the conclude log)"]


def conclude(environment: Environment) -> dict[str, Any]:
    """The ``conclude`` task, from what the run's tasks returned."""
    context = get_current_context()
    ti, dag_run = context["ti"], context["dag_run"]
    planned = ti.xcom_pull(task_ids=TaskIds.PLAN)
    run = release_run(
        environment,
        run_task_states(context),
        approval_timeout=approval_timeout(context),
        reports=deploy_reports(environment, context),
    )
    rolled_back = ti.xcom_pull(task_ids=TaskIds.ROLLBACK) or ti.xcom_pull(
        task_ids=TaskIds.ROLLBACK, key=ROLLBACK_REPORT
    )
    went_out = planned is not None and run.every_wave_verified
    return conclude_release(
        environment,
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        params=context["params"],
        planned=planned,
        approval=ti.xcom_pull(task_ids=TaskIds.APPROVE),
        rollback=rolled_back,
        backup=ti.xcom_pull(task_ids=TaskIds.BACKUP),
        run=run,
        started_at=dag_run.start_date,
        triggered_by=triggering_user(context),
        migrations_applied=None if went_out else applied_by_this_run(environment, planned, dag_run.run_id),
    )
