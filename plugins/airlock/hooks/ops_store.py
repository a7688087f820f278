"""The ops store: Airlock's own tables in the ops database, audit trail and health history, one schema.

``include/sql/ops.sql`` holds every table (``<ops_schema>.releases``, ``.health_checks``, and the
health alerts' durable state: ``.health_alerts``, ``.health_notifications``, ``.health_silences``);
:func:`ops_session` is the one way they are created (if missing) and reached. Both writers are
keyed so that a retried task updates its rows instead of adding:

- the audit trail: one row per run of release, rollback, migrate and restore, written by the
  step that concludes the run whatever its outcome, or (for a run that stopped before it) by the
  lock task or the teardown, so the trail has the failures too (keyed by run and action);
- the health history: one row per check, target and run of ``health_<env>``, with whether Slack
  heard of it (``notified``) kept apart from its status;
- the alert state per check and target, written by every run of ``alert`` whether Slack took its
  message or not (Redis holds only a cache of it), the messages tried (the rate limit counts
  them) and the silences of ``silence_<env>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from airlock.config import PROJECT_ROOT, Environment
from airlock.core.health import STATE_TTL, AlertState, CheckResult, Silence, SilenceRequest
from airlock.hooks.postgres import session

SCHEMA_SQL = PROJECT_ROOT / "include" / "sql" / "ops.sql"


def _schema(environment: Environment) -> sql.Identifier:
    return sql.Identifier(environment.database.ops_schema)


#: (server, port, database, schema) whose ops schema this process has already brought up to date.
_SCHEMAS_READY: set[tuple[str, int, str, str]] = set()


@contextmanager
def ops_session(environment: Environment) -> Iterator[psycopg.Connection[Any]]:
    """A session on the ops database with the ops schema created (or upgraded) if missing.

    The block runs in one transaction (committed when it ends, rolled back when it raises). The
    schema is created in a transaction of its own, under an advisory lock: environments' first
    runs may start together, one creates the tables and the others wait only for that. A process
    does it once per database: a task opens several sessions, the schema SQL runs in the first.
    """
    with session(environment.database.ops_connection, autocommit=True) as connection:
        info = connection.info
        ready = (info.host, info.port, info.dbname, environment.database.ops_schema)
        if ready not in _SCHEMAS_READY:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(hashtext('airlock.ops_schema'))")
                connection.execute(sql.SQL(SCHEMA_SQL.read_text()).format(schema=_schema(environment)))
            _SCHEMAS_READY.add(ready)
        with connection.transaction():
            yield connection


# --- the audit trail -------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRecord:
    dag_id: str
    run_id: str
    action: str
    version: str
    previous: dict[str, str | None]
    triggered_by: str | None
    approved_by: str | None
    reason: str | None
    started_at: datetime | None
    result: str
    detail: str | None = None
    #: The approver's name; ``approved_by`` is their user id (the two differ under FAB).
    approved_by_name: str | None = None
    #: When the released commit was made, if the trigger said (the DORA lead time's start).
    committed_at: datetime | None = None


def write_audit_record(environment: Environment, record: AuditRecord) -> None:
    """Write the run's row of ``<ops_schema>.releases``; a retried run updates its row."""
    statement = sql.SQL(
        """
        INSERT INTO {schema}.releases (environment, dag_id, run_id, action, version, previous,
            triggered_by, approved_by, reason, started_at, result, detail, approved_by_name, committed_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (run_id, action) DO UPDATE SET
            result = EXCLUDED.result, detail = EXCLUDED.detail, approved_by = EXCLUDED.approved_by,
            approved_by_name = EXCLUDED.approved_by_name, finished_at = now(),
            committed_at = coalesce(EXCLUDED.committed_at, {schema}.releases.committed_at)
        """
    ).format(schema=_schema(environment))
    with ops_session(environment) as connection:
        connection.execute(statement, _audit_values(environment, record))


def write_audit_record_if_missing(environment: Environment, record: AuditRecord) -> bool:
    """Write the run's row unless the run already wrote one for ``record.action``; returns
    whether it wrote. The fallback for runs that stopped before the step that writes their row."""
    statement = sql.SQL(
        """
        INSERT INTO {schema}.releases (environment, dag_id, run_id, action, version, previous,
            triggered_by, approved_by, reason, started_at, result, detail, approved_by_name, committed_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (run_id, action) DO NOTHING
        """
    ).format(schema=_schema(environment))
    with ops_session(environment) as connection:
        cursor = connection.execute(statement, _audit_values(environment, record))
        return cursor.rowcount == 1


def _audit_values(environment: Environment, record: AuditRecord) -> tuple[Any, ...]:
    return (
        environment.name,
        record.dag_id,
        record.run_id,
        record.action,
        record.version,
        json.dumps(record.previous),
        record.triggered_by,
        record.approved_by,
        record.reason,
        record.started_at,
        record.result,
        record.detail,
        record.approved_by_name,
        record.committed_at,
    )


# --- the health history ----------------------------------------------------------------------


def record_health_results(
    environment: Environment, *, dag_id: str, run_id: str, results: Iterable[CheckResult]
) -> int:
    """Write one history row per result; a retried run updates its rows instead of adding."""
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
    with ops_session(environment) as connection, connection.cursor() as cursor:
        cursor.executemany(statement, rows)
    return len(rows)


