"""Health checks of an environment, their history, and Slack alerts on change only.

Every check returns :class:`CheckResult` rows (check, target, status, value, threshold, message,
duration). A check that cannot measure what it watches (host unreachable, database down) reports
``critical`` instead of raising, so one broken target never hides the others. ``skipped`` means
the check is not configured for the environment; it is never counted as ok or as failing.

History: every result is a row of ``<ops_schema>.health_checks`` (``include/sql/health.sql``).

Alerting (:func:`send_alerts`) keeps one state per (environment, check, target) in Redis under
``airlock:health:<env>:<check>:<target>``: the last status, since when, and when Slack was last
told about it. Slack hears about a change only: ok -> warn/critical (alert), warn -> critical (alert),
warn/critical -> ok (resolved), still failing after ``health.reminder_interval`` (reminder). If a
key is lost (Redis flushed or restarted without persistence), the previous status comes from the
history table instead, so a check that was already failing stays quiet: losing the state never
re-fires an alert, and a check sends at most one message per run in every case. A message Slack
did not accept (outage, webhook error) is not recorded as sent: the stored state stays what Slack
was last told, so the next run sends it again (alert, reminder or resolved).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from airlock.config import PROJECT_ROOT, Environment, Host, Thresholds
from airlock.notifications.slack import post, render

SCHEMA_SQL = PROJECT_ROOT / "include" / "sql" / "health.sql"
STATE_PREFIX = "airlock:health"
#: A target that disappears from the environment file leaves its key behind this long at most.
STATE_TTL = timedelta(days=14)
HTTP_TIMEOUT_SECONDS = 10

log = logging.getLogger(__name__)


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


class _Timer:
    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 1)


def _measured(
    check: str, target: str, thresholds: Thresholds, value: float, unit: str, what: str, timer: _Timer
) -> CheckResult:
    return CheckResult(
        check=check,
        target=target,
        status=grade(value, thresholds),
        value=round(value, 2),
        threshold=describe_thresholds(thresholds, unit),
        message=f"{what} {value:.1f}{unit}",
        duration_ms=timer.ms,
    )


def _failed(check: str, target: str, message: str, timer: _Timer) -> CheckResult:
    return CheckResult(check, target, Status.CRITICAL, None, None, message, timer.ms)


def _skipped(check: str, target: str, message: str) -> CheckResult:
    return CheckResult(check, target, Status.SKIPPED, None, None, message, 0.0)


# --- hosts -----------------------------------------------------------------------------------


def check_app(environment: Environment, host: Host) -> CheckResult:
    """``GET <app_url><health_path>``: status 200, latency against ``http_latency_ms``, version."""
    timer = _Timer()
    thresholds = environment.health.http_latency_ms
    url = host.app_url + environment.deploy.health_path
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except (OSError, urllib.error.URLError) as error:
        reason = getattr(error, "reason", error)
        return _failed("app", host.name, f"GET {url} got no answer: {reason}", timer)
    latency_ms = timer.ms
    try:
        payload = json.loads(body)
    except ValueError:
        payload = {}
    version = payload.get("version") if isinstance(payload, dict) else None
    if version is None:
        try:
            with urllib.request.urlopen(
                host.app_url + environment.deploy.version_path, timeout=HTTP_TIMEOUT_SECONDS
            ) as response:
                version = json.loads(response.read()).get("version")
        except (OSError, ValueError, AttributeError):
            version = None
    served = f"version {version}" if version else "version unknown"
    if status != 200:
        reason = payload.get("reason") if isinstance(payload, dict) else None
        return CheckResult(
            "app",
            host.name,
            Status.CRITICAL,
            latency_ms,
            "status 200",
            f"GET {url} answered {status}" + (f" ({reason})" if reason else "") + f", {served}",
            latency_ms,
        )
    return CheckResult(
        "app",
        host.name,
        grade(latency_ms, thresholds),
        latency_ms,
        describe_thresholds(thresholds, " ms"),
        f"healthy in {latency_ms:.0f} ms, {served}",
        latency_ms,
    )


def _percent(used: int, available: int) -> float:
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


def check_host_resources(environment: Environment, hook: Any, host: Host) -> list[CheckResult]:
    """Over SSH: disk and inode use per mount, load average per core, memory available (Linux)."""
    health = environment.health
    results = []
    for mount in health.mounts:
        target = f"{host.name}:{mount}"
        for check, flag, thresholds, what in (
            ("disk", "-k", health.disk_used_percent, "disk used"),
            ("inodes", "-i", health.inodes_used_percent, "inodes used"),
        ):
            timer = _Timer()
            result = hook.run(["df", "-P", flag, "--", mount], check=False)
            if result.exit_status != 0:
                detail = (result.stderr or result.stdout).strip()
                results.append(_failed(check, target, f"cannot read {mount}: {detail}", timer))
                continue
            [(total, used, available)] = parse_df(result.stdout)[:1] or [(0, 0, 0)]
            if total == 0:
                results.append(_skipped(check, target, f"{mount}: the filesystem reports no {what} counts"))
                continue
            results.append(
                _measured(
                    check, target, thresholds, _percent(used, available), "%", f"{mount}: {what}", timer
                )
            )

    timer = _Timer()
    result = hook.run_script("cat /proc/loadavg && getconf _NPROCESSORS_ONLN", check=False)
    lines = result.stdout.split("\n")
    if result.exit_status != 0 or len(lines) < 2:
        results.append(_failed("load", host.name, f"cannot read the load: {result.stderr.strip()}", timer))
    else:
        load5, cores = float(lines[0].split()[1]), max(int(lines[1].strip() or 1), 1)
        results.append(
            _measured(
                "load",
                host.name,
                health.load_per_core,
                load5 / cores,
                "",
                f"5-minute load per core ({cores} cores)",
                timer,
            )
        )

    timer = _Timer()
    result = hook.run(["cat", "/proc/meminfo"], check=False)
    memory = parse_meminfo(result.stdout)
    if result.exit_status != 0 or not memory.get("MemTotal") or "MemAvailable" not in memory:
        results.append(_failed("memory", host.name, "cannot read MemAvailable from /proc/meminfo", timer))
    else:
        percent = 100.0 * memory["MemAvailable"] / memory["MemTotal"]
        results.append(
            _measured(
                "memory", host.name, health.memory_available_percent, percent, "%", "memory available", timer
            )
        )
    return results


def check_host(environment: Environment, host_name: str) -> list[CheckResult]:
    """Every check of one host: the app over HTTP, then SSH and the host's resources."""
    from airlock.hooks.hosts import host_hook

    host = environment.host(host_name)
    results = [check_app(environment, host)]
    timer = _Timer()
    hook = host_hook(environment, host)
    try:
        try:
            hook.get_conn()
        except Exception as error:  # unreachable, wrong host key, refused login: the finding itself
            return [*results, _failed("ssh", host.name, f"{host.ssh_target}: {error}", timer)]
        reachable = f"reachable as {host.ssh_target}"
        results.append(CheckResult("ssh", host.name, Status.OK, timer.ms, None, reachable, timer.ms))
        timer = _Timer()
        try:
            results += check_host_resources(environment, hook, host)
        except Exception as error:  # e.g. the connection dropped half-way
            results.append(
                _failed("resources", host.name, f"reading disk, load, memory failed: {error}", timer)
            )
    finally:
        hook.close()
    return results


