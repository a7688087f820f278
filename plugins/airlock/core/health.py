"""Health grading and alert decisions: what a measurement means, and what Slack should hear.

Every check returns :class:`CheckResult` rows (check, target, status, value, threshold, message,
duration). A check that cannot measure what it watches (host unreachable, database down) reports
``critical`` instead of raising, so one broken target never hides the others. ``skipped`` means
the check is not configured for the environment; it is never counted as ok or as failing.

Alerting keeps one :class:`AlertState` per (environment, check, target): what Slack knows, the
streak of consecutive failing or passing runs (the hysteresis of ``health.alert_after`` and
``health.resolve_after``) and a line Slack has not accepted yet. :func:`plan_alerts` turns one
run's results, those states and the active :class:`Silence` rows into the next states and the
notifications of the run, which the ``alert`` task sends as one message per environment:
ok -> warn/critical after ``alert_after`` runs (alert), warn -> critical (alert), failing -> ok
after ``resolve_after`` runs (resolved), still failing after the reminder interval (reminder).

Nothing here does I/O: the probes (``airlock.tasks.health``) measure, this module grades.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any

from airlock.config import Environment, HealthSettings, Thresholds
from airlock.config.environment import AlertAfter, parse_duration

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


def accepts_connections_result(
    target: str, database: str, allowed: bool | None, through: str, duration_ms: float
) -> CheckResult:
    """Whether ``database`` takes connections, from its ``pg_database`` row read through ``through``.

    ``allowed`` None means there is no such database. A restore swap that failed half-way can
    leave the application database closed (``datallowconn = false``) or renamed: both critical.
    """
    check = "db_accepts_connections"
    threshold = "datallowconn true"
    if allowed is None:
        message = f"database {database} does not exist (read through {through}); see the restore runbook"
        return CheckResult(check, target, Status.CRITICAL, None, threshold, message, duration_ms)
    if not allowed:
        message = (
            f"database {database} refuses connections (datallowconn = false, read through {through}), "
            "as a failed restore swap leaves it"
        )
        return CheckResult(check, target, Status.CRITICAL, 0.0, threshold, message, duration_ms)
    message = f"database {database} accepts connections"
    return CheckResult(check, target, Status.OK, 1.0, threshold, message, duration_ms)


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
class AlertRules:
    """When a check alerts, reminds and resolves (``health.*`` of the environment file)."""

    reminder_interval: timedelta
    alert_after: AlertAfter = field(default_factory=AlertAfter)
    resolve_after: int = 2

    @classmethod
    def of(cls, health: HealthSettings) -> AlertRules:
        return cls(health.reminder_interval, health.alert_after, health.resolve_after)


@dataclass(frozen=True)
class AlertState:
    """One check's recent runs and what Slack was told about it.

    ``status`` is the status Slack knows (ok until an alert is decided), since ``since``, told at
    ``notified_at``. ``failing_runs``/``passing_runs`` count the consecutive runs of the current
    streak (begun at ``streak_since``): the hysteresis. ``pending`` is a line Slack has not
    accepted yet (``pending_kind``: its section, ``health_alert``...), tried ``attempts`` times
    since ``pending_since``, sent again by the next run. ``updated_at`` says which copy is newer
    when the ops store and Redis disagree.
    """

    status: Status
    since: str
    notified_at: str
    failing_runs: int = 0
    passing_runs: int = 0
    streak_since: str = ""
    pending: str | None = None
    pending_kind: str | None = None
    pending_since: str | None = None
    attempts: int = 0
    updated_at: str = ""

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "status": str(self.status)})

    @classmethod
    def from_json(cls, raw: str | bytes | Mapping[str, Any]) -> AlertState:
        """Also reads the older three-field states (``status``, ``since``, ``notified_at``)."""
        data = dict(raw) if isinstance(raw, Mapping) else json.loads(raw)
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**{**known, "status": Status(data["status"])})

    def newer(self, other: AlertState | None) -> AlertState:
        return self if other is None or self.updated_at >= other.updated_at else other

    def held(self, kind: str, line: str, now: datetime, *, attempted: bool) -> AlertState:
        """This state with ``line`` waiting for Slack (one more attempt when it was tried)."""
        same = self.pending == line
        return replace(
            self,
            pending=line,
            pending_kind=kind,
            pending_since=self.pending_since if same and self.pending_since else now.isoformat(),
            attempts=(self.attempts if same else 0) + (1 if attempted else 0),
        )

    def delivered(self) -> AlertState:
        return replace(self, pending=None, pending_kind=None, pending_since=None, attempts=0)


@dataclass(frozen=True)
class Notification:
    """A message to send: its Slack template, the result it is about, the status before, since when."""

    template: str
    result: CheckResult
    previous: Status | None
    since: datetime


def decide(
    result: CheckResult, previous: AlertState | None, now: datetime, rules: AlertRules
) -> tuple[AlertState | None, Notification | None]:
    """The new state of one check and the message to send, if any.

    ``previous`` None means the check was never seen: it counts as ok. A failing check alerts once
    it has failed ``alert_after`` runs in a row (per its status), a failing one resolves once it
    has passed ``resolve_after`` runs in a row, so a flapping check stays quiet. Moves between
    failing statuses alert only when they get worse; getting better but not ok waits for the
    reminder. A skipped check keeps its state and says nothing. A line still pending from an
    earlier run stays in the state (the caller decides what supersedes it).
    """
    if result.status is Status.SKIPPED:
        return previous, None
    stamp = now.isoformat()
    before = previous or AlertState(Status.OK, stamp, stamp, streak_since=stamp)
    failing = result.status.failing
    continues = before.failing_runs if failing else before.passing_runs
    counted = replace(
        before,
        failing_runs=before.failing_runs + 1 if failing else 0,
        passing_runs=0 if failing else before.passing_runs + 1,
        streak_since=before.streak_since if continues and before.streak_since else stamp,
        updated_at=stamp,
    )
    was = before.status
    if not failing:
        if was.failing and counted.passing_runs >= rules.resolve_after:
            announced = replace(counted, status=Status.OK, since=stamp, notified_at=stamp)
            return announced, Notification(
                "health_resolved", result, was, datetime.fromisoformat(before.since)
            )
        return counted, None
    if not was.failing:
        if counted.failing_runs < rules.alert_after.runs(str(result.status)):
            return counted, None
        since = counted.streak_since
        announced = replace(counted, status=result.status, since=since, notified_at=stamp)
        return announced, Notification("health_alert", result, was, datetime.fromisoformat(since))
    since = datetime.fromisoformat(before.since)
    if was is Status.WARN and result.status is Status.CRITICAL:
        announced = replace(counted, status=result.status, notified_at=stamp)
        return announced, Notification("health_alert", result, was, since)
    if now - datetime.fromisoformat(before.notified_at) >= rules.reminder_interval:
        announced = replace(counted, status=result.status, notified_at=stamp)
        return announced, Notification("health_reminder", result, was, since)
    return replace(counted, status=result.status), None


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


# --- silences ---------------------------------------------------------------------------------

#: What a silence's check and host patterns may hold: names and ``fnmatch`` wildcards.
SILENCE_PATTERN = r"^[A-Za-z0-9_.:*?\[\]/-]{1,100}$"
#: The longest a silence may last: longer is a threshold to change, not a silence.
MAX_SILENCE = timedelta(days=7)


@dataclass(frozen=True)
class Silence:
    """Mutes the alerts of checks matching ``check`` on targets matching ``host`` until ``ends_at``.

    ``host`` matches the whole target (``web-1:/``, ``airlock_demo_db``) or its host part (the
    ``web-1`` of ``web-1:/``), so ``web-1`` silences every check of that host.
    """

    id: int
    check: str
    host: str
    starts_at: datetime
    ends_at: datetime
    reason: str
    created_by: str

    def matches(self, check: str, target: str) -> bool:
        if not fnmatchcase(check, self.check):
            return False
        return fnmatchcase(target, self.host) or fnmatchcase(target.partition(":")[0], self.host)

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def describe(self) -> str:
        until = self.ends_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M")
        return f"#{self.id} {self.check} on {self.host} until {until} UTC by {self.created_by}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "starts_at": self.starts_at.isoformat(), "ends_at": self.ends_at.isoformat()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Silence:
        return cls(
            **{
                **data,
                "starts_at": datetime.fromisoformat(data["starts_at"]),
                "ends_at": datetime.fromisoformat(data["ends_at"]),
            }
        )


@dataclass(frozen=True)
class SilenceRequest:
    """A validated ``silence_<env>`` request: patterns, how long, why."""

    check: str
    host: str
    duration: timedelta
    reason: str


def silence_request(check: Any, host: Any, duration: Any, reason: Any) -> SilenceRequest:
    """Validate the params of ``silence_<env>``; raises ValueError naming the param at fault."""
    patterns = {}
    for name, value in (("check", check), ("host", host)):
        if not isinstance(value, str) or not re.fullmatch(SILENCE_PATTERN, value.strip()):
            raise ValueError(
                f"{name}: {value!r} is not a pattern of names and wildcards (* ? [..]), "
                "at most 100 characters"
            )
        patterns[name] = value.strip()
    try:
        length = parse_duration(duration)
    except ValueError as error:
        raise ValueError(f"duration: {error}") from None
    if length > MAX_SILENCE:
        raise ValueError(
            f"duration: {duration!r} is longer than {duration_text(MAX_SILENCE)}; "
            "change the threshold instead"
        )
    text = " ".join(str(reason or "").split())
    if len(text) < 3 or len(text) > 500 or "\n" in str(reason):
        raise ValueError("reason: give one line of 3 to 500 characters; it is kept with the silence")
    return SilenceRequest(patterns["check"], patterns["host"], length, text)


# --- one run's alerts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertPlan:
    """What one run of ``alert`` decided, before anything is sent.

    ``states``: the next state of every check (and of earlier checks with a line still pending);
    ``notifications``: what to announce now; ``muted``: what a silence kept back (its state stays
    unannounced, so the alert comes once the silence ends).
    """

    states: dict[tuple[str, str], AlertState]
    notifications: list[Notification]
    muted: list[tuple[Notification, Silence]] = field(default_factory=list)

    def retries(self) -> dict[tuple[str, str], AlertState]:
        """States whose line an earlier run could not deliver and nothing newer replaces."""
        fresh = {n.result.key for n in self.notifications}
        return {key: s for key, s in self.states.items() if s.pending and key not in fresh}


def plan_alerts(
    results: Iterable[CheckResult],
    previous: Mapping[tuple[str, str], AlertState],
    silences: Iterable[Silence],
    now: datetime,
    rules: AlertRules,
) -> AlertPlan:
    """Decide every result against its previous state; hold back what an active silence matches."""
    active = [s for s in silences if s.active(now)]
    states = {key: state for key, state in previous.items() if state.pending}
    notifications, muted = [], []
    for result in results:
        before = previous.get(result.key)
        state, notification = decide(result, before, now, rules)
        silence = notification and next((s for s in active if s.matches(*result.key)), None)
        if notification and silence:
            muted.append((notification, silence))
            kept = before or AlertState(Status.OK, now.isoformat(), now.isoformat())
            state = replace(state, status=kept.status, since=kept.since, notified_at=kept.notified_at)
        elif notification:
            notifications.append(notification)
            state = state.delivered()
        if state is not None:
            states[result.key] = state
    return AlertPlan(states, notifications, muted)


def sent_within_hour(sent: Iterable[datetime], now: datetime) -> int:
    """How many messages went out in the hour before ``now`` (the rate limit's count)."""
    return sum(1 for at in sent if now - timedelta(hours=1) < at <= now)


def next_slot(sent: Iterable[datetime], now: datetime, limit: int) -> datetime:
    """When the hour's window has room for one more message again."""
    recent = sorted(at for at in sent if now - timedelta(hours=1) < at <= now)
    return recent[-limit] + timedelta(hours=1) if len(recent) >= limit else now
