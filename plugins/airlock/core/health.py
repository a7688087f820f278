"""Health grading and alert decisions: what a measurement means, and what Slack should hear.

Every check returns :class:`CheckResult` rows (check, target, status, value, threshold, message,
duration). A check that cannot measure what it watches (host unreachable, database down) reports
``critical`` instead of raising, so one broken target never hides the others. ``skipped`` means
the check is not configured for the environment; it is never counted as ok or as failing.

Alerting keeps one :class:`AlertState` per (environment, check, target): the last status, since
when, and when Slack was last told about it. :func:`decide` turns a new result and that state into
the next state and, on change only, a :class:`Notification`: ok -> warn/critical (alert),
warn -> critical (alert), warn/critical -> ok (resolved), still failing after the reminder
interval (reminder).

Nothing here does I/O: the probes (``airlock.tasks.health``) measure, this module grades.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from airlock.config import Environment, HealthSettings, Thresholds

#: How long an alert state lives: a check silent for longer is as good as new (a target that
#: disappears from the environment file leaves its state behind this long at most).
STATE_TTL = timedelta(days=14)
#: The components ``/api/v2/monitor/health`` of the Airflow API reports on.
AIRFLOW_COMPONENTS = ("metadatabase", "scheduler", "dag_processor", "triggerer")


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    CRITICAL = "critical"
    SKIPPED = "skipped"

    @property
    def failing(self) -> bool:
        return self in (Status.WARN, Status.CRITICAL)


@dataclass(frozen=True)
class CheckResult:
    """One measurement of one target. ``value`` is in the unit the message names."""

    check: str
    target: str
    status: Status
    value: float | None
    threshold: str | None
    message: str
    duration_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": str(self.status)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckResult:
        return cls(**{**data, "status": Status(data["status"])})

    @property
    def key(self) -> tuple[str, str]:
        return self.check, self.target


def to_xcom(results: Iterable[CheckResult]) -> list[dict[str, Any]]:
    """Results as a task returns them (plain JSON), read back with :func:`from_xcom`."""
    return [r.to_dict() for r in results]


def from_xcom(values: Iterable[Mapping[str, Any]]) -> list[CheckResult]:
    return [CheckResult.from_dict(value) for value in values]


class Stopwatch:
    """Milliseconds since it was started: every result's ``duration_ms``."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 1)


def grade(value: float, thresholds: Thresholds) -> Status:
    """Compare against warn/critical; when critical is below warn, lower values are worse."""
    if thresholds.critical >= thresholds.warn:
        if value >= thresholds.critical:
            return Status.CRITICAL
        return Status.WARN if value >= thresholds.warn else Status.OK
    if value <= thresholds.critical:
        return Status.CRITICAL
    return Status.WARN if value <= thresholds.warn else Status.OK


def describe_thresholds(thresholds: Thresholds, unit: str = "") -> str:
    return f"warn {thresholds.warn:g}{unit}, critical {thresholds.critical:g}{unit}"


def measured(
    check: str,
    target: str,
    thresholds: Thresholds,
    value: float,
    unit: str,
    what: str,
    duration_ms: float,
) -> CheckResult:
    """A value graded against its thresholds, e.g. ``/: disk used 91.0%``."""
    return CheckResult(
        check=check,
        target=target,
        status=grade(value, thresholds),
        value=round(value, 2),
        threshold=describe_thresholds(thresholds, unit),
        message=f"{what} {value:.1f}{unit}",
        duration_ms=duration_ms,
    )


def failed(check: str, target: str, message: str, duration_ms: float) -> CheckResult:
    """A check that could not measure what it watches: critical."""
    return CheckResult(check, target, Status.CRITICAL, None, None, message, duration_ms)


def skipped(check: str, target: str, message: str) -> CheckResult:
    return CheckResult(check, target, Status.SKIPPED, None, None, message, 0.0)


def hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


# --- grading what the probes read ------------------------------------------------------------


def app_result(
    host: str,
    url: str,
    status: int,
    payload: Any,
    version: str | None,
    latency_ms: float,
    thresholds: Thresholds,
) -> CheckResult:
    """The app's health URL: status 200 or critical, then latency against ``http_latency_ms``."""
    served = f"version {version}" if version else "version unknown"
    if status != 200:
        reason = payload.get("reason") if isinstance(payload, dict) else None
        return CheckResult(
            "app",
            host,
            Status.CRITICAL,
            latency_ms,
            "status 200",
            f"GET {url} answered {status}" + (f" ({reason})" if reason else "") + f", {served}",
            latency_ms,
        )
    return CheckResult(
        "app",
        host,
        grade(latency_ms, thresholds),
        latency_ms,
        describe_thresholds(thresholds, " ms"),
        f"healthy in {latency_ms:.0f} ms, {served}",
        latency_ms,
    )


def used_percent(used: int, available: int) -> float:
    total = used + available
    return 100.0 * used / total if total else 0.0