# --- database --------------------------------------------------------------------------------

DATABASE_STATS = """
SELECT
    (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS connections,
    current_setting('max_connections')::int AS max_connections,
    pg_database_size(current_database()) AS size_bytes,
    (SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'
          AND now() - query_start > %(long_query)s) AS long_queries,
    (SELECT coalesce(string_agg(format('pid %%s for %%s s: %%s', pid,
                round(extract(epoch FROM now() - query_start)), left(query, 60)), '; '), '')
        FROM (SELECT pid, query_start, query FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'
                AND now() - query_start > %(long_query)s ORDER BY query_start LIMIT 3) AS longest)
        AS long_query_detail,
    (SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0) AS blocked,
    (SELECT coalesce(extract(epoch FROM max(now() - state_change)), 0) FROM pg_stat_activity
        WHERE datname = current_database() AND cardinality(pg_blocking_pids(pid)) > 0) AS blocked_seconds
"""

REPLICATION_LAG = """
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN NULL
    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
    ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())
END
"""


def check_database(environment: Environment) -> list[CheckResult]:
    """Connect latency, connections against ``max_connections``, long queries, blocked sessions,
    size, and the replica's lag when ``health.replica_conn_id`` is set."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    health = environment.health
    target = environment.database.conn_id
    timer = _Timer()
    try:
        connection = PostgresHook(postgres_conn_id=target).get_conn()
    except Exception as error:
        return [_failed("db_connect", target, f"cannot connect: {error}", timer)]
    results = [
        CheckResult(
            "db_connect", target, Status.OK, timer.ms, None, f"connected in {timer.ms:.0f} ms", timer.ms
        )
    ]
    try:
        timer = _Timer()
        with connection.cursor() as cursor:
            cursor.execute(DATABASE_STATS, {"long_query": health.long_query})
            connections, maximum, size, long_queries, long_detail, blocked, blocked_seconds = (
                cursor.fetchone()
            )
        elapsed = timer.ms
        percent = 100.0 * connections / maximum
        results.append(
            CheckResult(
                "db_connections",
                target,
                grade(percent, health.db_connections_percent),
                round(percent, 1),
                describe_thresholds(health.db_connections_percent, "%"),
                f"{connections} of {maximum} connections used ({percent:.0f}%)",
                elapsed,
            )
        )
        limit = f"{int(health.long_query.total_seconds())} s"
        results.append(
            CheckResult(
                "db_long_queries",
                target,
                Status.WARN if long_queries else Status.OK,
                float(long_queries),
                f"running longer than {limit}",
                f"{long_queries} queries running longer than {limit}"
                + (f": {long_detail}" if long_detail else ""),
                elapsed,
            )
        )
        blocked_status = Status.OK
        if blocked:
            blocked_status = (
                Status.CRITICAL if blocked_seconds > health.long_query.total_seconds() else Status.WARN
            )
        results.append(
            CheckResult(
                "db_blocked",
                target,
                blocked_status,
                float(blocked),
                f"warn on any, critical when waiting longer than {limit}",
                f"{blocked} sessions waiting on a lock"
                + (f", the longest for {blocked_seconds:.0f} s" if blocked else ""),
                elapsed,
            )
        )
        results.append(
            CheckResult(
                "db_size", target, Status.OK, round(size / 2**20, 1), None, f"{size / 2**20:.1f} MB", elapsed
            )
        )
    except Exception as error:
        results.append(_failed("db_stats", target, f"cannot read statistics: {error}", timer))
    finally:
        connection.close()
    if health.replica_conn_id:
        results.append(check_replication(environment))
    return results


def check_replication(environment: Environment) -> CheckResult:
    """Seconds the replica's replay is behind; warn above ``replication_lag``, critical above 4x."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    health = environment.health
    target = health.replica_conn_id or ""
    limit = health.replication_lag.total_seconds()
    timer = _Timer()
    try:
        (lag,) = PostgresHook(postgres_conn_id=target).get_first(REPLICATION_LAG)
    except Exception as error:
        return _failed("db_replication_lag", target, f"cannot query the replica: {error}", timer)
    if lag is None:
        return _failed("db_replication_lag", target, "this server is not a replica (not in recovery)", timer)
    lag = float(lag)
    thresholds = Thresholds(warn=limit, critical=limit * 4)
    return _measured("db_replication_lag", target, thresholds, lag, " s", "replay lag", timer)


