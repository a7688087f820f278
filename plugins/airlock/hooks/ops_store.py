"""The ops store: Airlock's own tables in the ops database, audit trail and health history, one schema.

``include/sql/ops.sql`` holds every table (``<ops_schema>.releases``, ``<ops_schema>.health_checks``);
:func:`ops_session` is the one way they are created (if missing) and reached. Both writers are
keyed so that a retried task updates its rows instead of adding:

- the audit trail: one row per run of release, rollback, migrate and restore, written by the
  step that concludes the run whatever its outcome, or (for a run that stopped before it) by the
  lock task or the teardown, so the trail has the failures too (keyed by run and action);
- the health history: one row per check, target and run of ``health_<env>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from airlock.config import PROJECT_ROOT, Environment
from airlock.core.health import STATE_TTL, AlertState, CheckResult, Status
from airlock.hooks.postgres import session

SCHEMA_SQL = PROJECT_ROOT / "include" / "sql" / "ops.sql"


def _schema(environment: Environment) -> sql.Identifier:
    return sql.Identifier(environment.database.ops_schema)


@contextmanager
def ops_session(environment: Environment) -> Iterator[psycopg.Connection[Any]]:
    """A session on the ops database with the ops schema created if missing.

    The block runs in one transaction (committed when it ends, rolled back when it raises). The
    schema is created in a transaction of its own, under an advisory lock: environments' first
    runs may start together, one creates the tables and the others wait only for that.
    """
    with session(environment.database.ops_connection, autocommit=True) as connection:
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(hashtext('airlock.ops_schema'))")
            connection.execute(sql.SQL(SCHEMA_SQL.read_text()).format(schema=_schema(environment)))
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


def previous_health_states(environment: Environment, *, run_id: str) -> dict[tuple[str, str], AlertState]:
    """Each check's latest status before ``run_id`` and since when it has had it, from the history.

    Only the last ``STATE_TTL`` counts: a check silent for longer is as good as new.
    """
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
    with ops_session(environment) as connection:
        rows = connection.execute(
            statement, {"environment": environment.name, "run_id": run_id, "window": STATE_TTL}
        ).fetchall()
    return {
        (check, target): AlertState(
            status=Status(status), since=(since or checked_at).isoformat(), notified_at=checked_at.isoformat()
        )
        for check, target, status, checked_at, since in rows
    }