def parse_df(output: str) -> list[tuple[int, int, int]]:
    """``df -P`` lines after the header: (total, used, available) per line, in its unit."""
    rows = []
    for line in output.strip().splitlines()[1:]:
        fields = line.split()
        total, used, available = (int(field) if field.isdigit() else 0 for field in fields[1:4])
        rows.append((total, used, available))
    return rows


def parse_meminfo(output: str) -> dict[str, int]:
    values = {}
    for line in output.splitlines():
        name, _, rest = line.partition(":")
        if rest.split():
            values[name.strip()] = int(rest.split()[0])
    return values


def database_results(
    target: str, health: HealthSettings, stats: tuple[Any, ...], duration_ms: float
) -> list[CheckResult]:
    """Connections, long queries, blocked sessions and size from one ``DATABASE_STATS`` row."""
    connections, maximum, size, long_queries, long_detail, blocked, blocked_seconds = stats
    percent = 100.0 * connections / maximum
    limit = f"{int(health.long_query.total_seconds())} s"
    blocked_status = Status.OK
    if blocked:
        blocked_status = (
            Status.CRITICAL if blocked_seconds > health.long_query.total_seconds() else Status.WARN
        )
    return [
        CheckResult(
            "db_connections",
            target,
            grade(percent, health.db_connections_percent),
            round(percent, 1),
            describe_thresholds(health.db_connections_percent, "%"),
            f"{connections} of {maximum} connections used ({percent:.0f}%)",
            duration_ms,
        ),
        CheckResult(
            "db_long_queries",
            target,
            Status.WARN if long_queries else Status.OK,
            float(long_queries),
            f"running longer than {limit}",
            f"{long_queries} queries running longer than {limit}"
            + (f": {long_detail}" if long_detail else ""),
            duration_ms,
        ),
        CheckResult(
            "db_blocked",
            target,
            blocked_status,
            float(blocked),
            f"warn on any, critical when waiting longer than {limit}",
            f"{blocked} sessions waiting on a lock"
            + (f", the longest for {blocked_seconds:.0f} s" if blocked else ""),
            duration_ms,
        ),
        CheckResult(
            "db_size", target, Status.OK, round(size / 2**20, 1), None, f"{size / 2**20:.1f} MB", duration_ms
        ),
    ]


def replication_result(target: str, lag: float | None, limit: timedelta, duration_ms: float) -> CheckResult:
    """Seconds the replica's replay is behind: warn above ``limit``, critical above 4x.

    ``lag`` None means the server is not a replica (not in recovery): critical.
    """
    if lag is None:
        return failed(
            "db_replication_lag", target, "this server is not a replica (not in recovery)", duration_ms
        )
    seconds = limit.total_seconds()
    thresholds = Thresholds(warn=seconds, critical=seconds * 4)
    return measured("db_replication_lag", target, thresholds, float(lag), " s", "replay lag", duration_ms)


def redis_memory_result(
    target: str, used: int, maxmemory: int, thresholds: Thresholds, duration_ms: float
) -> CheckResult:
    """Memory used against ``maxmemory``; ok when no limit is set."""
    if not maxmemory:
        return CheckResult(
            "redis_memory",
            target,
            Status.OK,
            None,
            None,
            f"{used / 2**20:.1f} MB used; no maxmemory set, so no limit to compare with",
            duration_ms,
        )
    return measured(
        "redis_memory", target, thresholds, 100.0 * used / maxmemory, "%", "of maxmemory used", duration_ms
    )


def backup_age_result(
    target: str,
    newest: tuple[str, datetime] | None,
    max_age: timedelta,
    now: datetime,
    duration_ms: float,
) -> CheckResult:
    """The newest verified backup's age (``newest`` is its name and finish time) against ``max_age``."""
    threshold = f"critical above {hours(max_age)}"
    if newest is None:
        return CheckResult(
            "backup_age", target, Status.CRITICAL, None, threshold, "no verified backup found", duration_ms
        )
    name, finished_at = newest
    age = now - finished_at
    return CheckResult(
        "backup_age",
        target,
        Status.CRITICAL if age > max_age else Status.OK,
        round(age.total_seconds() / 3600, 2),
        threshold,
        f"newest verified backup {name} is {hours(age)} old",
        duration_ms,
    )


def airflow_results(payload: Mapping[str, Any], now: datetime, duration_ms: float) -> list[CheckResult]:
    """Each Airflow component's status and heartbeat age from ``/api/v2/monitor/health``."""
    results = []
    for component in AIRFLOW_COMPONENTS:
        info = payload.get(component) or {}
        status = info.get("status")
        heartbeat = info.get(f"latest_{component}_heartbeat")
        age = None
        if heartbeat:
            beat = datetime.fromisoformat(heartbeat)
            age = (now - (beat if beat.tzinfo else beat.replace(tzinfo=UTC))).total_seconds()
        seen = f", last heartbeat {age:.0f} s ago" if age is not None else ""
        if status == "healthy":
            results.append(
                CheckResult("airflow", component, Status.OK, age, "healthy", f"healthy{seen}", duration_ms)
            )
        elif status is None:
            results.append(
                CheckResult("airflow", component, Status.WARN, None, "healthy", "has never run", duration_ms)
            )
        else:
            results.append(
                CheckResult(
                    "airflow", component, Status.CRITICAL, age, "healthy", f"{status}{seen}", duration_ms
                )
            )
    return results