# --- redis, backups, airflow -------------------------------------------------------------------


def check_redis(environment: Environment) -> list[CheckResult]:
    """PING latency, and memory used against ``maxmemory`` (ok when no limit is set)."""
    from airflow.providers.redis.hooks.redis import RedisHook

    target = environment.redis_conn_id
    timer = _Timer()
    try:
        client = RedisHook(redis_conn_id=target).get_conn()
        client.ping()
    except Exception as error:
        return [_failed("redis_ping", target, f"no PING answer: {error}", timer)]
    results = [
        CheckResult("redis_ping", target, Status.OK, timer.ms, None, f"PONG in {timer.ms:.0f} ms", timer.ms)
    ]
    timer = _Timer()
    try:
        memory = client.info("memory")
    except Exception as error:
        return [*results, _failed("redis_memory", target, f"INFO memory failed: {error}", timer)]
    used, limit = int(memory["used_memory"]), int(memory.get("maxmemory") or 0)
    if not limit:
        results.append(
            CheckResult(
                "redis_memory",
                target,
                Status.OK,
                None,
                None,
                f"{used / 2**20:.1f} MB used; no maxmemory set, so no limit to compare with",
                timer.ms,
            )
        )
    else:
        thresholds = environment.health.redis_memory_percent
        results.append(
            _measured(
                "redis_memory", target, thresholds, 100.0 * used / limit, "%", "of maxmemory used", timer
            )
        )
    return results