def mark_notified(environment: Environment, *, run_id: str, notified: Mapping[tuple[str, str], str]) -> None:
    """Record in this run's history rows whether Slack heard of each result (``notified``)."""
    statement = sql.SQL(
        """
        UPDATE {schema}.health_checks SET notified = %s
         WHERE environment = %s AND run_id = %s AND check_name = %s AND target = %s
        """
    ).format(schema=_schema(environment))
    rows = [(how, environment.name, run_id, check, target) for (check, target), how in notified.items()]
    with ops_session(environment) as connection, connection.cursor() as cursor:
        cursor.executemany(statement, rows)


# --- alert state, deliveries and silences (the durable copy; Redis caches it) -----------------


def read_alert_states(environment: Environment) -> dict[tuple[str, str], AlertState]:
    """Every stored alert state of the environment written within ``STATE_TTL``."""
    statement = sql.SQL(
        "SELECT check_name, target, state FROM {schema}.health_alerts"
        " WHERE environment = %s AND updated_at > now() - %s"
    ).format(schema=_schema(environment))
    with ops_session(environment) as connection:
        rows = connection.execute(statement, (environment.name, STATE_TTL)).fetchall()
    return {(check, target): AlertState.from_json(state) for check, target, state in rows}


def save_alert_states(environment: Environment, states: Mapping[tuple[str, str], AlertState]) -> None:
    """Write the states in one transaction, replacing what each check had."""
    statement = sql.SQL(
        """
        INSERT INTO {schema}.health_alerts
            (environment, check_name, target, status, state, pending, attempts, updated_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (environment, check_name, target) DO UPDATE SET
            status = EXCLUDED.status, state = EXCLUDED.state, pending = EXCLUDED.pending,
            attempts = EXCLUDED.attempts, updated_at = EXCLUDED.updated_at
        """
    ).format(schema=_schema(environment))
    rows = [
        (
            environment.name,
            check,
            target,
            str(state.status),
            state.to_json(),
            state.pending is not None,
            state.attempts,
            datetime.fromisoformat(state.updated_at),
        )
        for (check, target), state in states.items()
    ]
    with ops_session(environment) as connection, connection.cursor() as cursor:
        cursor.executemany(statement, rows)


def record_delivery(
    environment: Environment, *, run_id: str, attempted_at: datetime, outcome: str, lines: int, text: str
) -> None:
    """One row of ``health_notifications``: a message tried, and whether Slack took it."""
    statement = sql.SQL(
        "INSERT INTO {schema}.health_notifications (environment, run_id, attempted_at, outcome, lines, text)"
        " VALUES (%s, %s, %s, %s, %s, %s)"
    ).format(schema=_schema(environment))
    with ops_session(environment) as connection:
        connection.execute(statement, (environment.name, run_id, attempted_at, outcome, lines, text))


def deliveries_since(environment: Environment, since: datetime) -> list[tuple[datetime, str]]:
    """(attempted_at, outcome) of the messages tried since ``since``, oldest first."""
    statement = sql.SQL(
        "SELECT attempted_at, outcome FROM {schema}.health_notifications"
        " WHERE environment = %s AND attempted_at > %s ORDER BY attempted_at"
    ).format(schema=_schema(environment))
    with ops_session(environment) as connection:
        return [tuple(row) for row in connection.execute(statement, (environment.name, since)).fetchall()]


def add_silence(
    environment: Environment, *, run_id: str, request: SilenceRequest, starts_at: datetime, created_by: str
) -> Silence:
    """Store the silence of ``silence_<env>``'s run ``run_id``; a retried run gets the same one."""
    insert = sql.SQL(
        """
        INSERT INTO {schema}.health_silences
            (environment, run_id, check_pattern, host_pattern, starts_at, ends_at, reason, created_by)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO NOTHING
        """
    ).format(schema=_schema(environment))
    select = sql.SQL(
        "SELECT id, check_pattern, host_pattern, starts_at, ends_at, reason, created_by"
        " FROM {schema}.health_silences WHERE run_id = %s"
    ).format(schema=_schema(environment))
    values = (
        environment.name,
        run_id,
        request.check,
        request.host,
        starts_at,
        starts_at + request.duration,
        request.reason,
        created_by,
    )
    with ops_session(environment) as connection:
        connection.execute(insert, values)
        return Silence(*connection.execute(select, (run_id,)).fetchone())


def current_silences(environment: Environment, now: datetime) -> tuple[list[Silence], list[Silence]]:
    """The silences not yet expired at ``now``, and the expired ones, which are deleted."""
    delete = sql.SQL(
        "DELETE FROM {schema}.health_silences WHERE environment = %s AND ends_at <= %s"
        " RETURNING id, check_pattern, host_pattern, starts_at, ends_at, reason, created_by"
    ).format(schema=_schema(environment))
    select = sql.SQL(
        "SELECT id, check_pattern, host_pattern, starts_at, ends_at, reason, created_by"
        " FROM {schema}.health_silences WHERE environment = %s ORDER BY id"
    ).format(schema=_schema(environment))
    with ops_session(environment) as connection:
        expired = [Silence(*row) for row in connection.execute(delete, (environment.name, now)).fetchall()]
        current = [Silence(*row) for row in connection.execute(select, (environment.name,)).fetchall()]
    return current, expired
