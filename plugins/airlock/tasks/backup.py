"""The tasks of ``backup_<env>``: dump, verify by a real restore, apply retention.

A backup is dumped from one snapshot with the row count of every table taken from that very
snapshot, published with its manifest written last (:mod:`airlock.hooks.backup_store`), verified
by restoring it into a scratch database and comparing row counts, and kept or pruned by
:func:`airlock.core.backups.plan_retention`. Release preflight (:func:`require_fresh_backup`) and
the restore DAG use the same functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import Asset, get_current_context

from airlock.config import Environment
from airlock.core.backups import (
    BackupError,
    BackupManifest,
    Kind,
    backup_name,
    backup_settings,
    compare_row_counts,
    dump_path,
    plan_retention,
    require_fresh,
)
from airlock.hooks.backup_store import BackupStore, check_files, file_digests
from airlock.hooks.postgres import (
    DatabaseAddress,
    client_tool,
    count_rows,
    drop_abandoned_verify_databases,
    dump_snapshot,
    pg_restore,
    tool_version,
    verify_scratch_database,
)
from airlock.tasks.shared_lock import hold_shared

log = logging.getLogger(__name__)


class TaskIds:
    """The task ids of ``backup_<env>``."""

    DUMP = "dump"
    VERIFY = "verify"
    PRUNE = "prune"


def verified_backup_asset(environment: Environment) -> Asset:
    """Updated each time a backup of the environment is verified; its extra names the backup."""
    return Asset(name=f"airlock_verified_backup_{environment.name}", uri=environment.backup.destination)


# -- the task bodies ------------------------------------------------------------------------------


def dump(environment: Environment) -> dict[str, Any]:
    """Task ``dump``: a scheduled (or, when triggered, manual) backup of this run."""
    dag_run = get_current_context()["dag_run"]
    kind = "scheduled" if dag_run.run_type == "scheduled" else "manual"
    return back_up(environment, kind=kind, dag_id=dag_run.dag_id, run_id=dag_run.run_id).summary()


def verify(environment: Environment, backup: dict[str, Any]) -> dict[str, Any]:
    """Task ``verify``: verify the dumped backup and update the verified-backup Asset with it."""
    context = get_current_context()
    manifest = verify_backup(environment, backup["name"], verified_by=context["run_id"])
    context["outlet_events"][verified_backup_asset(environment)].extra = manifest.summary()
    return manifest.summary()


def prune(environment: Environment) -> dict[str, Any]:
    """Task ``prune``: retention, only listing what would go when the run's ``dry_run`` param is set."""
    return apply_retention(environment, dry_run=get_current_context()["params"]["dry_run"])


# -- what they do ---------------------------------------------------------------------------------


def back_up(environment: Environment, *, kind: Kind, dag_id: str, run_id: str) -> BackupManifest:
    """:func:`take_backup` holding the shared mode of the environment lock for the whole dump.

    The dump's ACCESS SHARE locks would make a migration fail on ``lock_timeout``: a migration
    waits for this hold to end, and the dump waits while a migration runs (see
    :mod:`airlock.tasks.shared_lock`). A release's own pre-release backup runs under the
    release's exclusive lock, before its migrations, so it holds nothing more.
    """
    with hold_shared(environment, dag_id=dag_id, run_id=run_id, purpose=f"{kind} backup dump"):
        return take_backup(environment, kind=kind, dag_id=dag_id, run_id=run_id)