def check_backup(environment: Environment, now: datetime | None = None) -> list[CheckResult]:
    """Age of the newest verified backup against ``backup.max_age``."""
    target = environment.name
    if environment.backup is None:
        return [_skipped("backup_age", target, "not configured: the environment has no backup section")]
    try:
        from airlock.tasks.backup import newest_verified
    except ImportError:
        return [_skipped("backup_age", target, "not configured: the backup module is not installed")]
    timer = _Timer()
    limit = environment.backup.max_age
    try:
        manifest = newest_verified(environment)
    except Exception as error:
        return [_failed("backup_age", target, f"cannot list backups: {error}", timer)]
    threshold = f"critical above {_hours(limit)}"
    if manifest is None:
        return [
            CheckResult(
                "backup_age",
                target,
                Status.CRITICAL,
                None,
                threshold,
                "no verified backup found",
                timer.ms,
            )
        ]
    age = (now or datetime.now(UTC)) - manifest.finished_at
    return [
        CheckResult(
            "backup_age",
            target,
            Status.CRITICAL if age > limit else Status.OK,
            round(age.total_seconds() / 3600, 2),
            threshold,
            f"newest verified backup {manifest.name} is {_hours(age)} old",
            timer.ms,
        )
    ]


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


AIRFLOW_COMPONENTS = ("metadatabase", "scheduler", "dag_processor", "triggerer")


def check_airflow(environment: Environment) -> list[CheckResult]:
    """Scheduler, dag-processor and triggerer heartbeats from ``/api/v2/monitor/health``."""
    base = environment.health.airflow_api_url
    if not base:
        return [_skipped("airflow", "airflow", "not configured: set health.airflow_api_url")]
    url = base.rstrip("/") + "/api/v2/monitor/health"
    timer = _Timer()
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_SECONDS) as response:
            payload = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError) as error:
        return [_failed("airflow", "api-server", f"GET {url} failed: {error}", timer)]
    now = datetime.now(UTC)
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
                CheckResult("airflow", component, Status.OK, age, "healthy", f"healthy{seen}", timer.ms)
            )
        elif status is None:
            results.append(
                CheckResult("airflow", component, Status.WARN, None, "healthy", "has never run", timer.ms)
            )
        else:
            results.append(
                CheckResult(
                    "airflow", component, Status.CRITICAL, age, "healthy", f"{status}{seen}", timer.ms
                )
            )
    return results


# --- history ---------------------------------------------------------------------------------


def _schema(environment: Environment):
    from psycopg import sql

    return sql.Identifier(environment.database.ops_schema)


@contextmanager
def ops_cursor(environment: Environment) -> Iterator[Any]:
    """A cursor on the ops database with ``health_checks`` created if missing; commits on success."""
    from airflow.providers.postgres.hooks.postgres import PostgresHook
    from psycopg import sql

    hook = PostgresHook(postgres_conn_id=environment.database.ops_connection)
    with hook.get_conn() as connection, connection.cursor() as cursor:
        # Environments' first runs may start together: one creates the table, the others wait.
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext('airlock.health_checks'))")
        cursor.execute(sql.SQL(SCHEMA_SQL.read_text()).format(schema=_schema(environment)))
        connection.commit()
        yield cursor
        connection.commit()


