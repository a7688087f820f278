"""The tasks of ``health_<env>``: probes of hosts, app, database, Redis, backups and Airflow; history; alerts.

Each probe measures and returns :class:`~airlock.core.health.CheckResult` rows graded by
``airlock.core.health``; a probe that cannot measure what it watches reports ``critical`` instead
of raising, so one broken target never hides the others.

History: every result is a row of ``<ops_schema>.health_checks`` (``airlock.hooks.ops_store``).

Alerting (:func:`send_alerts`) keeps one state per (environment, check, target): durable in the
ops store (``health_alerts``), cached in Redis (``airlock.hooks.alert_state``), each run reading
both and writing both whatever Slack answers. It sends at most one message per environment and
run, grouping new problems, reminders and resolved checks (:func:`airlock.core.health.plan_alerts`
decides, with the hysteresis of ``health.alert_after`` and ``resolve_after``); silences of
``silence_<env>`` mute what they match; an hourly rate limit holds the rest after one summary. A
line Slack did not accept (outage, 429, webhook error) stays pending with its attempt count and
goes out with the next run's message: delivery is at least once, and the history's ``notified``
column says which results Slack heard of.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

from airflow.sdk import get_current_context
from airflow.sdk.exceptions import AirflowFailException

from airlock.config import Environment, Host
from airlock.core.health import (
    AlertRules,
    AlertState,
    CheckResult,
    Notification,
    Silence,
    Status,
    Stopwatch,
    accepts_connections_result,
    airflow_results,
    app_result,
    backup_age_result,
    database_results,
    failed,
    failing_summary,
    from_xcom,
    history_result,
    measured,
    next_slot,
    notification_fields,
    parse_df,
    parse_meminfo,
    plan_alerts,
    redis_memory_result,
    replication_result,
    sent_within_hour,
    skipped,
    task_result,
    to_xcom,
    used_percent,
)
from airlock.hooks.alert_state import AlertStateCache
from airlock.hooks.http import UNREACHABLE, fetch_json
from airlock.hooks.ops_store import (
    current_silences,
    deliveries_since,
    mark_notified,
    read_alert_states,
    record_delivery,
    record_health_results,
    save_alert_states,
)
from airlock.hooks.postgres import DatabaseAddress, first_row, session
from airlock.hooks.redis import redis_client
from airlock.notifications.slack import post, render

HTTP_TIMEOUT_SECONDS = 10

log = logging.getLogger(__name__)


class TaskIds:
    """The task ids of ``health_<env>``, used by the DAG file and by the task bodies."""

    CHECK_HOST = "check_host"
    CHECK_DATABASE = "check_database"
    CHECK_REDIS = "check_redis"
    CHECK_BACKUP = "check_backup"
    CHECK_AIRFLOW = "check_airflow"
    COLLECT = "collect"
    RECORD = "record"
    ALERT = "alert"
    VERDICT = "verdict"

    #: The check tasks, in the order their results are recorded.
    CHECKS = (CHECK_HOST, CHECK_DATABASE, CHECK_REDIS, CHECK_BACKUP, CHECK_AIRFLOW)

    @staticmethod
    def host_check(host_name: str) -> str:
        """The mapped ``check_host`` task of one host, as its ``task`` result names it."""
        return f"{TaskIds.CHECK_HOST}[{host_name}]"


# --- hosts -----------------------------------------------------------------------------------


def check_app(environment: Environment, host: Host) -> CheckResult:
    """``GET <app_url><health_path>``: status 200, latency against ``http_latency_ms``, version."""
    timer = Stopwatch()
    url = host.app_url + environment.deploy.health_path
    try:
        status, payload, latency = fetch_json(url, HTTP_TIMEOUT_SECONDS)
    except UNREACHABLE as error:
        reason = getattr(error, "reason", error)
        return failed("app", host.name, f"GET {url} got no answer: {reason}", timer.ms)
    latency_ms = round(latency * 1000, 1)
    version = payload.get("version") if isinstance(payload, dict) else None
    if version is None:
        try:
            _, served, _ = fetch_json(host.app_url + environment.deploy.version_path, HTTP_TIMEOUT_SECONDS)
        except UNREACHABLE:
            served = None
        version = served.get("version") if isinstance(served, dict) else None
    return app_result(
        host.name, url, status, payload, version, latency_ms, environment.health.http_latency_ms
    )


def check_host_resources(environment: Environment, hook: Any, host: Host) -> list[CheckResult]:
    """Over SSH (``hook``: the host's SSH hook): disk and inode use per mount, load per core, memory."""
    health = environment.health
    results = []
    for mount in health.mounts:
        target = f"{host.name}:{mount}"
        for check, flag, thresholds, what in (
            ("disk", "-k", health.disk_used_percent, "disk used"),
            ("inodes", "-i", health.inodes_used_percent, "inodes used"),
        ):
            timer = Stopwatch()
            result = hook.run(["df", "-P", flag, "--", mount], check=False)
            if result.exit_status != 0:
                detail = (result.stderr or result.stdout).strip()
                results.append(failed(check, target, f"cannot read {mount}: {detail}", timer.ms))
                continue
            [(total, used, available)] = parse_df(result.stdout)[:1] or [(0, 0, 0)]
            if total == 0:
                results.append(skipped(check, target, f"{mount}: the filesystem reports no {what} counts"))
                continue
            results.append(
                measured(
                    check,
                    target,
                    thresholds,
                    used_percent(used, available),
                    "%",
                    f"{mount}: {what}",
                    timer.ms,
                )
            )

    timer = Stopwatch()
    result = hook.run_script("cat /proc/loadavg && getconf _NPROCESSORS_ONLN", check=False)
    lines = result.stdout.split("\n")
    if result.exit_status != 0 or len(lines) < 2:
        results.append(failed("load", host.name, f"cannot read the load: {result.stderr.strip()}", timer.ms))
    else:
        load5, cores = float(lines[0].split()[1]), max(int(lines[1].strip() or 1), 1)
        results.append(
            measured(
                "load",
                host.name,
                health.load_per_core,
                load5 / cores,
                "",
                f"5-minute load per core ({cores} cores)",
                timer.ms,
            )
        )

    timer = Stopwatch()
    result = hook.run(["cat", "/proc/meminfo"], check=False)
    memory = parse_meminfo(result.stdout)
    if result.exit_status != 0 or not memory.get("MemTotal") or "MemAvailable" not in memory:
        results.append(failed("memory", host.name, "cannot read MemAvailable from /proc/meminfo", timer.ms))
    else:
        percent = 100.0 * memory["MemAvailable"] / memory["MemTotal"]
        results.append(
            measured(
                "memory",
                host.name,
                health.memory_available_percent,
                percent,
                "%",
                "memory available",
                timer.ms,
            )
        )
    return results


def check_host(environment: Environment, host_name: str) -> list[CheckResult]:
    """Every check of one host: the app over HTTP, then SSH and the host's resources."""
    from airlock.hooks.hosts import host_hook

    host = environment.host(host_name)
    results = [check_app(environment, host)]
    timer = Stopwatch()
    hook = host_hook(environment, host)
    try:
        try:
            hook.get_conn()
        except Exception as error:  # unreachable, wrong host key, refused login: the finding itself
            return [*results, failed("ssh", host.name, f"{host.ssh_target}: {error}", timer.ms)]
        reachable = f"reachable as {host.ssh_target}"
        results.append(CheckResult("ssh", host.name, Status.OK, timer.ms, None, reachable, timer.ms))
        timer = Stopwatch()
        try:
            results += check_host_resources(environment, hook, host)
        except Exception as error:  # e.g. the connection dropped half-way
            results.append(
                failed("resources", host.name, f"reading disk, load, memory failed: {error}", timer.ms)
            )
    finally:
        hook.close()
    return results


def report_host(environment: Environment, host_name: str) -> list[dict[str, Any]]:
    """The mapped ``check_host`` task: its map index shows the host; returns the results as XCom."""
    get_current_context()["host_name"] = host_name
    return to_xcom(check_host(environment, host_name))


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


DATABASE_ALLOWS_CONNECTIONS = "SELECT datallowconn FROM pg_database WHERE datname = %s"


def check_accepts_connections(environment: Environment) -> CheckResult:
    """Whether the application database takes connections (``pg_database.datallowconn``).

    Read through ``health.maintenance_database`` on the same server, with the application's own
    connection (its role and password): the application database itself refuses the session when
    the answer is no, and every role may connect to ``postgres`` and read ``pg_database``.
    """
    target = environment.database.conn_id
    through = environment.health.maintenance_database
    timer = Stopwatch()
    try:
        address = DatabaseAddress.of(target)
        with address.on(through).connect(autocommit=True) as connection:
            row = connection.execute(DATABASE_ALLOWS_CONNECTIONS, (address.dbname,)).fetchone()
    except Exception as error:
        message = f"cannot read pg_database through database {through}: {error}"
        return failed("db_accepts_connections", target, message, timer.ms)
    return accepts_connections_result(
        target, address.dbname, None if row is None else row[0], through, timer.ms
    )


def check_database(environment: Environment) -> list[CheckResult]:
    """Whether the database accepts connections, connect latency, connections against
    ``max_connections``, long queries, blocked sessions, size, and the replica's lag when
    ``health.replica_conn_id`` is set."""
    health = environment.health
    target = environment.database.conn_id
    results: list[CheckResult] = [check_accepts_connections(environment)]
    timer = Stopwatch()
    try:
        with session(target, autocommit=True) as connection:
            connected = f"connected in {timer.ms:.0f} ms"
            results.append(CheckResult("db_connect", target, Status.OK, timer.ms, None, connected, timer.ms))
            timer = Stopwatch()
            stats = connection.execute(DATABASE_STATS, {"long_query": health.long_query}).fetchone()
            elapsed = timer.ms
            results += database_results(target, health, stats, elapsed)
    except Exception as error:
        if not any(r.check == "db_connect" for r in results):
            return [*results, failed("db_connect", target, f"cannot connect: {error}", timer.ms)]
        results.append(failed("db_stats", target, f"cannot read statistics: {error}", timer.ms))
    if health.replica_conn_id:
        results.append(check_replication(environment))
    return results


def check_replication(environment: Environment) -> CheckResult:
    """Seconds the replica's replay is behind; warn above ``replication_lag``, critical above 4x."""
    health = environment.health
    target = health.replica_conn_id or ""
    timer = Stopwatch()
    try:
        (lag,) = first_row(target, REPLICATION_LAG)
    except Exception as error:
        return failed("db_replication_lag", target, f"cannot query the replica: {error}", timer.ms)
    return replication_result(target, lag, health.replication_lag, timer.ms)


# --- redis, backups, airflow -------------------------------------------------------------------


def check_redis(environment: Environment) -> list[CheckResult]:
    """PING latency, and memory used against ``maxmemory`` (ok when no limit is set)."""
    target = environment.redis_conn_id
    timer = Stopwatch()
    try:
        client = redis_client(target)
        client.ping()
    except Exception as error:
        return [failed("redis_ping", target, f"no PING answer: {error}", timer.ms)]
    results = [
        CheckResult("redis_ping", target, Status.OK, timer.ms, None, f"PONG in {timer.ms:.0f} ms", timer.ms)
    ]
    timer = Stopwatch()
    try:
        memory = client.info("memory")
    except Exception as error:
        return [*results, failed("redis_memory", target, f"INFO memory failed: {error}", timer.ms)]
    used, limit = int(memory["used_memory"]), int(memory.get("maxmemory") or 0)
    results.append(
        redis_memory_result(target, used, limit, environment.health.redis_memory_percent, timer.ms)
    )
    return results


def check_backup(environment: Environment, now: datetime | None = None) -> list[CheckResult]:
    """Age of the newest verified backup against ``backup.max_age``."""
    from airlock.tasks.backup import newest_verified  # pg_dump and object storage: not at parse time

    target = environment.name
    if environment.backup is None:
        return [skipped("backup_age", target, "not configured: the environment has no backup section")]
    timer = Stopwatch()
    try:
        manifest = newest_verified(environment)
    except Exception as error:
        return [failed("backup_age", target, f"cannot list backups: {error}", timer.ms)]
    newest = None if manifest is None else (manifest.name, manifest.finished_at)
    return [backup_age_result(target, newest, environment.backup.max_age, now or datetime.now(UTC), timer.ms)]


def _reason(status: int) -> str:
    """The standard reason phrase of an HTTP status, as ``urllib`` would have raised it."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "unknown status"


def check_airflow(environment: Environment) -> list[CheckResult]:
    """Scheduler, dag-processor and triggerer heartbeats from ``/api/v2/monitor/health``."""
    base = environment.health.airflow_api_url
    if not base:
        return [skipped("airflow", "airflow", "not configured: set health.airflow_api_url")]
    url = base.rstrip("/") + "/api/v2/monitor/health"
    timer = Stopwatch()
    try:
        status, payload, _ = fetch_json(url, HTTP_TIMEOUT_SECONDS)
    except UNREACHABLE as error:
        return [failed("airflow", "api-server", f"GET {url} failed: {error}", timer.ms)]
    if status >= 400:  # what urllib raises as HTTPError
        error = f"HTTP Error {status}: {_reason(status)}"
        return [failed("airflow", "api-server", f"GET {url} failed: {error}", timer.ms)]
    if not isinstance(payload, dict):
        return [
            failed("airflow", "api-server", f"GET {url} failed: the answer is not a JSON object", timer.ms)
        ]
    return airflow_results(payload, datetime.now(UTC), timer.ms)


# --- collecting, recording, alerting -----------------------------------------------------------


def collect_results(environment: Environment, ti: Any) -> list[CheckResult]:
    """Every check task's results in this run, plus one ``task`` result per check task.

    A check task returns results even when what it checks is broken, so a task without any
    died itself (timeout, crash): its ``task`` result is critical, and ok again (resolved) once
    it reports, like any other check.
    """
    results: list[CheckResult] = []
    for task_id in TaskIds.CHECKS:
        values = ti.xcom_pull(task_ids=[task_id]) or []
        reported = [CheckResult.from_dict(item) for value in values if value for item in value]
        results += reported
        if task_id == TaskIds.CHECK_HOST:
            seen = {r.target for r in reported if r.check == "app"}
            expected = [(TaskIds.host_check(host.name), host.name in seen) for host in environment.hosts]
        else:
            expected = [(task_id, bool(reported))]
        results += [task_result(target, ok) for target, ok in expected]
    return results


def collect(environment: Environment) -> list[dict[str, Any]]:
    """The ``collect`` task: this run's results of every check task (see :func:`collect_results`)."""
    return to_xcom(collect_results(environment, get_current_context()["ti"]))


def record(environment: Environment, results: list[dict[str, Any]]) -> int:
    """The ``record`` task: write the results to the ops store's health history."""
    context = get_current_context()
    return record_health_results(
        environment, dag_id=context["dag"].dag_id, run_id=context["run_id"], results=from_xcom(results)
    )


def render_notification(environment: Environment, notification: Notification, now: datetime) -> str:
    """One line of the run's message (templates ``health_*`` of ``include/templates/slack.yaml``)."""
    return render(notification.template, **notification_fields(environment.name, notification, now))


#: The sections of a run's message, in order, by the template of their lines.
SECTIONS = ("health_alert", "health_reminder", "health_resolved")
#: Lines per section at most: a message Slack refuses for its size would be retried forever.
MAX_LINES = 40


def compose_message(
    environment: Environment,
    lines: Mapping[tuple[str, str], tuple[str, str]],
    states: Mapping[tuple[str, str], AlertState],
    silences: Iterable[Silence],
    muted: Iterable[tuple[Notification, Silence]],
    now: datetime,
) -> str:
    """The one message of a run: new problems, still failing, resolved, then the active silences.

    ``lines`` maps each (check, target) to its section and line; a line an earlier run could not
    deliver says since when it waits (``states`` has its attempts).
    """
    counts = {kind: [line for line, _ in _lines_of(kind, lines, states)] for kind in SECTIONS}
    summary = ", ".join(render(f"{kind}_count", count=len(counts[kind])) for kind in SECTIONS if counts[kind])
    icon = (
        ":rotating_light:"
        if counts["health_alert"]
        else (":hourglass:" if counts["health_reminder"] else ":white_check_mark:")
    )
    parts = [render("health_digest", icon=icon, environment=environment.name, summary=summary)]
    for kind in SECTIONS:
        section = counts[kind]
        if not section:
            continue
        parts.append(render(f"{kind}_section"))
        parts += [f"• {line}" for line in section[:MAX_LINES]]
        if len(section) > MAX_LINES:
            parts.append(
                render("health_more", count=len(section) - MAX_LINES, dag_id=f"health_{environment.name}")
            )
    muted_by: dict[int, int] = {}
    for _, silence in muted:
        muted_by[silence.id] = muted_by.get(silence.id, 0) + 1
    for silence in silences:
        if silence.active(now):
            parts.append(
                render("health_silenced", silence=silence.describe(), count=muted_by.get(silence.id, 0))
            )
    parts.append(render("health_what_to_do", dag_id=f"health_{environment.name}"))
    return "\n".join(parts)


def _lines_of(
    kind: str, lines: Mapping[tuple[str, str], tuple[str, str]], states: Mapping[tuple[str, str], AlertState]
) -> list[tuple[str, tuple[str, str]]]:
    chosen = []
    for key, (section, line) in sorted(lines.items()):
        if section != kind:
            continue
        state = states.get(key)
        if state is not None and state.pending == line and state.pending_since:
            since = datetime.fromisoformat(state.pending_since).astimezone(UTC).strftime("%H:%M")
            line = f"{line} {render('health_retried', since=since, attempts=state.attempts)}"
        chosen.append((line, key))
    return chosen


class Store:
    """The calls of one run to one store (the ops store or Redis): after the first that fails the
    run does without it, saying so once (a refused Redis costs seconds of client retries a call).

    :param name: how the log names the store, with its connection id
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.down = False

    def __call__(self, action: Callable[[], Any], default: Any = None) -> Any:
        if self.down:
            return default
        try:
            return action()
        except Exception:
            log.warning("%s is unreachable; this run goes on without it", self.name, exc_info=True)
            self.down = True
            return default


def send_alerts(
    environment: Environment,
    results: Iterable[CheckResult],
    *,
    run_id: str,
    now: datetime | None = None,
    redis_client: Any = None,
    deliver: Callable[[str | None, str], bool] = post,
) -> list[str]:
    """Decide every result against its state and send what changed as one message; returns the
    messages Slack accepted.

    The state is read from the ops store and from Redis (the copy written last wins per check) and
    written back to both whatever Slack answered: a message Slack did not take leaves its lines
    pending, with their attempt count, and the next run sends them again; the hourly rate limit
    holds them the same way, after one summary message. Either store may be down: the other one
    carries the state (with both down, nothing is remembered: every run decides from scratch).
    """
    now = now or datetime.now(UTC)
    cache = AlertStateCache(environment, redis_client)
    durably = Store(f"The ops store ({environment.database.ops_connection})")
    cached = Store(f"Redis ({environment.redis_conn_id})")
    stored, copied = durably(lambda: read_alert_states(environment)), cached(cache.read)
    if stored is None and copied is None:
        log.error("Neither the ops store nor Redis answers: this run's alerts are decided without state")
    states: dict[tuple[str, str], AlertState] = dict(copied or {})
    for key, state in (stored or {}).items():
        states[key] = state.newer(states.get(key))
    silences = _current_silences(environment, cache, durably, cached, now)

    plan = plan_alerts(results, states, silences, now, AlertRules.of(environment.health))
    notified: dict[tuple[str, str], str] = {}
    for notification, silence in plan.muted:
        log.info("Silence #%s muted: %s", silence.id, render_notification(environment, notification, now))
        notified[notification.result.key] = "silenced"
    lines = {key: (state.pending_kind or "", state.pending or "") for key, state in plan.retries().items()}
    lines.update(
        {n.result.key: (n.template, render_notification(environment, n, now)) for n in plan.notifications}
    )
    states = dict(plan.states)
    hour_ago = now - timedelta(hours=1)
    tried = set(durably(lambda: deliveries_since(environment, hour_ago), []))
    tried |= set(cached(cache.deliveries, []))
    deliveries = sorted((when, outcome) for when, outcome in tried if when > hour_ago)

    attempted: list[tuple[str, int, str]] = []
    if lines:
        limit = environment.health.max_messages_per_hour
        sent = [at for at, outcome in deliveries if outcome == "sent"]
        if sent_within_hour(sent, now) >= limit:
            summarized = any(outcome.startswith("summary") for _, outcome in deliveries)
            attempted = _hold(environment, lines, states, notified, sent, now, deliver, summarized)
        else:
            text = compose_message(environment, lines, states, silences, plan.muted, now)
            attempted = _deliver(environment, text, lines, states, notified, now, deliver)

    stamp = now.isoformat()
    states = {key: replace(state, updated_at=stamp) for key, state in states.items()}
    durably(lambda: save_alert_states(environment, states))
    cached(lambda: cache.save(states))
    for outcome, count, text in attempted:
        durably(
            lambda outcome=outcome, count=count, text=text: record_delivery(
                environment, run_id=run_id, attempted_at=now, outcome=outcome, lines=count, text=text
            ),
        )
    if attempted:
        deliveries += [(now, outcome) for outcome, _, _ in attempted]
        cached(lambda: cache.save_deliveries(deliveries, now))
    if notified:
        durably(lambda: mark_notified(environment, run_id=run_id, notified=notified))
    return [text for outcome, _, text in attempted if outcome in ("sent", "summary")]


def _current_silences(
    environment: Environment, cache: AlertStateCache, durably: Store, cached: Store, now: datetime
) -> list[Silence]:
    """The silences not yet expired (the ops store's, copied to Redis; Redis's while it is down),
    with the expired ones deleted; both logged."""
    current = durably(lambda: current_silences(environment, now))
    if current is None:
        silences, expired = cached(cache.silences, []), []
    else:
        silences, expired = current
        cached(lambda: cache.save_silences(silences))
    for silence in expired:
        log.info("Silence %s expired and was removed", silence.describe())
    for silence in silences:
        if silence.active(now):
            log.info("Silence %s is active", silence.describe())
    return silences


#: (outcome, lines, text) of each message a run tried, as ``health_notifications`` keeps them.
Attempt = tuple[str, int, str]


def _deliver(
    environment: Environment,
    text: str,
    lines: Mapping[tuple[str, str], tuple[str, str]],
    states: dict[tuple[str, str], AlertState],
    notified: dict[tuple[str, str], str],
    now: datetime,
    deliver: Callable[[str | None, str], bool],
) -> list[Attempt]:
    """Send the run's message; its lines are delivered, or pending with one more attempt."""
    took = deliver(environment.slack_conn_id, text) or not environment.slack_conn_id
    for key, (kind, line) in lines.items():
        states[key] = states[key].delivered() if took else states[key].held(kind, line, now, attempted=True)
        notified[key] = "sent" if took else "pending"
    if not took:
        log.warning("Slack did not take the message; %d lines are pending for the next run", len(lines))
    return [("sent" if took else "failed", len(lines), text)]


def _hold(
    environment: Environment,
    lines: Mapping[tuple[str, str], tuple[str, str]],
    states: dict[tuple[str, str], AlertState],
    notified: dict[tuple[str, str], str],
    sent: list[datetime],
    now: datetime,
    deliver: Callable[[str | None, str], bool],
    summarized: bool,
) -> list[Attempt]:
    """The rate limit tripped: every line waits; one summary says so, once within the hour."""
    limit = environment.health.max_messages_per_hour
    for key, (kind, line) in lines.items():
        states[key] = states[key].held(kind, line, now, attempted=False)
        notified[key] = "held"
    log.warning("Rate limit of %d messages per hour reached; %d lines held", limit, len(lines))
    if summarized:
        return []
    text = render(
        "health_rate_limited",
        environment=environment.name,
        limit=limit,
        held=len(lines),
        next_at=next_slot(sent, now, limit).astimezone(UTC).strftime("%H:%M"),
        dag_id=f"health_{environment.name}",
    )
    took = deliver(environment.slack_conn_id, text)
    return [("summary" if took else "summary_failed", 0, text)]


def alert(environment: Environment, results: list[dict[str, Any]]) -> list[str]:
    """The ``alert`` task: Slack on change only, ``record``'s own outcome included as a result."""
    context = get_current_context()
    written = context["ti"].xcom_pull(task_ids=TaskIds.RECORD)
    found = [*from_xcom(results), history_result(environment, written)]
    return send_alerts(environment, found, run_id=context["run_id"])


def verdict(results: list[dict[str, Any]]) -> list[str]:
    """The ``verdict`` task: fail the run when a check is critical; otherwise the warnings."""
    found = from_xcom(results)
    critical = failing_summary(found)
    if critical:
        raise AirflowFailException("critical: " + "; ".join(critical))
    return failing_summary(found, Status.WARN)
