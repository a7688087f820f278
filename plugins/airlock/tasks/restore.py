"""The tasks of ``restore_<env>``: replace an environment's database with a backup, never losing the old one.

The backup is restored into a new database next to the live one, created with the dumped
database's encoding and locale, and checked (SHA-256 of every file before, row counts against the
manifest after). Only then are the two swapped by renaming, in one transaction that also gives
the restored database the dumped one's ACL and settings: the live database becomes
``<db>_unchecked_restore_<stamp>``, the restored one takes its name. The environment's SQL smoke
tests then run against it: all pass, the old one is renamed ``<db>_before_restore_<stamp>`` and
kept; one fails, the swap is undone. A failure (or a killed worker) before the swap's commit
leaves the live database untouched and open; the next restore drops the copy it left, or settles
a swap whose smoke tests never ran (:func:`repair_interrupted_restores`).

Creating and swapping run as ``backup.restore_admin_conn_id`` (default: the application's own
connection), checked for the rights they need before anything is touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import Environment, SqlSmokeTest
from airlock.core.backups import BackupError, BackupManifest, backup_settings, compare_row_counts
from airlock.core.evidence import document_digest
from airlock.core.outcome import approver
from airlock.core.restore import (
    DatabaseProperties,
    RestorePlan,
    database_properties,
    interrupted_restore_pattern,
    names_of_restore,
    restore_names,
    unchecked_swap_pattern,
)
from airlock.hooks.backup_store import BackupStore, check_files
from airlock.hooks.ops_store import AuditRecord, write_audit_record
from airlock.hooks.postgres import (
    DatabaseAddress,
    admin_rights,
    archived_database_properties,
    count_rows,
    create_database,
    database_names,
    database_owner,
    drop_database,
    pg_restore,
    reopen_database,
    swap_databases,
)
from airlock.notifications.slack import post, render
from airlock.tasks.backup import newest_verified, take_backup
from airlock.tasks.environment import TaskIds as EnvironmentTaskIds
from airlock.tasks.environment import keep_lock, register_change_steps, require_run_approval, triggering_user
from airlock.tasks.smoke import SmokeResult, SmokeTestFailed, run_sql_test

log = logging.getLogger(__name__)


class TaskIds(EnvironmentTaskIds):
    """The task ids of ``restore_<env>``."""

    PLAN = "plan"
    APPROVE = "approve"
    SAFETY_BACKUP = "safety_backup"
    RESTORE = "restore"
    ANNOUNCE = "announce"


register_change_steps("restore", [TaskIds.RESTORE])


# What the approval request says is about to change (templated: the backup the plan chose).
APPROVAL_CHANGE = f"restore of backup {{{{ ti.xcom_pull(task_ids='{TaskIds.PLAN}')['backup'] }}}}"


# -- the task bodies ------------------------------------------------------------------------------


def plan(environment: Environment) -> dict[str, Any]:
    """Task ``plan``: the backup to restore (the run's ``backup`` param, or the newest verified one)
    and the Markdown the approvers read."""
    context = get_current_context()
    params = context["params"]
    try:
        backup = choose_backup(environment, params["backup"] or None)
    except BackupError as error:
        raise AirflowFailException(str(error)) from None
    restore_plan = RestorePlan(
        environment=environment.name,
        database=backup.database,
        backup=backup.summary(),
        triggered_by=triggering_user(context),
        reason=params["reason"] or "",
    )
    planned = {"backup": backup.name, "database": backup.database, "triggered_by": restore_plan.triggered_by}
    return {**planned, "markdown": restore_plan.to_markdown(), "digest": document_digest(planned)}


def safety_backup(environment: Environment) -> dict[str, Any]:
    """Task ``safety_backup``: a pre-restore backup of the database as it is now, under the lock."""
    dag_run = get_current_context()["dag_run"]
    # The approval may have taken hours, and a dump may take longer than lock_ttl.
    with keep_lock(environment, dag_run.run_id):
        safety = take_backup(environment, kind="pre-restore", dag_id=dag_run.dag_id, run_id=dag_run.run_id)
    return safety.summary()


def restore(environment: Environment, planned: dict[str, Any], safety: dict[str, Any]) -> dict[str, Any]:
    """Task ``restore``: :func:`restore_database` of the planned backup, under the lock (kept while
    it restores, confirmed before the swap), and the run's audit row (``action = 'restore'``)."""
    context = get_current_context()
    try:
        require_run_approval(
            environment,
            context,
            step=TaskIds.RESTORE,
            plan_digest=document_digest(planned),
            instead=(
                f"Nothing was restored. Trigger restore_{environment.name} again and have an approver "
                "answer it under Browse > Required Actions."
            ),
        )
        with keep_lock(environment, context["run_id"]) as check_lock:
            restored = restore_database(environment, planned["backup"], before_change=check_lock)
    except Exception as error:
        record_restore_run(environment, context, backup=planned["backup"], result="failed", detail=str(error))
        raise
    record_restore_run(
        environment,
        context,
        backup=planned["backup"],
        result="succeeded",
        detail=f"previous database kept as {restored['previous_kept_as']}; safety backup {safety['name']}",
    )
    return {**restored, "safety_backup": safety["name"]}


def record_restore_run(
    environment: Environment, context: Any, *, backup: str, result: str, detail: str
) -> None:
    dag_run = context["dag_run"]
    write_audit_record(
        environment,
        AuditRecord(
            dag_id=dag_run.dag_id,
            run_id=dag_run.run_id,
            action="restore",
            version=backup,
            previous={},
            triggered_by=triggering_user(context),
            approved_by=approver(context["ti"].xcom_pull(task_ids=TaskIds.APPROVE)),
            reason=context["params"].get("reason") or None,
            started_at=dag_run.start_date,
            result=result,
            detail=detail,
        ),
    )


def announce(environment: Environment, restored: dict[str, Any]) -> None:
    """Task ``announce``: Slack says which backup the database now holds and where the old one is kept."""
    post(
        environment.slack_conn_id,
        render(
            "restore_succeeded",
            environment=environment.name,
            database=restored["database"],
            backup=restored["backup"]["name"],
            finished_at=restored["backup"]["finished_at"],
            kept_as=restored["previous_kept_as"],
            safety=restored["safety_backup"],
            triggered_by=triggering_user(get_current_context()),
        ),
    )


# -- what they do ---------------------------------------------------------------------------------


def choose_backup(environment: Environment, name: str | None) -> BackupManifest:
    """The named backup, or the newest verified one."""
    if name:
        return BackupStore.of(environment).manifest(name)
    newest = newest_verified(environment)
    if newest is None:
        raise BackupError(f"{environment.name} has no verified backup to restore")
    return newest


def restore_database(
    environment: Environment,
    name: str,
    *,
    now: datetime | None = None,
    before_change: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """Restore backup ``name`` in place of the environment's database; see the module docstring.

    :param before_change: called before the live database is touched (the swap); it raises to stop
        the restore there, e.g. when the run's lock was lost during a long ``pg_restore``.
    """
    settings = backup_settings(environment)
    store = BackupStore.of(environment)
    manifest = store.manifest(name)
    live = DatabaseAddress.of(environment.database.conn_id)
    admin = restore_admin(environment, live)
    owner = database_owner(admin, live.dbname)
    check_admin_rights(environment, admin, owner)
    repair_interrupted_restores(environment, admin, live.dbname)
    names = restore_names(live.dbname, now or datetime.now(UTC), database_names(admin))
    restored_name, kept_name = names["restored"], names["kept"]

    with store.local_copy(name) as directory:
        check_files(directory, manifest)
        dump = directory / manifest.dump_path
        properties = read_database_properties(dump, manifest, live.dbname, settings.timeout)
        create_database(
            admin, restored_name, owner=owner, options=properties.create_options if properties else None
        )
        try:
            pg_restore(
                dump,
                live.on(restored_name),
                jobs=settings.jobs,
                timeout=settings.timeout,
                keep_ownership=True,  # the application's grants come back with its tables
            )
            compare_row_counts(manifest, count_rows(live.on(restored_name), settings.jobs))
        except BaseException:
            drop_database(admin, restored_name)
            raise
    log.info("Backup %s restored into %s with equal row counts; swapping", name, restored_name)

    try:
        before_change()
    except BaseException:
        drop_database(admin, restored_name)
        raise
    try:
        swap_databases(
            admin,
            [(live.dbname, names["unchecked"]), (restored_name, live.dbname)],
            properties=properties.statements if properties else b"",
            encoding=properties.encoding if properties else "UTF8",
        )
    except BaseException:
        drop_database(admin, restored_name)  # rolled back, so never live (and gone if it committed)
        raise
    log.info("%s now holds backup %s; the previous database is %s", live.dbname, name, names["unchecked"])

    results, failures = settle_swap(environment, admin, live.dbname, names)
    if failures:
        raise SmokeTestFailed(
            f"SQL smoke test(s) failed on the restored database, so the swap was undone: {live.dbname} "
            f"is as before and the restored copy is kept as {names['failed']}: "
            + "; ".join(f"{r.test}: {r.detail}" for r in failures)
        )
    return {
        "database": live.dbname,
        "backup": manifest.summary(),
        "previous_kept_as": kept_name,
        "smoke_tests": [f"{r.test}: {r.detail}" for r in results],
    }


def settle_swap(
    environment: Environment, admin: DatabaseAddress, database: str, names: dict[str, str]
) -> tuple[list[SmokeResult], list[SmokeResult]]:
    """The SQL smoke tests' verdict on a swapped-in restore, acted on: all passed, the previous
    database (``unchecked``) is renamed ``kept``; one failed, the swap is undone (the restored
    copy becomes ``failed``). Returns the results and the failures."""
    results = [
        run_sql_test(test, environment.database.conn_id)
        for test in environment.smoke_tests
        if isinstance(test, SqlSmokeTest)
    ]
    failures = [r for r in results if not r.passed]
    if failures:
        swap_databases(admin, [(database, names["failed"]), (names["unchecked"], database)])
    else:
        swap_databases(admin, [(names["unchecked"], names["kept"])])
    return results, failures


def restore_admin(environment: Environment, live: DatabaseAddress) -> DatabaseAddress:
    """The session that creates, renames and swaps databases: ``backup.restore_admin_conn_id`` (on the
    database it names, ``postgres`` when none), by default the application's own credential."""
    conn_id = backup_settings(environment).restore_admin_conn_id
    if conn_id is None:
        return live.on("postgres")
    admin = DatabaseAddress.of(conn_id, default_dbname="postgres")
    if (admin.host, admin.port) != (live.host, live.port):
        raise BackupError(
            f"backup.restore_admin_conn_id {conn_id} reaches {admin.host}:{admin.port}, but the database "
            f"{live.dbname} is on {live.host}:{live.port}: point it at the database's server"
        )
    if admin.dbname == live.dbname:
        raise BackupError(
            f"backup.restore_admin_conn_id {conn_id} connects to {live.dbname}, the database it must rename: "
            "give it another database (its schema field), e.g. postgres"
        )
    return admin


def check_admin_rights(environment: Environment, admin: DatabaseAddress, owner: str) -> None:
    """Refuse, before anything is touched, an admin role that could not create or swap databases."""
    missing = admin_rights(admin, owner).missing(owner)
    if missing:
        conn_id = backup_settings(environment).restore_admin_conn_id or environment.database.conn_id
        raise BackupError(
            f"The restore's admin connection {conn_id} (role {admin.user}) cannot create and swap "
            f"databases; run {'; '.join(missing)}, or set backup.restore_admin_conn_id to a role that can"
        )


def repair_interrupted_restores(environment: Environment, admin: DatabaseAddress, database: str) -> None:
    """Finish or undo what a restore killed part-way left, so this one starts from a settled state.

    A swap commits all or nothing, so a killed restore leaves one of two things. Killed before its
    swap: a ``<db>_restore_<stamp>`` copy, never live (:func:`interrupted_restore_pattern`), which
    is dropped. Killed after it, before the smoke tests' verdict: ``<db>_unchecked_restore_<stamp>``
    (:func:`unchecked_swap_pattern`); the smoke tests run now and :func:`settle_swap` keeps or
    undoes that swap. The run holds the environment lock, so no other restore is using either.
    ``datallowconn = false`` on the live database was left by a killed swap of an earlier Airlock
    version; it is opened again.
    """
    if reopen_database(admin, database):
        log.warning("%s refused connections (a swap killed part-way): it accepts them again", database)
    leftovers, unchecked = interrupted_restore_pattern(database), unchecked_swap_pattern(database)
    for name in database_names(admin):
        if leftovers.match(name):
            log.warning("Dropping %s, the copy of a restore that stopped before its swap", name)
            drop_database(admin, name)
        elif found := unchecked.match(name):
            names = names_of_restore(database, found["stamp"])
            _, failures = settle_swap(environment, admin, database, names)
            log.warning(
                "A restore swapped %s in but stopped before its smoke tests: they %s, so %s",
                database,
                "failed" if failures else "passed",
                f"the swap was undone ({names['failed']})"
                if failures
                else f"{name} is kept as {names['kept']}",
            )


def read_database_properties(
    dump: Path, manifest: BackupManifest, database: str, timeout: timedelta
) -> DatabaseProperties | None:
    """The encoding, locale, ACL and settings the dump recorded for its database, or None (with a
    warning) for an archive that has none: its copy then gets the server's defaults."""
    script = archived_database_properties(dump, timeout=timeout)
    if script is None:
        log.warning(
            "Backup %s records no database properties (encoding, locale, ACL, settings): the restored "
            "database gets the server's defaults",
            manifest.name,
        )
        return None
    if manifest.database != database:
        raise BackupError(
            f"Backup {manifest.name} is of database {manifest.database}, but {database} is the environment's "
            "database now: its ACL and settings name the other one; restore it by hand"
        )
    try:
        return database_properties(script)
    except ValueError as error:
        raise BackupError(f"Backup {manifest.name}: {error}") from None