def task_result(target: str, reported: bool) -> CheckResult:
    """Whether a check task reported: one that died without results (timeout, crash) is critical."""
    if reported:
        return CheckResult("task", target, Status.OK, None, None, "reported", 0.0)
    message = "the check task failed without a result; see its log"
    return CheckResult("task", target, Status.CRITICAL, None, None, message, 0.0)


def history_result(environment: Environment, written: int | None) -> CheckResult:
    """Whether ``record`` wrote this run's history (``written`` rows, None when it failed)."""
    target = environment.database.ops_connection
    if written is None:
        message = "could not write the health_checks history (task record failed): see its log"
        return CheckResult("history", target, Status.CRITICAL, None, None, message, 0.0)
    return CheckResult("history", target, Status.OK, float(written), None, f"{written} results recorded", 0.0)


def failing_summary(results: Iterable[CheckResult], status: Status = Status.CRITICAL) -> list[str]:
    return [f"{r.check} on {r.target}: {r.message}" for r in results if r.status is status]


# --- alerting --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertState:
    """What Slack was last told about one check: its status, since when, and when it was told."""

    status: Status
    since: str
    notified_at: str

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "status": str(self.status)})

    @classmethod
    def from_json(cls, raw: str | bytes) -> AlertState:
        data = json.loads(raw)
        return cls(status=Status(data["status"]), since=data["since"], notified_at=data["notified_at"])


@dataclass(frozen=True)
class Notification:
    """A message to send: its Slack template, the result it is about, the status before, since when."""

    template: str
    result: CheckResult
    previous: Status | None
    since: datetime


def decide(
    result: CheckResult, previous: AlertState | None, now: datetime, reminder_interval: timedelta
) -> tuple[AlertState | None, Notification | None]:
    """The new state of one check and the message to send, if any.

    ``previous`` None means the check was never seen: it counts as ok. Moves between failing
    statuses alert only when they get worse; getting better but not ok waits for the reminder.
    A skipped check keeps its state and says nothing.
    """
    if result.status is Status.SKIPPED:
        return previous, None
    was = previous.status if previous else Status.OK
    stamp = now.isoformat()
    if not result.status.failing:
        if was.failing:
            notification = Notification(
                "health_resolved", result, was, datetime.fromisoformat(previous.since)
            )
            return AlertState(Status.OK, stamp, stamp), notification
        return (
            previous if previous and previous.status is Status.OK else AlertState(Status.OK, stamp, stamp)
        ), None
    if not was.failing:
        return AlertState(result.status, stamp, stamp), Notification("health_alert", result, was, now)
    since = datetime.fromisoformat(previous.since)
    if was is Status.WARN and result.status is Status.CRITICAL:
        return AlertState(result.status, previous.since, stamp), Notification(
            "health_alert", result, was, since
        )
    if now - datetime.fromisoformat(previous.notified_at) >= reminder_interval:
        return AlertState(result.status, previous.since, stamp), Notification(
            "health_reminder", result, was, since
        )
    return AlertState(result.status, previous.since, previous.notified_at), None


def restored(previous: AlertState, now: datetime) -> AlertState:
    """A state recovered from the history counts as already announced: the reminder clock restarts."""
    return AlertState(previous.status, previous.since, now.isoformat())


def unannounced(now: datetime) -> AlertState:
    """The explicit ok state kept when an alert was not delivered and nothing was stored before.

    Stored so the history (which will hold this run's failing result) cannot make the alert look
    already announced next run.
    """
    return AlertState(Status.OK, now.isoformat(), now.isoformat())


def duration_text(delta: timedelta) -> str:
    """``35 min``, ``2 h``, ``1 h 35 min``: how long a problem has lasted, as messages say it."""
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours_, minutes = divmod(minutes, 60)
    return f"{hours_} h {minutes} min" if minutes else f"{hours_} h"


def notification_fields(environment: str, notification: Notification, now: datetime) -> dict[str, str]:
    """The fields of the ``health_*`` Slack templates for one notification."""
    result = notification.result
    return {
        "environment": environment,
        "dag_id": f"health_{environment}",
        "check": result.check,
        "target": result.target,
        "status": str(result.status).upper(),
        "previous": str(notification.previous),
        "message": result.message,
        "threshold": result.threshold or "n/a",
        "duration": duration_text(now - notification.since),
    }
