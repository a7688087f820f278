"""The steps of ``migrate_<env>``, one function per task; ``dags/migrate.py`` wires them.

``release_<env>`` validates (:func:`check_migrations`) and applies (:func:`apply_migrations`) a
version's migrations with the same two steps.
"""

from __future__ import annotations

import logging
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import Environment
from airlock.core.evidence import document_digest
from airlock.core.freeze import describe_override
from airlock.core.markdown import inline
from airlock.core.migrations import (
    Migration,
    MigrationError,
    discover_migrations,
    pending_migrations_markdown,
    plan_entry,
)
from airlock.core.outcome import approver, approver_name
from airlock.hooks.artifacts import ArtifactChangedError, release_artifact
from airlock.hooks.migrations import MigrationRunner
from airlock.hooks.ops_store import AuditRecord, write_audit_record
from airlock.tasks.environment import TaskIds as EnvironmentTaskIds
from airlock.tasks.environment import (
    frozen_check,
    keep_lock,
    register_change_steps,
    require_run_approval,
    triggering_user,
)
from airlock.tasks.shared_lock import migration_gate

log = logging.getLogger(__name__)


class TaskIds(EnvironmentTaskIds):
    """The task ids of ``migrate_<env>``."""

    PLAN = "plan"
    PROCEED = "proceed"
    APPROVE = "approve"
    APPLY = "apply"


register_change_steps("migrate", [TaskIds.APPLY])


def artifact_migrations(
    environment: Environment, version: str, workdir: Path, *, expected_sha256: str | None = None
) -> list[Migration]:
    """The migrations shipped in ``migrations/`` of the version's artifact (fetched and verified;
    with ``expected_sha256``, only from that artifact)."""
    artifact = release_artifact(environment.deploy, version, expected_sha256=expected_sha256)
    with tarfile.open(artifact.path) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith("migrations/") and m.isfile()]
        archive.extractall(workdir, members=members, filter="data")
    directory = workdir / "migrations"
    return discover_migrations(directory) if directory.is_dir() else []


def migration_runner(environment: Environment) -> MigrationRunner:
    return MigrationRunner(environment.database.conn_id, environment.migrations)


def check_migrations(
    environment: Environment, version: str, *, expected_sha256: str | None = None
) -> list[dict[str, str]]:
    """Preflight: validate the version's migrations against the database; list the pending ones
    (with ``expected_sha256``, of that artifact only)."""
    with tempfile.TemporaryDirectory(prefix="airlock-migrations-") as workdir:
        try:
            shipped = artifact_migrations(
                environment, version, Path(workdir), expected_sha256=expected_sha256
            )
            pending = migration_runner(environment).pending(shipped)
        except MigrationError as error:
            raise AirflowFailException(f"Migrations of {version} refused: {error}") from None
    for migration in pending:
        log.info("Pending migration %s", migration.filename)
    return [plan_entry(m) for m in pending]


def apply_migrations(
    environment: Environment, *, version: str, run_id: str, expected_sha256: str | None = None
) -> list[str]:
    """Apply the version's pending migrations in order, each in its own transaction.

    ``expected_sha256`` is the approved plan's artifact digest: a republished artifact is refused
    before any migration runs (naming both digests).

    Backups and maintenance working on the database hold the shared mode of the environment lock;
    the migrations wait (``migrations.maintenance_wait``, logged by name) until none does, and no
    new one starts until they are done (:func:`airlock.tasks.shared_lock.migration_gate`).
    """
    with (
        keep_lock(environment, run_id) as lock_held,
        tempfile.TemporaryDirectory(prefix="airlock-migrations-") as workdir,
    ):
        try:
            shipped = artifact_migrations(
                environment, version, Path(workdir), expected_sha256=expected_sha256
            )
            with migration_gate(environment, run_id, lock_held) as before_each:
                applied = migration_runner(environment).apply(shipped, run_id, before_each=before_each)
        except ArtifactChangedError as error:
            raise AirflowFailException(error.since_approval("No migration was applied")) from None
        except MigrationError as error:
            raise AirflowFailException(str(error)) from None
    log.info("Applied migrations: %s", ", ".join(applied) or "none pending")
    return applied