def record_results(
    environment: Environment, *, dag_id: str, run_id: str, results: Iterable[CheckResult]
) -> int:
    """Write one history row per result; a retried run updates its rows instead of adding."""
    from psycopg import sql

    statement = sql.SQL(
        """
        INSERT INTO {schema}.health_checks (environment, dag_id, run_id, check_name, target, status,
            value, threshold, message, duration_ms)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (environment, run_id, check_name, target) DO UPDATE SET
            status = EXCLUDED.status, value = EXCLUDED.value, threshold = EXCLUDED.threshold,
            message = EXCLUDED.message, duration_ms = EXCLUDED.duration_ms, checked_at = now()
        """
    ).format(schema=_schema(environment))
    rows = [
        (
            environment.name,
            dag_id,
            run_id,
            r.check,
            r.target,
            str(r.status),
            r.value,
            r.threshold,
            r.message,
            r.duration_ms,
        )
        for r in results
    ]
    with ops_cursor(environment) as cursor:
        cursor.executemany(statement, rows)
    return len(rows)


def previous_from_history(environment: Environment, *, run_id: str) -> dict[tuple[str, str], AlertState]:
    """Each check's latest status before ``run_id`` and since when it has had it, from history.

    Only the last ``STATE_TTL`` counts: a check silent for longer is as good as new.
    """
    from psycopg import sql

    statement = sql.SQL(
        """
        SELECT DISTINCT ON (latest.check_name, latest.target)
            latest.check_name, latest.target, latest.status, latest.checked_at,
            (SELECT min(streak.checked_at) FROM {schema}.health_checks AS streak
              WHERE streak.environment = latest.environment AND streak.check_name = latest.check_name
                AND streak.target = latest.target AND streak.run_id <> %(run_id)s
                AND streak.checked_at > coalesce((
                    SELECT max(other.checked_at) FROM {schema}.health_checks AS other
                     WHERE other.environment = latest.environment
                       AND other.check_name = latest.check_name AND other.target = latest.target
                       AND other.status <> latest.status AND other.run_id <> %(run_id)s),
                    '-infinity')) AS since
        FROM {schema}.health_checks AS latest
        WHERE latest.environment = %(environment)s AND latest.run_id <> %(run_id)s
          AND latest.checked_at > now() - %(window)s
        ORDER BY latest.check_name, latest.target, latest.checked_at DESC
        """
    ).format(schema=_schema(environment))
    with ops_cursor(environment) as cursor:
        cursor.execute(statement, {"environment": environment.name, "run_id": run_id, "window": STATE_TTL})
        rows = cursor.fetchall()
    return {
        (check, target): AlertState(
            status=Status(status), since=(since or checked_at).isoformat(), notified_at=checked_at.isoformat()
        )
        for check, target, status, checked_at, since in rows
    }


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
    template: str
    result: CheckResult
    previous: Status | None
    since: datetime


def state_key(environment: Environment, check: str, target: str) -> str:
    return f"{STATE_PREFIX}:{environment.name}:{check}:{target}"


