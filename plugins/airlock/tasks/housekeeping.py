"""Airflow's own housekeeping: old task log files and old metadata database records.

Task logs: regular files under the log folder (Airflow's ``[logging] base_log_folder`` unless
``include/housekeeping.yaml`` names one) last written longer ago than the retention are
deleted, then the directories left empty; symbolic links are neither followed nor removed.

Metadata: Airflow 3 tasks have no direct access to the metadata database, so the DAG reaches
it through a dedicated Airflow connection (``metadata_conn_id``) and runs Airflow's own
``airflow db clean`` against it as a subprocess: records older than the retention are purged
without archive copies (``--skip-archive``), and archive tables earlier manual runs left behind
are dropped (``airflow db drop-archived``). The password only ever travels in the subprocess's
environment; logs show the URL masked.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from airlock.config import PROJECT_ROOT, EnvironmentConfigError, display_path

log = logging.getLogger(__name__)

SETTINGS_FILE = PROJECT_ROOT / "include" / "housekeeping.yaml"
ARCHIVE_PREFIX = "_airflow_deleted__"
#: ``airflow db clean`` may run this long before the task gives up on it.
CLEAN_TIMEOUT = timedelta(minutes=25)
_CHECKING = re.compile(r"^Checking table (\S+)")
_FOUND = re.compile(r"^Found (\d+) rows meeting deletion criteria")


class HousekeepingSettings(BaseModel):
    """``include/housekeeping.yaml``: the settings of ``airflow_housekeeping``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    owner: str = "airlock"
    schedule: str | None = "15 2 * * *"
    slack_conn_id: str | None = "airlock_slack"
    metadata_conn_id: str = "airflow_metadata_db"
    log_folder: Path | None = None
    log_retention_days: int = Field(default=30, ge=1)
    metadata_retention_days: int = Field(default=90, ge=1)
    tables: list[str] = Field(default_factory=list)


def load_housekeeping_settings(path: Path = SETTINGS_FILE) -> HousekeepingSettings:
    """Read the settings file; errors name the file and the field, like environment files."""
    shown = display_path(path)
    try:
        return HousekeepingSettings.model_validate(yaml.safe_load(path.read_text()) or {})
    except OSError as error:
        raise EnvironmentConfigError(f"{shown}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise EnvironmentConfigError(f"{shown}: not valid YAML: {error}") from None
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc'])}: {item['msg'].removeprefix('Value error, ')}"
            for item in error.errors()
        )
        raise EnvironmentConfigError(f"{shown}: {problems}") from None


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


def metadata_database_url(conn_id: str) -> tuple[str, str]:
    """The SQLAlchemy URL of the metadata connection, and the same URL with the password masked."""
    from airflow.sdk import BaseHook
    from airflow.sdk.log import mask_secret

    connection = BaseHook.get_connection(conn_id)
    if connection.conn_type == "sqlite":
        url = f"sqlite:///{connection.host}"
        return url, url
    if connection.conn_type not in ("postgres", "postgresql"):
        raise ValueError(
            f"Connection {conn_id} is of type {connection.conn_type!r}: airflow_housekeeping supports "
            "postgres and sqlite metadata databases"
        )
    if connection.password:
        mask_secret(connection.password)
    login = quote(connection.login or "", safe="")
    secret = f":{quote(connection.password, safe='')}" if connection.password else ""
    address = f"{connection.host or 'localhost'}:{connection.port or 5432}/{connection.schema or 'airflow'}"
    return (
        f"postgresql+psycopg2://{login}{secret}@{address}",
        f"postgresql+psycopg2://{login}{':***' if secret else ''}@{address}",
    )


def archive_tables(url: str) -> list[str]:
    """Archive tables (``_airflow_deleted__*``) earlier ``airflow db clean`` runs left behind."""
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        return sorted(name for name in inspect(engine).get_table_names() if name.startswith(ARCHIVE_PREFIX))
    finally:
        engine.dispose()


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


def purged_rows(output: str) -> dict[str, int]:
    """Rows per table from ``airflow db clean`` output (``Checking table x`` / ``Found n rows``)."""
    rows: dict[str, int] = {}
    table = None
    for line in output.splitlines():
        if match := _CHECKING.match(line.strip()):
            table = match.group(1)
        elif (match := _FOUND.match(line.strip())) and table is not None:
            rows[table] = int(match.group(1))
            table = None
    return rows


def trim_metadata_database(
    conn_id: str,
    older_than: timedelta,
    *,
    dry_run: bool,
    tables: list[str] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``airflow db clean`` (no archives) on the metadata database of ``conn_id``, then drop archives."""
    url, shown = metadata_database_url(conn_id)
    cutoff = (now or datetime.now(UTC)) - older_than
    arguments = ["db", "clean", "--clean-before-timestamp", cutoff.isoformat(), "--skip-archive", "--yes"]
    if tables:
        arguments += ["--tables", ",".join(tables)]
    if dry_run:
        arguments.append("--dry-run")
    log.info("Running airflow %s against %s", " ".join(arguments), shown)
    result = _airflow_cli(arguments, url)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(
            f"airflow db clean against {shown} exited {result.returncode}: {output.strip()[-2000:]}"
        )
    rows = {table: count for table, count in purged_rows(result.stdout).items() if count}
    archives = archive_tables(url)
    if archives and not dry_run:
        dropped = _airflow_cli(["db", "drop-archived", "--yes"], url)
        if dropped.returncode != 0:
            raise RuntimeError(
                f"airflow db drop-archived against {shown} exited {dropped.returncode}: "
                f"{(dropped.stdout + dropped.stderr).strip()[-2000:]}"
            )
    verb = "would be" if dry_run else "were"
    log.info("Metadata records older than %s %s purged: %s", cutoff.isoformat(), verb, rows or "none")
    log.info("Archive tables %s dropped: %s", verb, ", ".join(archives) or "none")
    return {"dry_run": dry_run, "cutoff": cutoff.isoformat(), "rows": rows, "archive_tables": archives}
