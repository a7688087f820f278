"""What the board reads about an environment, through ``airlock.hooks`` only.

Each function answers one question of the board (the overview of an environment, its
releases, its health history, its DORA figures) as plain JSON-ready data; :mod:`airlock.web.app`
serves them and :mod:`airlock.web.metrics` exposes the same facts to Prometheus.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from airlock.config import Environment
from airlock.core.backups import BackupManifest
from airlock.core.board import (
    check_strips,
    host_health,
    host_version,
    latest_per_check,
    open_alerts,
)
from airlock.core.dora import DoraReport, dora_report
from airlock.hooks.backup_store import BackupStore
from airlock.hooks.lock import AttentionMark, EnvironmentLock, LockQueue
from airlock.hooks.ops_history import AuditRow, OpsHistory

#: A check with no result for this long is not current, and not a host's health any more.
CURRENT = timedelta(days=2)


def run_url(dag_id: str, run_id: str) -> str:
    """The run's page in the Airflow UI (the board links each release to it)."""
    return f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def release_entry(row: AuditRow) -> dict[str, Any]:
    entry = row.to_dict()
    entry["approver"] = row.values["approved_by_name"] or row.values["approved_by"]
    entry["url"] = run_url(row.values["dag_id"], row.values["run_id"])
    duration = row.duration
    entry["duration_seconds"] = round(duration.total_seconds(), 3) if duration else None
    return entry


def releases(environment: Environment, limit: int) -> list[dict[str, Any]]:
    """Audit rows, newest first, each with its approver and a link to its run."""
    with OpsHistory.open(environment) as history:
        return [release_entry(row) for row in history.audit_rows(limit=limit)]


def last_release(history: OpsHistory) -> dict[str, Any] | None:
    rows = history.audit_rows(limit=1, actions=("release",))
    return release_entry(rows[0]) if rows else None


def newest_verified_backup(environment: Environment) -> BackupManifest | None:
    if environment.backup is None:
        return None
    verified = [manifest for manifest in BackupStore.of(environment).backups() if manifest.verified]
    return verified[-1] if verified else None


def backup_entry(manifest: BackupManifest | None, now: datetime) -> dict[str, Any] | None:
    if manifest is None:
        return None
    return {
        **manifest.summary(),
        "age_seconds": round((now - manifest.finished_at).total_seconds(), 1),
    }


@dataclass(frozen=True)
class LockState:
    holder: dict[str, Any] | None
    attention: dict[str, Any] | None
    #: The runs waiting for the lock (``rollout.on_lock_busy: wait``), first in line first.
    queue: list[dict[str, Any]]


def lock_state(environment: Environment) -> LockState:
    """Who holds the environment's lock (run, purpose, since), who waits for it, and whether the
    environment needs a person."""
    lock = EnvironmentLock(
        environment=environment.name, redis_conn_id=environment.redis_conn_id, ttl=environment.lock_ttl
    )
    holder = lock.holder()
    queue = [
        {
            "dag_id": run.dag_id,
            "run_id": run.run_id,
            "purpose": run.purpose,
            "triggered_by": run.triggered_by,
            "since": joined.isoformat(timespec="seconds"),
            "url": run_url(run.dag_id, run.run_id),
        }
        for run, joined in LockQueue(lock).waiting()
    ]
    attention = AttentionMark(environment=environment.name, redis_conn_id=environment.redis_conn_id).get()
    described = None
    if holder is not None:
        described = {key: value for key, value in asdict(holder).items() if key != "token"}
        if holder.dag_id:
            described["url"] = run_url(holder.dag_id, holder.run_id)
    return LockState(holder=described, attention=asdict(attention) if attention else None, queue=queue)


def overview(environment: Environment, now: datetime | None = None) -> dict[str, Any]:
    """One environment's card on the board, and its entry in ``GET /airlock/api/environments``."""
    now = now or datetime.now(UTC)
    with OpsHistory.open(environment) as history:
        latest = latest_per_check(history.latest_health(since=now - CURRENT))
        changes = history.host_changes()
        last = last_release(history)
    lock = lock_state(environment)
    return {
        "name": environment.name,
        "description": environment.description,
        "hosts": [
            {
                "name": host.name,
                "app_url": host.app_url,
                "version": host_version(host.name, latest, changes),
                "health": host_health(host.name, latest),
            }
            for host in environment.hosts
        ],
        "lock": lock.holder,
        "attention": lock.attention,
        "queue": lock.queue,
        "last_release": last,
        "backup": backup_entry(newest_verified_backup(environment), now),
        "alerts": open_alerts(latest),
    }


def health(environment: Environment, since: datetime, limit: int) -> dict[str, Any]:
    """The health history since ``since`` (newest first), and per check its strip and trend."""
    with OpsHistory.open(environment) as history:
        rows = history.health_rows(since=since, limit=limit)
    return {
        "environment": environment.name,
        "since": since.isoformat(),
        "rows": [row.to_dict() for row in rows],
        "checks": check_strips(rows),
    }


def dora(environment: Environment, days: int, now: datetime | None = None) -> DoraReport:
    with OpsHistory.open(environment) as history:
        return dora_figures(history, days, now or datetime.now(UTC))


def dora_figures(history: OpsHistory, days: int, now: datetime) -> DoraReport:
    runs = history.audited_runs(since=now - timedelta(days=days))
    return dora_report(runs, days=days, now=now)