def decide(
    result: CheckResult, previous: AlertState | None, now: datetime, reminder_interval: timedelta
) -> tuple[AlertState | None, Notification | None]:
    """The new state of one check and the message to send, if any (pure: no I/O).

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


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def render_notification(environment: Environment, notification: Notification, now: datetime) -> str:
    result = notification.result
    return render(
        notification.template,
        environment=environment.name,
        dag_id=f"health_{environment.name}",
        check=result.check,
        target=result.target,
        status=str(result.status).upper(),
        previous=str(notification.previous),
        message=result.message,
        threshold=result.threshold or "n/a",
        duration=_duration(now - notification.since),
    )


def send_alerts(
    environment: Environment,
    results: Iterable[CheckResult],
    *,
    run_id: str,
    now: datetime | None = None,
    redis_client: Any = None,
    history: Callable[[], Mapping[tuple[str, str], AlertState]] | None = None,
    deliver: Callable[[str | None, str], bool] = post,
) -> list[str]:
    """Compare each result with its stored state, update the state, send what changed.

    Returns the texts delivered; a message that was not delivered leaves the state as it was, so
    the next run retries it (unless no Slack connection is configured: nothing to retry).
    State missing from Redis is taken from the history table (read at most once per run, and only
    when some key is missing). When Redis itself is unreachable,
    every state comes from the history for this run and nothing is saved: alerts still go out
    on change only, reminders wait until Redis is back.
    """
    now = now or datetime.now(UTC)
    if history is None:

        def history() -> Mapping[tuple[str, str], AlertState]:
            return previous_from_history(environment, run_id=run_id)

    results = list(results)
    keys = [state_key(environment, r.check, r.target) for r in results]
    try:
        if redis_client is None:
            from airflow.providers.redis.hooks.redis import RedisHook

            redis_client = RedisHook(redis_conn_id=environment.redis_conn_id).get_conn()
        stored = redis_client.mget(keys) if keys else []
    except Exception:
        log.warning(
            "Redis (%s) is unreachable: this run's alert state comes from the health history",
            environment.redis_conn_id,
            exc_info=True,
        )
        redis_client, stored = None, [None] * len(keys)
    recovered: Mapping[tuple[str, str], AlertState] | None = None
    sent = []
    for result, key, raw in zip(results, keys, stored, strict=True):
        if raw is not None:
            previous = AlertState.from_json(raw)
        else:
            if recovered is None:
                try:
                    recovered = history()
                except Exception:
                    log.warning(
                        "Could not read the health history; missing states count as ok", exc_info=True
                    )
                    recovered = {}
            previous = recovered.get(result.key)
            if previous is not None and previous.status.failing:
                log.info("Alert state of %s/%s restored from history: %s", *result.key, previous.status)
            # Restored failing states count as already announced: the reminder clock restarts.
            if previous is not None:
                previous = AlertState(previous.status, previous.since, now.isoformat())
        state, notification = decide(result, previous, now, environment.health.reminder_interval)
        if notification is not None:
            text = render_notification(environment, notification, now)
            if deliver(environment.slack_conn_id, text):
                sent.append(text)
            elif environment.slack_conn_id:
                # Not delivered: keep what Slack was last told, so the next run sends it again.
                # An explicit ok state when there was none, so the history (which will hold this
                # run's failing result) cannot make the alert look already announced.
                log.warning("Slack message not delivered; %s/%s will be retried next run", *result.key)
                state = previous or AlertState(Status.OK, now.isoformat(), now.isoformat())
        if state is not None and redis_client is not None:
            redis_client.set(key, state.to_json(), ex=int(STATE_TTL.total_seconds()))
    return sent


def failing_summary(results: Iterable[CheckResult], status: Status = Status.CRITICAL) -> list[str]:
    return [f"{r.check} on {r.target}: {r.message}" for r in results if r.status is status]


def history_result(environment: Environment, written: int | None) -> CheckResult:
    """Whether ``record`` wrote this run's history (``written`` rows, None when it failed)."""
    target = environment.database.ops_connection
    if written is None:
        message = "could not write the health_checks history (task record failed): see its log"
        return CheckResult("history", target, Status.CRITICAL, None, None, message, 0.0)
    return CheckResult("history", target, Status.OK, float(written), None, f"{written} results recorded", 0.0)


#: The DAG's check tasks, in the order their results are recorded.
CHECK_TASKS = ("check_host", "check_database", "check_redis", "check_backup", "check_airflow")


def collect_results(environment: Environment, ti: Any) -> list[CheckResult]:
    """Every check task's results in this run, plus one ``task`` result per check task.

    A check task returns results even when what it checks is broken, so a task without any
    died itself (timeout, crash): its ``task`` result is critical, and ok again (resolved) once
    it reports, like any other check.
    """
    results: list[CheckResult] = []
    for task_id in CHECK_TASKS:
        values = ti.xcom_pull(task_ids=[task_id]) or []
        reported = [CheckResult.from_dict(item) for value in values if value for item in value]
        results += reported
        if task_id == "check_host":
            seen = {r.target for r in reported if r.check == "app"}
            expected = [(f"{task_id}[{host.name}]", host.name in seen) for host in environment.hosts]
        else:
            expected = [(task_id, bool(reported))]
        for target, ok in expected:
            if ok:
                results.append(CheckResult("task", target, Status.OK, None, None, "reported", 0.0))
            else:
                message = "the check task failed without a result; see its log"
                results.append(CheckResult("task", target, Status.CRITICAL, None, None, message, 0.0))
    return results
