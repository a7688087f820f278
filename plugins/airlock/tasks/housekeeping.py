"""Airflow's own housekeeping: old task log files and old metadata database records.

Task logs: regular files under the log folder (Airflow's ``[logging] base_log_folder`` unless
``include/housekeeping.yaml`` names one) last written longer ago than the retention are
deleted, then the directories left empty; symbolic links are neither followed nor removed.

Metadata: Airflow 3 tasks have no direct access to the metadata database, so the DAG reaches
it through a dedicated Airflow connection (``metadata_conn_id``) and runs Airflow's own
``airflow db clean`` against it as a subprocess: records older than the retention are purged
without archive copies (``--skip-archive``), and archive tables earlier manual runs left behind
are dropped (``airflow db drop-archived``). The password only ever travels in the subprocess's
environment; logs show the URL masked. Approval evidence (see
:data:`airlock.core.housekeeping.EVIDENCE_TABLES`) is purged in a second ``db clean`` with its
own cutoff, never younger than ``audit_retention_days``.

A run's params may keep more than the settings file, never less: the DAG's Params refuse a
shorter retention at trigger time, and each task refuses it again (no retry), since a run
created past the form (an older serialized DAG, a changed file) must not erase evidence either.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import conf, get_current_context
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import HousekeepingSettings
from airlock.core.housekeeping import RetentionError, purged_rows, run_retention_days, split_evidence_tables
from airlock.hooks.metadata_db import archive_tables, metadata_database_url

log = logging.getLogger(__name__)

#: ``airflow db clean`` may run this long before the task gives up on it.
CLEAN_TIMEOUT = timedelta(minutes=25)


class TaskIds:
    """The task ids of ``airflow_housekeeping``."""

    DELETE_OLD_TASK_LOGS = "delete_old_task_logs"
    TRIM_METADATA_DATABASE = "trim_metadata_database"


@dataclass
class LogFolderReport:
    """Task log files deleted (or, in a dry run, to delete) and directories removed."""

    folder: str
    dry_run: bool
    cutoff: str
    files: int = 0
    bytes: int = 0
    directories: int = 0
    examples: list[str] = field(default_factory=list)


def delete_old_task_logs(
    folder: Path, older_than: timedelta, *, dry_run: bool, now: datetime | None = None, examples: int = 20
) -> dict[str, Any]:
    """Delete regular files under ``folder`` last written before ``now - older_than``.

    Directories left empty are removed too (never ``folder`` itself). Symbolic links are not
    followed and not deleted, so nothing outside ``folder`` is ever touched.
    """
    cutoff = (now or datetime.now(UTC)) - older_than
    report = LogFolderReport(folder=str(folder), dry_run=dry_run, cutoff=cutoff.isoformat())
    if not folder.is_dir():
        log.info("Log folder %s does not exist: nothing to delete", folder)
        return report.__dict__
    limit = cutoff.timestamp()
    emptied: set[str] = set()
    for directory, subdirectories, files in os.walk(folder, topdown=False, followlinks=False):
        kept = 0
        for name in files:
            path = os.path.join(directory, name)
            info = os.lstat(path)
            if not stat.S_ISREG(info.st_mode) or info.st_mtime >= limit:  # links, sockets: kept
                kept += 1
                continue
            if not dry_run:
                os.unlink(path)
            report.files += 1
            report.bytes += info.st_size
            if len(report.examples) < examples:
                report.examples.append(os.path.relpath(path, folder))
        kept += sum(
            1
            for name in subdirectories
            if os.path.islink(os.path.join(directory, name)) or os.path.join(directory, name) not in emptied
        )
        if kept == 0 and Path(directory) != folder:
            if dry_run:
                emptied.add(directory)
                report.directories += 1
            else:
                try:
                    os.rmdir(directory)
                except OSError:  # something was written meanwhile: keep it
                    continue
                emptied.add(directory)
                report.directories += 1
    verb = "would be" if dry_run else "were"
    log.info(
        "Task logs in %s written before %s: %d files (%d bytes) %s deleted, %d empty directories %s removed",
        folder,
        report.cutoff,
        report.files,
        report.bytes,
        verb,
        report.directories,
        verb,
    )
    for example in report.examples:
        log.info("  %s", example)
    return report.__dict__


def _airflow_cli(arguments: list[str], url: str) -> subprocess.CompletedProcess[str]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN")
    }
    environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = url
    return subprocess.run(
        [sys.executable, "-m", "airflow", *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=CLEAN_TIMEOUT.total_seconds(),
        check=False,
    )


def _db_clean(url: str, shown: str, cutoff: datetime, tables: list[str], *, dry_run: bool) -> dict[str, int]:
    """One ``airflow db clean`` (no archives) of ``tables`` (empty: all) before ``cutoff``."""
    arguments = ["db", "clean", "--clean-before-timestamp", cutoff.isoformat(), "--skip-archive", "--yes"]
    if tables:
        arguments += ["--tables", ",".join(tables)]
    if dry_run:
        arguments.append("--dry-run")
    log.info("Running airflow %s against %s", " ".join(arguments), shown)
    result = _airflow_cli(arguments, url)
    if result.returncode != 0:
        raise RuntimeError(
            f"airflow db clean against {shown} exited {result.returncode}: "
            f"{(result.stdout + result.stderr).strip()[-2000:]}"
        )
    return {table: count for table, count in purged_rows(result.stdout).items() if count}


def _clean_dependencies() -> dict[str, list[str]]:
    """``airflow db clean``'s tables, each with the tables it purges along with it."""
    from airflow.utils.db_cleanup import config_dict

    return {name: list(config.dependent_tables or []) for name, config in config_dict.items()}