def migrations_markdown(
    environment: Environment, version: str, pending: list[Mapping[str, str]], artifact_sha256: str
) -> str:
    """The approver's reading: the artifact and each pending migration with its SQL."""
    return (
        f"## Migrations of {version} on {environment.name}\n\n"
        f"From artifact SHA-256 `{artifact_sha256}`: apply runs the files of exactly this artifact.\n\n"
        + pending_migrations_markdown(pending)
    )


# -- task bodies: what they need from the run comes from its context ---------------------------------


def plan(environment: Environment) -> dict[str, Any]:
    """The ``plan`` task: the pending migrations of the requested version, and their Markdown."""
    params = get_current_context()["params"]
    version = params["version"]
    # Refused during a freeze unless overridden; the override is part of what is approved.
    override = frozen_check(environment, params, f"Migrations of {version}")
    # The approver approves these files of this artifact: apply installs exactly it (pinned).
    artifact_sha256 = release_artifact(environment.deploy, version).sha256
    pending = check_migrations(environment, version, expected_sha256=artifact_sha256)
    planned = {
        "version": version,
        "artifact_sha256": artifact_sha256,
        "pending": pending,
        "freeze_override": override,
    }
    markdown = migrations_markdown(environment, version, pending, artifact_sha256)
    if override:
        markdown += f"\n\n**{inline(describe_override(override))}**: only a freeze approver may approve."
    return {**planned, "markdown": markdown, "digest": document_digest(planned)}


def proceed(planned: Mapping[str, Any]) -> bool:
    """The ``proceed`` task: go on only when something is pending and this is no dry run."""
    return bool(planned["pending"]) and not get_current_context()["params"]["dry_run"]


def apply(environment: Environment) -> list[str]:
    """The ``apply`` task, and the run's audit row (``action = 'migrate'``) whatever it ends with."""
    context = get_current_context()
    version = context["params"]["version"]
    planned = context["ti"].xcom_pull(task_ids=TaskIds.PLAN) or {}
    try:
        require_run_approval(
            environment,
            context,
            step=TaskIds.APPLY,
            plan_digest=document_digest(planned),
            instead=(
                f"No migration was applied. Trigger migrate_{environment.name} again and have an "
                "approver answer it under Browse > Required Actions."
            ),
            override=planned.get("freeze_override"),
        )
        applied = apply_migrations(
            environment,
            version=version,
            run_id=context["run_id"],
            expected_sha256=planned.get("artifact_sha256"),
        )
    except Exception as error:
        record_migrate_run(environment, context, version=version, result="failed", detail=str(error))
        raise
    detail = f"applied {', '.join(applied)}" if applied else "nothing pending"
    if planned.get("freeze_override"):
        detail += f". {describe_override(planned['freeze_override'])}"
    record_migrate_run(environment, context, version=version, result="succeeded", detail=detail)
    return applied


def record_migrate_run(
    environment: Environment, context: Any, *, version: str, result: str, detail: str
) -> None:
    dag_run = context["dag_run"]
    write_audit_record(
        environment,
        AuditRecord(
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            action="migrate",
            version=version,
            previous={},
            triggered_by=triggering_user(context),
            approved_by=approver(context["ti"].xcom_pull(task_ids=TaskIds.APPROVE)),
            approved_by_name=approver_name(context["ti"].xcom_pull(task_ids=TaskIds.APPROVE)),
            reason=context["params"].get("reason") or None,
            started_at=dag_run.start_date,
            result=result,
            detail=detail,
        ),
    )


def migrations_applied_by_run(environment: Environment, run_id: str) -> list[str]:
    """The migrations ``run_id`` applied, by file name, in order (from the history table)."""
    return migration_runner(environment).applied_by_run(run_id)
