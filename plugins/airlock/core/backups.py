"""What a backup is, independent of where it lives: its manifest, its name, which ones retention keeps.

A backup is a directory ``<destination>/<name>/`` holding the ``pg_dump`` output and a
``manifest.json`` (:class:`BackupManifest`), written last, so a directory without one is never a
backup. The manifest records the exact row count of every table, taken from the very snapshot
``pg_dump`` saved, so a verification (a real restore) compares counts exactly
(:func:`compare_row_counts`).

Retention (:func:`plan_retention`) keeps the newest verified backup of each of the last N hours,
days, weeks and months, never deletes the newest verified backup, keeps backups newer than it
(not yet verified, or kept for a failed verification's investigation) and keeps the safety
backups taken before releases and restores for ``retention.safety``.

No Airflow here: everything is plain data and decisions, unit-tested without services.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from airlock.config import BackupRetention, BackupSettings, Environment

MANIFEST = "manifest.json"
MANIFEST_TEMPORARY = f".{MANIFEST}."  # a manifest being replaced: never part of the backup
Kind = Literal["scheduled", "manual", "pre-release", "pre-restore"]
SAFETY_KINDS = frozenset({"pre-release", "pre-restore"})
# A backup's name as :func:`backup_name` makes it (an environment name is at most 31 characters).
BACKUP_NAME = r"[a-z0-9][a-z0-9-]{0,30}-[0-9]{8}T[0-9]{6}Z(-pre-release|-pre-restore)?"


class BackupError(RuntimeError):
    """A backup could not be taken, read or verified; the message says which and why."""


class BackupVerificationError(BackupError):
    """A backup's files or contents do not match its manifest."""


@dataclass(frozen=True)
class BackupFile:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class BackupManifest:
    """What a backup holds and how it was made; the JSON file next to the dump."""

    name: str
    environment: str
    kind: str
    database: str
    server_version: str
    pg_dump_version: str
    format: str
    compression: int
    started_at: datetime
    finished_at: datetime
    files: dict[str, BackupFile]
    row_counts: dict[str, int]
    dag_id: str | None = None
    run_id: str | None = None
    verified_at: datetime | None = None
    verified_by: str | None = None

    @property
    def size(self) -> int:
        return sum(f.bytes for f in self.files.values())

    @property
    def verified(self) -> bool:
        return self.verified_at is not None

    @property
    def dump_path(self) -> str:
        """The path ``pg_restore`` reads, relative to the backup directory."""
        return dump_path(self.format)

    def to_json(self) -> str:
        data = asdict(self)
        for key in ("started_at", "finished_at", "verified_at"):
            data[key] = data[key].isoformat() if data[key] else None
        data["bytes"] = self.size
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BackupManifest:
        data = json.loads(text)
        data.pop("bytes", None)
        for key in ("started_at", "finished_at", "verified_at"):
            data[key] = datetime.fromisoformat(data[key]) if data.get(key) else None
        data["files"] = {path: BackupFile(**digest) for path, digest in data["files"].items()}
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """The plain-JSON facts a task returns (XCom) and a plan shows."""
        return {
            "name": self.name,
            "kind": self.kind,
            "finished_at": self.finished_at.isoformat(),
            "bytes": self.size,
            "tables": len(self.row_counts),
            "rows": sum(self.row_counts.values()),
            "verified_at": self.verified_at.isoformat() if self.verified_at else None,
        }


def dump_path(dump_format: str) -> str:
    """Where ``pg_dump`` writes in a backup directory: a directory for the parallel format, else a file."""
    return "dump" if dump_format == "directory" else "database.dump"


def backup_name(environment: str, moment: datetime, kind: str) -> str:
    """``<env>-<UTC time>``, with ``-<kind>`` for safety backups (their retention differs)."""
    stamp = moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{environment}-{stamp}" if kind in ("scheduled", "manual") else f"{environment}-{stamp}-{kind}"


def backup_settings(environment: Environment) -> BackupSettings:
    """The environment's ``backup:`` section; an environment without one has no backups."""
    if environment.backup is None:
        raise BackupError(
            f"Environment {environment.name} has no backup section: add one to its environment file"
        )
    return environment.backup


# -- verifying ------------------------------------------------------------------------------------


def row_count_differences(expected: Mapping[str, int], restored: Mapping[str, int]) -> list[str]:
    """One line per table whose count differs (or that is on one side only), sorted by table."""
    return [
        f"{table}: {expected.get(table, 'absent')} in the backup, {restored.get(table, 'absent')} restored"
        for table in sorted(set(expected) | set(restored))
        if expected.get(table) != restored.get(table)
    ]


def compare_row_counts(manifest: BackupManifest, restored: Mapping[str, int]) -> None:
    """Raise :class:`BackupVerificationError` naming (up to 20) tables whose restored count differs."""
    differences = row_count_differences(manifest.row_counts, restored)
    if differences:
        raise BackupVerificationError(
            f"Backup {manifest.name} restored with different row counts: " + "; ".join(differences[:20])
        )


def require_fresh(
    environment: str, newest: BackupManifest | None, max_age: timedelta, now: datetime
) -> BackupManifest:
    """``newest`` (the newest verified backup), or a :class:`BackupError` saying it is missing or too old."""
    if newest is None:
        raise BackupError(f"{environment} has no verified backup: run backup_{environment} before releasing")
    age = now - newest.finished_at
    if age > max_age:
        raise BackupError(
            f"The newest verified backup of {environment} ({newest.name}) is {_hours(age)} old, "
            f"older than backup.max_age ({_hours(max_age)}): run backup_{environment} first"
        )
    return newest


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


# -- retention ------------------------------------------------------------------------------------

PERIODS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
}
# What one bucket of a period is called in a retention reason ("newest verified of its day").
_BUCKET_NOUN = {"hourly": "hour", "daily": "day", "weekly": "week", "monthly": "month"}


@dataclass(frozen=True)
class RetentionPlan:
    keep: dict[str, str] = field(default_factory=dict)  # name -> why
    remove: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"keep": self.keep, "remove": self.remove}


def plan_retention(
    backups: Sequence[BackupManifest], retention: BackupRetention, now: datetime
) -> RetentionPlan:
    """Which backups stay and which go; pure, so it can be shown before anything is deleted."""
    keep: dict[str, str] = {}
    regular = sorted((b for b in backups if b.kind not in SAFETY_KINDS), key=lambda b: b.finished_at)
    verified = [b for b in regular if b.verified]
    if verified:
        keep[verified[-1].name] = "newest verified backup"
    for period, bucket_of in PERIODS.items():
        limit = getattr(retention, period)
        seen: list[tuple[int, ...]] = []
        for backup in reversed(verified):
            bucket = bucket_of(backup.finished_at.astimezone(UTC))
            if bucket in seen:
                continue
            seen.append(bucket)
            if len(seen) > limit:
                break
            keep.setdefault(backup.name, f"newest verified of its {_BUCKET_NOUN[period]}")
    newest_verified_at = verified[-1].finished_at if verified else None
    for backup in regular:
        if not backup.verified and (newest_verified_at is None or backup.finished_at > newest_verified_at):
            keep.setdefault(backup.name, "newer than the newest verified backup (not verified)")
    for backup in backups:
        if backup.kind in SAFETY_KINDS and now - backup.finished_at <= retention.safety:
            keep[backup.name] = f"{backup.kind} safety backup younger than {retention.safety}"
    remove = [b.name for b in sorted(backups, key=lambda b: b.finished_at) if b.name not in keep]
    return RetentionPlan(keep=keep, remove=remove)
