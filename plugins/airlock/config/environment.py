"""The environment model: ``include/environments/<env>.yaml`` read into validated objects.

One YAML file describes one environment (``demo``, ``staging``, ``production``...): its hosts,
how to reach them, how a release rolls out, who approves it, and the settings of the scheduled
backup, health and maintenance DAGs. DAG files read it at parse time, so loading touches only
local files: no network, no database, no Airflow Variables. Secrets never live here; the file
names Airflow connection ids and the connections hold the credentials.

Strings may refer to environment variables as ``${NAME}`` or ``${NAME:-default}``. Relative
local paths (such as ``ssh.known_hosts``) are relative to the project root. Files are read by
:mod:`airlock.config.loader`, so every error names the file and the field, e.g.
``include/environments/demo.yaml: rollout.waves: the last wave reaches 2 of 3 hosts``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from airlock.config.loader import PROJECT_ROOT, ConfigFileError, load_settings_file

ENVIRONMENTS_DIR_VARIABLE = "AIRLOCK_ENVIRONMENTS_DIR"

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,30}$"
#: A Celery queue name that needs no quoting anywhere (``airflow celery worker --queues a,b``).
QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
#: A run's ``reason``: one line (a newline could fake a section of the plan the approver reads).
REASON_PATTERN = r"^[^\r\n]*$"
REASON_MAX_LENGTH = 500
# A release's committed_at, checked at trigger time: an ISO 8601 date and time with its UTC
# offset (``git show -s --format=%cI``); the first task reads it with datetime.fromisoformat.
COMMITTED_AT_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})$"
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: The execution timeout of every step that sets none of its own (``conventions.default_args``).
STEP_TIMEOUT = timedelta(minutes=30)


class EnvironmentConfigError(ConfigFileError):
    """An environment file is missing, unreadable or invalid; the message names file and field."""


def parse_duration(value: Any) -> timedelta:
    """Read ``"30s"``, ``"5m"``, ``"4h"``, ``"7d"``, ``"2w"`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 4h, 7d")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError(f"invalid duration {value!r}: must be positive")
        return timedelta(seconds=value)
    if isinstance(value, str) and (match := _DURATION.match(value)):
        amount, unit = int(match.group(1)), match.group(2)
        if amount <= 0:
            raise ValueError(f"invalid duration {value!r}: must be positive")
        return timedelta(seconds=amount * _DURATION_UNITS[unit])
    raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 4h, 7d")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _describe(duration: timedelta) -> str:
    """A duration as the environment files write it (``4h``, ``90m``, ``45s``)."""
    seconds = int(duration.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Percent = Annotated[float, Field(ge=0, le=100)]


def _absolute_posix_path(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{value!r} must be an absolute path without '..'")
    return str(path)


RemotePath = Annotated[str, BeforeValidator(_absolute_posix_path)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Host(_Model):
    """One machine the application runs on, reached over SSH."""

    name: str = Field(
        pattern=NAME_PATTERN, description="Short unique name, e.g. web-1 (lowercase, digits, -)"
    )
    address: str = Field(min_length=1, description="Address SSH connects to")
    ssh_port: int = Field(default=22, ge=1, le=65535)
    app_url: str = Field(description="Base URL of the application on this host, e.g. http://10.0.0.5:8080")
    root: RemotePath | None = Field(default=None, description="Overrides deploy.root for this host")

    @field_validator("app_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @property
    def ssh_target(self) -> str:
        return f"{self.address}:{self.ssh_port}"


class SSHSettings(_Model):
    conn_id: str = Field(default="airlock_ssh", description="Airflow SSH connection: login and private key")
    known_hosts: Path = Field(
        description="known_hosts file listing every host's key; relative to the project"
    )
    connect_timeout: Duration = timedelta(seconds=10)
    command_timeout: Duration = timedelta(minutes=5)

    @field_validator("known_hosts")
    @classmethod
    def _relative_to_project(cls, value: Path) -> Path:
        return value if value.is_absolute() else PROJECT_ROOT / value


class DeploySettings(_Model):
    root: RemotePath = Field(description="Directory holding releases/, current and shared/ on each host")
    keep_releases: int = Field(
        default=5, ge=2, le=100, description="Releases kept on each host after a release"
    )
    artifact_url: str = Field(description="Where the artifact of a version lives; must contain {version}")
    checksum_url: str | None = Field(
        default=None, description="SHA-256 file of the artifact; defaults to artifact_url + '.sha256'"
    )
    activate_command: list[str] = Field(
        min_length=1,
        description="argv run on the host after switching; {root}, {release_dir} and {version} are filled in",
    )
    health_path: str = Field(default="/health", description="Answers 200 when the app on a host is healthy")
    version_path: str = Field(default="/version", description='Answers JSON {"version": "..."}')
    health_timeout: Duration = Field(
        default=timedelta(seconds=60),
        description="How long a switched host may take to serve the new version",
    )
    min_free_disk_mb: int = Field(default=500, ge=0, description="Preflight fails below this free space")

    @field_validator("artifact_url", "checksum_url")
    @classmethod
    def _has_version(cls, value: str | None) -> str | None:
        if value is not None and "{version}" not in value:
            raise ValueError(f"{value!r} must contain {{version}}")
        return value

    @field_validator("health_path", "version_path")
    @classmethod
    def _url_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with '/'")
        return value

    @field_validator("activate_command")
    @classmethod
    def _known_placeholders(cls, value: list[str]) -> list[str]:
        for argument in value:
            try:
                argument.format(root="", release_dir="", version="")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(
                    f"{argument!r}: unknown placeholder {error}; use {{root}}, {{release_dir}}, {{version}}"
                ) from None
        return value

    def artifact_url_for(self, version: str) -> str:
        return self.artifact_url.format(version=version)

    def checksum_url_for(self, version: str) -> str:
        return (self.checksum_url or self.artifact_url + ".sha256").format(version=version)


WaveSize = int | Annotated[str, Field(pattern=r"^\d{1,3}%$")]


@dataclass(frozen=True)
class Wave:
    """The hosts one rollout step switches; waves run one after another."""

    number: int
    hosts: tuple[Host, ...]

    @property
    def group_id(self) -> str:
        return f"wave_{self.number}"

    @property
    def host_names(self) -> list[str]:
        return [host.name for host in self.hosts]

    def batches(self, hosts_per_task: int | None) -> list[list[str]]:
        """The wave's hosts as its deploy tasks take them: all in one, or ``hosts_per_task`` each."""
        names = self.host_names
        size = hosts_per_task or len(names) or 1
        return [names[start : start + size] for start in range(0, len(names), size)]


class RolloutSettings(_Model):
    waves: list[WaveSize] = Field(
        default_factory=lambda: ["100%"],
        min_length=1,
        description="Cumulative reach of each wave: a host count or a percentage of all hosts",
    )
    max_parallel_per_wave: int = Field(
        default=16,
        ge=1,
        description="Hosts of one wave deployed, smoke-tested and rolled back at once (like Ansible's forks)",
    )
    hosts_per_task: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Hosts one deploy task takes (default: the whole wave, one task per wave); smaller "
            "batches spread a wave over several Celery workers"
        ),
    )

    on_lock_busy: Literal["fail", "wait"] = Field(
        default="fail",
        description=(
            "What a release does while another run holds the environment's lock: fail at once "
            "naming the holder, or wait in line for it (first come, first served) holding no worker slot"
        ),
    )
    lock_wait_timeout: Duration = Field(
        default=timedelta(minutes=30),
        description="With on_lock_busy: wait, how long a release waits for the lock before it gives up",
    )
    lock_poll_interval: Duration = Field(
        default=timedelta(seconds=15),
        description="With on_lock_busy: wait, how often a waiting release looks at the lock again",
    )

    @model_validator(mode="after")
    def _sensible_wait(self) -> RolloutSettings:
        if self.lock_poll_interval < timedelta(seconds=1):
            raise ValueError("lock_poll_interval: at least 1s")
        if self.lock_wait_timeout < self.lock_poll_interval:
            raise ValueError(
                f"lock_wait_timeout ({_describe(self.lock_wait_timeout)}) is shorter than "
                f"lock_poll_interval ({_describe(self.lock_poll_interval)})"
            )
        return self

    @property
    def deploy_tasks_at_once(self) -> int:
        """How many deploy tasks (batches) of one wave run side by side: at most
        ``max_parallel_per_wave`` hosts in all."""
        return max(1, self.max_parallel_per_wave // (self.hosts_per_task or 1))


class SlackUser(_Model):
    """An Airflow user as ``approval.slack_users`` names it: its id and its name."""

    id: str = Field(min_length=1)
    name: str = Field(min_length=1)


class ApprovalSettings(_Model):
    required: bool = Field(default=True, description="Whether releases and rollbacks wait for an approval")
    approvers: list[str] = Field(
        default_factory=list,
        description=(
            "Airflow user ids who may approve; a name matches only where the auth manager "
            "uses names as ids (the simple auth manager)"
        ),
    )
    timeout: Duration = Field(
        default=timedelta(hours=4), description="No answer in time ends the run, audited as timed_out"
    )
    allow_self_approval: bool = Field(default=False, description="Whether the triggering user may approve")
    slack_channel: str | None = Field(
        default=None,
        pattern=r"^#?[A-Za-z0-9._-]{1,80}$",
        description=(
            "Slack channel (id, or #name) where approval requests are posted with Approve and Reject "
            "buttons, through slack_api_conn_id; none: the webhook message with a link only"
        ),
    )
    slack_api_conn_id: str = Field(
        default="airlock_slack_api",
        description="Slack API connection (the bot token, chat:write) for slack_channel",
    )
    slack_signing_conn_id: str = Field(
        default="airlock_slack_signing",
        description="Connection whose password is the Slack app's signing secret (verifies button clicks)",
    )
    slack_users: dict[Annotated[str, Field(pattern=r"^[UW][A-Z0-9]{2,20}$")], str | SlackUser] = Field(
        default_factory=dict,
        description=(
            "Slack user id -> the Airflow user a click from Slack answers as: a user id (where ids "
            "are names, as in the simple auth manager) or {id, name} (FAB, Keycloak); unmapped: refused"
        ),
    )

    @model_validator(mode="after")
    def _someone_can_approve(self) -> ApprovalSettings:
        if self.required and not self.approvers:
            raise ValueError("approvers: list at least one user when approval is required")
        return self


class DatabaseSettings(_Model):
    conn_id: str = Field(description="Airflow connection of the application's PostgreSQL database")
    ops_conn_id: str = Field(
        default="airlock_ops",
        description=(
            "Airflow connection of the database for Airlock's own tables (audit trail, health history): "
            "a database other than conn_id's, so a restore can never rewind the audit trail"
        ),
    )
    ops_schema: str = Field(
        default="airlock", pattern=r"^[a-z_][a-z0-9_]{0,62}$", description="Schema of the audit trail table"
    )

    @property
    def ops_connection(self) -> str:
        return self.ops_conn_id


class MigrationSettings(_Model):
    history_schema: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    history_table: str = Field(default="airlock_schema_history", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    lock_timeout: Duration = timedelta(seconds=5)
    statement_timeout: Duration = timedelta(minutes=15)
    maintenance_wait: Duration = Field(
        default=timedelta(minutes=10),
        description=(
            "How long a migration waits for backup dumps and database maintenance to finish (they hold "
            "the shared lock; the migration then fails, applying nothing), and how long they wait for "
            "a migration; the migrate step's execution_timeout must leave room for it"
        ),
    )


class BackupRetention(_Model):
    """How many verified backups to keep: the newest of each of the last N hours, days, weeks, months."""

    hourly: int = Field(default=0, ge=0, description="Newest verified backup of each of the last N hours")
    daily: int = Field(default=7, ge=0, description="Newest verified backup of each of the last N days")
    weekly: int = Field(default=4, ge=0, description="Newest verified backup of each of the last N ISO weeks")
    monthly: int = Field(default=6, ge=0, description="Newest verified backup of each of the last N months")
    safety: Duration = Field(
        default=timedelta(days=7),
        description="How long pre-release and pre-restore safety backups are kept",
    )


class BackupSettings(_Model):
    schedule: str | None = Field(
        default="0 2 * * *", description="Cron schedule of backup_<env>; null: manual"
    )
    destination: str = Field(
        description="ObjectStoragePath URL of the backup directory, e.g. file:///var/backups/airlock or s3://..."
    )
    conn_id: str | None = Field(default=None, description="Connection for a remote object store")
    format: Literal["custom", "directory"] = Field(
        default="custom",
        description="pg_dump format: custom (one file) or directory (dumped with `jobs` in parallel)",
    )
    compression: int = Field(default=6, ge=0, le=9, description="pg_dump compression level (0: none)")
    jobs: int = Field(
        default=2, ge=1, le=32, description="Parallel jobs of pg_restore (and of pg_dump, directory format)"
    )
    verify_conn_id: str | None = Field(
        default=None,
        description=(
            "Connection of the server where backups are test-restored into scratch databases (a "
            "scratch server, or a role with CREATEDB; sessions open on the database it names); "
            "default database.conn_id: "
            "then every verify doubles disk use and I/O on the production server, ships its WAL to the "
            "replicas, and the application's credential needs CREATEDB"
        ),
    )
    restore_admin_conn_id: str | None = Field(
        default=None,
        description=(
            "Role on the database's server that creates, renames and swaps databases during a restore "
            "(CREATEDB, member of the database owner, pg_signal_backend); defaults to database.conn_id, "
            "whose credential then needs all of that"
        ),
    )
    retention: BackupRetention = Field(default_factory=BackupRetention)
    max_age: Duration = Field(
        default=timedelta(hours=26), description="Newest verified backup must be younger"
    )
    required_for_release: bool = Field(
        default=True,
        description="Releases need a verified backup younger than max_age and take a pre-release backup",
    )
    timeout: Duration = Field(
        default=timedelta(hours=4), description="Longest a dump, verify or restore step may run"
    )

    @field_validator("destination")
    @classmethod
    def _url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(f"{value!r} is not a URL: use file:///absolute/path or a store URL like s3://")
        if value.startswith("file://") and not value.removeprefix("file://").startswith("/"):
            raise ValueError(f"{value!r}: a file:// destination needs an absolute path (file:///...)")
        return value.rstrip("/")


class Thresholds(_Model):
    warn: float
    critical: float


#: The most consecutive runs ``alert_after`` and ``resolve_after`` may ask for (a day of 5-minute runs).
MAX_STREAK = 288


def _same_for_both(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return {"critical": value, "warn": value}
    return value


class AlertAfter(_Model):
    """How many consecutive failing runs a check needs before Slack hears of it, per status."""

    critical: int = Field(
        default=1, ge=1, le=MAX_STREAK, description="Runs critical (or warn) before alerting"
    )
    warn: int = Field(default=2, ge=1, le=MAX_STREAK, description="Runs warn before alerting")

    def runs(self, status: str) -> int:
        return self.critical if status == "critical" else self.warn


class HealthSettings(_Model):
    """What ``health_<env>`` watches and when it alerts (docs/runbooks/health-check.md).

    Each threshold has ``warn`` and ``critical``; where critical is below warn (memory available),
    lower values are worse.
    """

    schedule: str | None = Field(
        default="*/5 * * * *", description="Cron schedule of health_<env>; null: manual"
    )
    mounts: list[RemotePath] = Field(
        default_factory=lambda: ["/"], description="Mounts whose disk and inode use is checked on every host"
    )
    disk_used_percent: Thresholds = Field(
        default=Thresholds(warn=80, critical=90), description="Disk space used per mount, percent"
    )
    inodes_used_percent: Thresholds = Field(
        default=Thresholds(warn=80, critical=90), description="Inodes used per mount, percent"
    )
    load_per_core: Thresholds = Field(
        default=Thresholds(warn=1.5, critical=3.0), description="5-minute load average divided by the cores"
    )
    memory_available_percent: Thresholds = Field(
        default=Thresholds(warn=15, critical=5),
        description="MemAvailable of MemTotal, percent (lower is worse)",
    )
    http_latency_ms: Thresholds = Field(
        default=Thresholds(warn=500, critical=2000), description="Latency of each host's health URL"
    )
    db_connections_percent: Thresholds = Field(
        default=Thresholds(warn=70, critical=90), description="Connections used of max_connections, percent"
    )
    redis_memory_percent: Thresholds = Field(
        default=Thresholds(warn=75, critical=90), description="Redis used_memory of maxmemory, percent"
    )
    long_query: Duration = Field(
        default=timedelta(minutes=5),
        description="Queries running longer warn; sessions waiting on a lock longer are critical",
    )
    replication_lag: Duration = Field(
        default=timedelta(seconds=30), description="Replica replay lag that warns (4x is critical)"
    )
    replica_conn_id: str | None = Field(
        default=None, description="Connection to a read replica whose lag is checked; null: none"
    )
    reminder_interval: Duration = Field(
        default=timedelta(hours=4), description="How often Slack is reminded of a check that stays failing"
    )
    airflow_api_url: str | None = Field(
        default=None,
        description="Airflow API base URL, for the scheduler, dag-processor and triggerer heartbeats",
    )
    alert_after: Annotated[AlertAfter, BeforeValidator(_same_for_both)] = Field(
        default_factory=lambda: AlertAfter(),
        description="Consecutive failing runs before a check alerts: one number, or per status "
        "{critical: 1, warn: 2}",
    )
    resolve_after: int = Field(
        default=2,
        ge=1,
        le=MAX_STREAK,
        description="Consecutive passing runs before a failing check is resolved",
    )
    max_messages_per_hour: int = Field(
        default=12,
        ge=1,
        le=120,
        description="Slack messages per hour at most; past it one summary says so and the rest waits",
    )
    maintenance_database: str = Field(
        default="postgres",
        min_length=1,
        description="Database on the application's server through which db_accepts_connections reads "
        "pg_database (the application database itself may refuse connections)",
    )


def _host_directory(value: str) -> str:
    try:
        _absolute_posix_path(value.format(root="/root"))
    except (KeyError, IndexError) as error:
        raise ValueError(f"{value!r}: unknown placeholder {error}; only {{root}} is known") from None
    return value


def _file_name_pattern(value: str) -> str:
    if not value or "/" in value or "\0" in value:
        raise ValueError(f"{value!r} must be a file name glob such as *.log (no '/')")
    return value


def _storage_url(value: Any) -> Any:
    from urllib.parse import urlsplit

    if isinstance(value, str) and not (urlsplit(value).scheme and "://" in value):
        raise ValueError(
            f"{value!r} is not a storage URL (e.g. file:///var/archive/logs or s3://bucket/logs)"
        )
    return value


def _config_source(value: Any) -> Any:
    """A URL with a scheme (an object-store prefix) as is; a path made absolute against the project."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("give a directory or an object-store URL (e.g. s3://bucket/config/production)")
    if "://" in value:
        return _storage_url(value)
    path = Path(value)
    return str(path if path.is_absolute() else PROJECT_ROOT / path)


#: Key and file name globs whose values the config plan never shows.
DEFAULT_CONFIG_MASK = ["*password*", "*passwd*", "*secret*", "*token*", "*key*", "*credential*", "*.pem"]


class ConfigSettings(_Model):
    source: Annotated[str, BeforeValidator(_config_source)] = Field(
        description=(
            "Where config_update_<env> reads the configuration set: a directory (relative to the "
            "project, or absolute) or an object-store prefix URL (ObjectStoragePath)"
        )
    )
    conn_id: str | None = Field(
        default=None, description="Airflow connection of the object store (none for a directory)"
    )
    mask: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CONFIG_MASK),
        description="Key and file name globs (case-insensitive) whose values the plan shows as ********",
    )
    report_field: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description=(
            "Field of the version endpoint's JSON that reports the active config set's id; when "
            "set, a host counts as updated only once it reports the new id"
        ),
    )
    max_bytes: int = Field(default=1024 * 1024, ge=1, description="Largest total size of a configuration set")


class LogSettings(_Model):
    schedule: str | None = Field(default="30 3 * * *", description="Cron schedule of log_cleanup_<env>")
    directories: list[Annotated[str, BeforeValidator(_host_directory)]] = Field(
        default_factory=list,
        description="Absolute directories on each host; {root} is the host's deploy root",
    )
    patterns: list[Annotated[str, BeforeValidator(_file_name_pattern)]] = Field(
        default_factory=lambda: ["*.log"],
        min_length=1,
        description="File name globs considered; their compressed form is the same + .gz",
    )
    compress_after_days: int = Field(
        default=7, ge=0, description="Files last written longer ago are gzipped (mtime kept)"
    )
    delete_after_days: int = Field(
        default=30, ge=1, description="Compressed files last written longer ago are deleted"
    )
    allow_partial_proc: bool = Field(
        default=False,
        description="Clean even when /proc hides other users' processes (their open logs may be "
        "touched); false: such a host is refused",
    )
    archive_to: Annotated[str, BeforeValidator(_storage_url)] | None = Field(
        default=None,
        description="ObjectStoragePath URL (file:///..., s3://bucket/prefix, ...) each compressed log "
        "is uploaded to, and its SHA-256 checked, before it may be deleted; none: deleted unarchived",
    )
    archive_conn_id: str | None = Field(
        default=None, description="Airflow connection of a remote archive store; none for file://"
    )
    archive_retention_days: int | None = Field(
        default=365,
        ge=1,
        description="Archived logs last written longer ago are removed from the archive; null: kept forever",
    )

    @model_validator(mode="after")
    def _delete_after_compress(self) -> LogSettings:
        if self.delete_after_days <= self.compress_after_days:
            raise ValueError("delete_after_days must be greater than compress_after_days")
        if self.archive_retention_days is not None and self.archive_retention_days <= self.delete_after_days:
            raise ValueError(
                "archive_retention_days must be greater than delete_after_days (an archived log would "
                "be pruned as soon as it is archived)"
            )
        return self


def _cron(value: Any) -> str:
    from croniter import croniter

    if not isinstance(value, str) or not croniter.is_valid(value):
        raise ValueError(f"{value!r} is not a cron expression (five fields, e.g. '0 18 * * 5')")
    return value


def _timezone(value: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
    return value


Cron = Annotated[str, BeforeValidator(_cron)]
TimeZone = Annotated[str, BeforeValidator(_timezone)]


class RecurringWindow(_Model):
    """A window that opens at every time of ``cron`` (read in ``timezone``) and lasts ``duration``."""

    cron: Cron = Field(description="When the window opens, a cron expression read in timezone")
    duration: Duration = Field(description="How long it stays open, e.g. 62h")
    timezone: TimeZone = Field(default="UTC", description="IANA time zone the cron expression is read in")


class FreezeWindow(_Model):
    """A time releases and migrations do not start: recurring (cron + duration) or a fixed range."""

    name: str = Field(pattern=NAME_PATTERN, description="Short name shown in refusals, e.g. weekend")
    reason: str = Field(
        min_length=1,
        max_length=REASON_MAX_LENGTH,
        pattern=REASON_PATTERN,
        description="Why, shown to whoever is refused",
    )
    cron: Cron | None = Field(default=None, description="Recurring: when the freeze starts (with duration)")
    duration: Duration | None = Field(default=None, description="Recurring: how long it lasts")
    timezone: TimeZone = Field(default="UTC", description="IANA time zone of cron")
    start: datetime | None = Field(default=None, description="Fixed: ISO 8601 time with offset")
    end: datetime | None = Field(default=None, description="Fixed: ISO 8601 time with offset, after start")

    @model_validator(mode="after")
    def _one_kind(self) -> FreezeWindow:
        recurring = self.cron is not None or self.duration is not None
        fixed = self.start is not None or self.end is not None
        if recurring == fixed:
            raise ValueError("give either cron and duration (recurring) or start and end (fixed), not both")
        if recurring and (self.cron is None or self.duration is None):
            raise ValueError("a recurring freeze needs both cron and duration")
        if fixed:
            if self.start is None or self.end is None:
                raise ValueError("a fixed freeze needs both start and end")
            if self.start.tzinfo is None or self.end.tzinfo is None:
                raise ValueError("start and end need a UTC offset, e.g. 2026-12-20T00:00:00+01:00")
            if self.end <= self.start:
                raise ValueError("end must be after start")
        return self


class DatabaseMaintenanceSettings(_Model):
    schedule: str | None = Field(default="0 4 * * 0", description="Cron schedule of db_maintenance_<env>")
    dead_tuple_threshold: int = Field(
        default=10_000, ge=0, description="A table is vacuumed above this many dead tuples..."
    )
    dead_tuple_ratio: float = Field(
        default=0.1, ge=0, le=1, description="...when they are also more than this share of its rows"
    )
    reindex_bloat_percent: Percent | None = Field(
        default=None,
        description="B-tree indexes bloated above this are rebuilt with REINDEX CONCURRENTLY; null: never",
    )
    bloat_min_size_mb: int = Field(
        default=1, ge=0, description="Tables and indexes smaller than this are left out of the bloat report"
    )
    report_unused_indexes: bool = Field(
        default=True, description="List indexes never scanned since the statistics were reset"
    )
    long_session: Duration = Field(
        default=timedelta(minutes=5),
        description="Sessions running a statement or idle in a transaction longer than this are reported",
    )
    lock_timeout: Duration = Field(
        default=timedelta(seconds=5), description="A maintenance statement waiting longer for a lock gives up"
    )
    statement_timeout: Duration = Field(
        default=timedelta(hours=1), description="No maintenance statement runs longer"
    )


class HttpSmokeTest(_Model):
    kind: Literal["http"] = "http"
    name: str = Field(pattern=r"^[a-z0-9_-]{1,40}$")
    path: str = Field(pattern=r"^/")
    expect_status: int = Field(default=200, ge=100, le=599)
    body_contains: str | None = None
    max_latency: Duration = timedelta(seconds=2)


class SqlSmokeTest(_Model):
    kind: Literal["sql"]
    name: str = Field(pattern=r"^[a-z0-9_-]{1,40}$")
    query: str
    expect: str | int | float | bool | None = None


def _smoke_test_kind(value: Any) -> str:
    return value.get("kind", "http") if isinstance(value, dict) else getattr(value, "kind", "http")


SmokeTest = Annotated[
    Annotated[HttpSmokeTest, Tag("http")] | Annotated[SqlSmokeTest, Tag("sql")],
    Discriminator(_smoke_test_kind),
]


class Environment(_Model):
    """A validated environment file. ``name`` is the file's stem and part of every DAG id."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    owner: str = Field(default="airlock", description="Owner shown on every DAG of the environment")
    hosts: list[Host] = Field(min_length=1)
    ssh: SSHSettings
    deploy: DeploySettings
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    approval: ApprovalSettings = Field(description="Stated for every environment: who approves its releases")
    database: DatabaseSettings
    migrations: MigrationSettings = Field(default_factory=MigrationSettings)
    backup: BackupSettings | None = None
    health: HealthSettings = Field(default_factory=HealthSettings)
    logs: LogSettings = Field(default_factory=LogSettings)
    config: ConfigSettings | None = Field(
        default=None, description="Configuration updates as releases (config_update_<env>); none: no such DAG"
    )
    db_maintenance: DatabaseMaintenanceSettings = Field(default_factory=DatabaseMaintenanceSettings)
    slack_conn_id: str | None = Field(
        default="airlock_slack", description="Slack webhook connection; null: no Slack"
    )
    redis_conn_id: str = Field(default="airlock_redis", description="Redis connection for locks")
    lock_ttl: Duration = Field(
        default=timedelta(hours=12),
        description=(
            "A crashed run's lock expires after this; at least approval.timeout plus the longest "
            "step timeout (backup.timeout, or 30 minutes)"
        ),
    )
    smoke_tests: list[SmokeTest] = Field(default_factory=list, description="Checks run after every wave")
    freezes: list[FreezeWindow] = Field(
        default_factory=list,
        description="Windows in which release_<env> and migrate_<env> refuse to start (rollback never does)",
    )
    freeze_approvers: list[str] = Field(
        default_factory=list,
        description=(
            "Airflow user ids who may approve a freeze_override (an emergency release during a "
            "freeze); empty: freezes cannot be overridden"
        ),
    )
    maintenance_windows: list[RecurringWindow] = Field(
        default_factory=list,
        description=(
            "Scheduled runs of db_maintenance_<env> and log_cleanup_<env> do their work only inside "
            "one of these (others skip); empty: any time"
        ),
    )
    queue: str | None = Field(
        default=None,
        pattern=QUEUE_PATTERN,
        description=(
            "Celery queue of every task of this environment's DAGs (e.g. workers inside the "
            "network zone that reaches its hosts); null: [operators] default_queue"
        ),
    )

    @field_validator("hosts")
    @classmethod
    def _unique_hosts(cls, hosts: list[Host]) -> list[Host]:
        for attribute, label in (
            ("name", "name"),
            ("ssh_target", "address:ssh_port"),
            ("app_url", "app_url"),
        ):
            seen: set[str] = set()
            for host in hosts:
                value = getattr(host, attribute)
                if value in seen:
                    raise ValueError(f"duplicate host {label} {value!r}")
                seen.add(value)
        return hosts

    @field_validator("freezes")
    @classmethod
    def _unique_freezes(cls, freezes: list[FreezeWindow]) -> list[FreezeWindow]:
        names = [freeze.name for freeze in freezes]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"duplicate freeze name {', '.join(duplicates)}")
        return freezes

    @model_validator(mode="after")
    def _lock_outlives_approval_and_step(self) -> Environment:
        """The lock is not renewed while a run waits for its approval: it must survive the whole
        wait and then the longest step (which renews it as it starts)."""
        # A freeze override asks for an approval even where releases need none.
        asks = self.approval.required or bool(self.freezes and self.freeze_approvers)
        waits = self.approval.timeout if asks else timedelta(0)
        longest, step = self.longest_step_timeout
        if self.lock_ttl < waits + longest:
            raise ValueError(
                f"lock_ttl ({_describe(self.lock_ttl)}) is shorter than approval.timeout "
                f"({_describe(waits)}) plus the longest step timeout, {step} ({_describe(longest)}): "
                f"set lock_ttl to at least {_describe(waits + longest)}"
            )
        return self

    @property
    def longest_step_timeout(self) -> tuple[timedelta, str]:
        """The longest execution timeout of a step under the lock, and the field that sets it."""
        if self.backup is not None and self.backup.timeout > STEP_TIMEOUT:
            return self.backup.timeout, "backup.timeout"
        return STEP_TIMEOUT, "the default step timeout"

    @model_validator(mode="after")
    def _waves_cover_all_hosts(self) -> Environment:
        self.waves  # noqa: B018 - computing the waves validates them
        return self

    @cached_property
    def waves(self) -> tuple[Wave, ...]:
        """Hosts per wave, in order; every host is in exactly one wave and no wave is empty."""
        total = len(self.hosts)
        reached = 0
        waves = []
        for number, size in enumerate(self.rollout.waves, start=1):
            target = math.ceil(total * int(size[:-1]) / 100) if isinstance(size, str) else size
            if target > total:
                raise ValueError(f"rollout.waves: wave {number} asks for {size} but there are {total} hosts")
            if target <= reached:
                raise ValueError(
                    f"rollout.waves: wave {number} ({size}) adds no host: waves are cumulative "
                    f"and the previous ones already reach {reached} of {total}"
                )
            waves.append(Wave(number=number, hosts=tuple(self.hosts[reached:target])))
            reached = target
        if reached != total:
            raise ValueError(
                f"rollout.waves: the last wave reaches {reached} of {total} hosts; it must reach all"
            )
        return tuple(waves)

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(f"environment {self.name} has no host {name!r}")

    def root_of(self, host: Host) -> str:
        return host.root or self.deploy.root


def load_environment(path: Path) -> Environment:
    """Read and validate one environment file; the file's stem is the environment's name."""

    def named_after_the_file(document: dict[str, Any]) -> dict[str, Any]:
        if document.get("name", path.stem) != path.stem:
            raise ValueError(f"name: {document['name']!r} must match the file name {path.stem!r}")
        return {**document, "name": path.stem}

    return load_settings_file(path, Environment, error=EnvironmentConfigError, prepare=named_after_the_file)


def environments_dir() -> Path:
    return Path(os.environ.get(ENVIRONMENTS_DIR_VARIABLE) or PROJECT_ROOT / "include" / "environments")


@dataclass(frozen=True)
class EnvironmentCatalog:
    """Every environment file in a directory: the valid ones and, separately, the broken ones."""

    environments: dict[str, Environment]
    errors: dict[Path, EnvironmentConfigError]

    def __iter__(self) -> Iterator[Environment]:
        return iter(self.environments.values())


def load_environments(directory: Path | None = None) -> EnvironmentCatalog:
    """Load ``*.yaml`` in ``directory`` (not subdirectories); a broken file never hides the others."""
    directory = directory or environments_dir()
    environments: dict[str, Environment] = {}
    errors: dict[Path, EnvironmentConfigError] = {}
    for path in sorted(directory.glob("*.yaml")):
        try:
            environments[path.stem] = load_environment(path)
        except EnvironmentConfigError as error:
            errors[path] = error
    return EnvironmentCatalog(environments=environments, errors=errors)