def trim_metadata_database(
    conn_id: str,
    older_than: timedelta,
    *,
    dry_run: bool,
    evidence_older_than: timedelta,
    tables: list[str] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``airflow db clean`` (no archives) on the metadata database of ``conn_id``, then drop archives.

    Tables whose purge reaches approval evidence are cleaned with a cutoff of at least
    ``evidence_older_than`` (see :func:`airlock.core.housekeeping.split_evidence_tables`).
    """
    url, shown = metadata_database_url(conn_id)
    now = now or datetime.now(UTC)
    cutoff = now - older_than
    evidence_cutoff = now - max(older_than, evidence_older_than)
    if evidence_cutoff == cutoff:
        passes = [(cutoff, tables or [])]
    else:
        dependencies = _clean_dependencies()
        plain, evidence = split_evidence_tables(dependencies, tables or list(dependencies))
        passes = [(when, chosen) for when, chosen in ((cutoff, plain), (evidence_cutoff, evidence)) if chosen]
    rows: dict[str, int] = {}
    for when, chosen in passes:
        rows.update(_db_clean(url, shown, when, chosen, dry_run=dry_run))
    archives = archive_tables(url)
    if archives and not dry_run:
        dropped = _airflow_cli(["db", "drop-archived", "--yes"], url)
        if dropped.returncode != 0:
            raise RuntimeError(
                f"airflow db drop-archived against {shown} exited {dropped.returncode}: "
                f"{(dropped.stdout + dropped.stderr).strip()[-2000:]}"
            )
    verb = "would be" if dry_run else "were"
    log.info(
        "Metadata records older than %s (approval evidence: older than %s) %s purged: %s",
        cutoff.isoformat(),
        evidence_cutoff.isoformat(),
        verb,
        rows or "none",
    )
    log.info("Archive tables %s dropped: %s", verb, ", ".join(archives) or "none")
    return {
        "dry_run": dry_run,
        "cutoff": cutoff.isoformat(),
        "evidence_cutoff": evidence_cutoff.isoformat(),
        "rows": rows,
        "archive_tables": archives,
    }


def run_retention(settings: HousekeepingSettings, params: dict[str, Any], field: str) -> timedelta:
    """The run's retention for ``field``: its param, never below the settings file's (no retry)."""
    try:
        return timedelta(days=run_retention_days(field, getattr(settings, field), params.get(field)))
    except RetentionError as error:
        raise AirflowFailException(str(error)) from None


def delete_expired_task_logs(settings: HousekeepingSettings) -> dict[str, Any]:
    """Task body of ``delete_old_task_logs``: the run's retention and dry run, the worker's log folder."""
    params = get_current_context()["params"]
    retention = run_retention(settings, params, "log_retention_days")
    folder = settings.log_folder or Path(conf.get("logging", "base_log_folder"))
    return delete_old_task_logs(folder, retention, dry_run=params["dry_run"])


def trim_expired_metadata(settings: HousekeepingSettings) -> dict[str, Any]:
    """Task body of ``trim_metadata_database``: the run's retention and dry run, evidence kept."""
    params = get_current_context()["params"]
    return trim_metadata_database(
        settings.metadata_conn_id,
        run_retention(settings, params, "metadata_retention_days"),
        dry_run=params["dry_run"],
        evidence_older_than=timedelta(days=settings.audit_retention_days),
        tables=settings.tables,
    )