def take_backup(
    environment: Environment,
    *,
    kind: Kind = "scheduled",
    dag_id: str | None = None,
    run_id: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BackupManifest:
    """Dump the environment's database from one snapshot and publish it with its manifest."""
    settings = backup_settings(environment)
    store = BackupStore.of(environment)
    address = DatabaseAddress.of(environment.database.conn_id)
    pg_dump = client_tool("pg_dump")
    started = clock()
    name = backup_name(environment.name, started, kind)
    while store.exists(name):  # names have one-second resolution: never reuse one
        time.sleep(0.2)
        started = clock()
        name = backup_name(environment.name, started, kind)
    with store.staging(name) as staged:
        dumped = dump_snapshot(
            address,
            staged / dump_path(settings.format),
            pg_dump=pg_dump,
            dump_format=settings.format,
            compression=settings.compression,
            jobs=settings.jobs,
            timeout=settings.timeout,
        )
        files = file_digests(staged)
        manifest = BackupManifest(
            name=name,
            environment=environment.name,
            kind=kind,
            database=dumped.database,
            server_version=dumped.server_version,
            pg_dump_version=tool_version(pg_dump),
            format=settings.format,
            compression=settings.compression,
            started_at=started,
            finished_at=clock(),
            files=files,
            row_counts=dumped.row_counts,
            dag_id=dag_id,
            run_id=run_id,
        )
        store.publish(staged, manifest)
    log.info(
        "Backup %s published: %d bytes, %d tables, %d rows",
        name,
        manifest.size,
        len(manifest.row_counts),
        sum(manifest.row_counts.values()),
    )
    return manifest


def verify_backup(environment: Environment, name: str, *, verified_by: str | None = None) -> BackupManifest:
    """Check the files' SHA-256, restore into a scratch database, compare row counts, mark verified.

    The scratch database lives on ``backup.verify_conn_id``'s server (by default the application's
    own); scratch databases that killed verifications of this environment left there are dropped
    first. The checksums are computed while ``pg_restore`` runs (both only read the files); a
    damaged file is reported as such even when it also made the restore fail.
    """
    settings = backup_settings(environment)
    store = BackupStore.of(environment)
    manifest = store.manifest(name)
    server = DatabaseAddress.of(settings.verify_conn_id or environment.database.conn_id)
    drop_abandoned_verify_databases(server, environment.name)
    with store.local_copy(name) as directory, ThreadPoolExecutor(max_workers=1) as checksums:
        files_checked = checksums.submit(check_files, directory, manifest)
        with verify_scratch_database(server, environment.name) as scratch:
            try:
                pg_restore(
                    directory / manifest.dump_path,
                    scratch,
                    jobs=settings.jobs,
                    timeout=settings.timeout,
                    keep_ownership=False,
                )
            except BackupError:
                files_checked.result()  # a damaged file explains the failure better
                raise
            files_checked.result()
            restored = count_rows(scratch, settings.jobs)
    compare_row_counts(manifest, restored)
    verified = replace(manifest, verified_at=datetime.now(UTC), verified_by=verified_by)
    store.write_manifest(verified)
    log.info("Backup %s verified: %d tables, row counts equal", name, len(restored))
    return verified


def newest_verified(environment: Environment) -> BackupManifest | None:
    """The environment's newest verified backup, or None (also when it has no backup section)."""
    if environment.backup is None:
        return None
    verified = [m for m in BackupStore.of(environment).backups() if m.verified]
    return verified[-1] if verified else None


def require_fresh_backup(environment: Environment, now: datetime | None = None) -> BackupManifest | None:
    """Release preflight: the newest verified backup must be younger than ``backup.max_age``."""
    settings = environment.backup
    if settings is None or not settings.required_for_release:
        return None
    return require_fresh(
        environment.name, newest_verified(environment), settings.max_age, now or datetime.now(UTC)
    )


def apply_retention(
    environment: Environment, *, dry_run: bool, now: datetime | None = None
) -> dict[str, Any]:
    """Delete what :func:`plan_retention` lets go (a dry run only lists it), plus stale staging dirs."""
    settings = backup_settings(environment)
    store = BackupStore.of(environment)
    now = now or datetime.now(UTC)
    backups = store.backups()
    if not any(b.verified for b in backups):
        raise BackupError("No verified backup exists: retention deletes nothing until one does")
    plan = plan_retention(backups, settings.retention, now)
    stale = store.stale_incomplete(older_than=settings.timeout, now=now)
    for name, why in sorted(plan.keep.items()):
        log.info("Keep %s: %s", name, why)
    for name in [*plan.remove, *stale]:
        log.info("%s %s", "Would remove" if dry_run else "Removing", name)
        if not dry_run:
            store.remove(name)
    return {**plan.to_dict(), "incomplete_removed": stale, "dry_run": dry_run}
