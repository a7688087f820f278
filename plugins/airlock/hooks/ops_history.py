"""Reading the ops store for the Airlock board: the audit trail and the health history.

The writers live in :mod:`airlock.hooks.ops_store`; this module only reads, through the same
:func:`~airlock.hooks.ops_store.ops_session` (which creates the tables if a fresh installation
has none yet, so the board shows an empty environment instead of an error). Every query names
its columns, so columns added to the tables later change nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row

from airlock.config import Environment
from airlock.core.board import HealthRow, HostChange
from airlock.core.dora import AuditedRun
from airlock.hooks.ops_store import ops_session

AUDIT_COLUMNS = (
    "id",
    "dag_id",
    "run_id",
    "action",
    "version",
    "previous",
    "triggered_by",
    "approved_by",
    "approved_by_name",
    "reason",
    "started_at",
    "finished_at",
    "result",
    "detail",
    "committed_at",
)


@dataclass(frozen=True)
class AuditRow:
    """One row of ``<ops_schema>.releases``, the columns the board shows."""

    values: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        values = self.values.items()
        return {key: value.isoformat() if isinstance(value, datetime) else value for key, value in values}

    @property
    def duration(self) -> timedelta | None:
        started = self.values["started_at"]
        return self.values["finished_at"] - started if started else None


def audit_rows(
    environment: Environment, *, limit: int, actions: tuple[str, ...] | None = None
) -> list[AuditRow]:
    """The environment's newest ``limit`` audit rows (of ``actions`` only, if given), newest first."""
    statement = sql.SQL(
        "SELECT {columns} FROM {schema}.releases WHERE environment = %(environment)s"
        " AND (%(actions)s::text[] IS NULL OR action = ANY(%(actions)s))"
        " ORDER BY finished_at DESC, id DESC LIMIT %(limit)s"
    ).format(columns=_columns(AUDIT_COLUMNS), schema=_schema(environment))
    with ops_session(environment) as connection, connection.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            statement,
            {"environment": environment.name, "actions": list(actions) if actions else None, "limit": limit},
        )
        return [AuditRow(row) for row in cursor.fetchall()]


def audited_runs(environment: Environment, *, since: datetime) -> list[AuditedRun]:
    """Releases and rollbacks that finished since ``since``, for the DORA figures."""
    statement = sql.SQL(
        "SELECT action, version, result, started_at, finished_at, committed_at FROM {schema}.releases"
        " WHERE environment = %s AND action IN ('release', 'rollback') AND finished_at >= %s"
        " ORDER BY finished_at"
    ).format(schema=_schema(environment))
    with ops_session(environment) as connection:
        rows = connection.execute(statement, (environment.name, since)).fetchall()
    return [
        AuditedRun(
            action=action,
            version=version,
            result=result,
            started_at=started,
            finished_at=finished,
            committed_at=committed,
        )
        for action, version, result, started, finished, committed in rows
    ]


def host_changes(environment: Environment) -> list[HostChange]:
    """Per host, the last succeeded release or rollback that switched it (what it left there)."""
    statement = sql.SQL(
        "SELECT DISTINCT ON (host) host, version, finished_at"
        " FROM {schema}.releases, jsonb_object_keys(previous) AS host"
        " WHERE environment = %s AND action IN ('release', 'rollback') AND result = 'succeeded'"
        " ORDER BY host, finished_at DESC"
    ).format(schema=_schema(environment))
    with ops_session(environment) as connection:
        rows = connection.execute(statement, (environment.name,)).fetchall()
    return [
        HostChange(version=version, hosts=frozenset({host}), finished_at=finished)
        for host, version, finished in rows
    ]


def release_counts(environment: Environment) -> dict[str, int]:
    """How many release runs ended in each result, over the whole trail."""
    statement = sql.SQL(
        "SELECT result, count(*) FROM {schema}.releases"
        " WHERE environment = %s AND action = 'release' GROUP BY result"
    ).format(schema=_schema(environment))
    with ops_session(environment) as connection:
        return dict(connection.execute(statement, (environment.name,)).fetchall())


def health_rows(environment: Environment, *, since: datetime, limit: int) -> list[HealthRow]:
    """The environment's health history since ``since``, newest first, at most ``limit`` rows."""
    statement = sql.SQL(
        "SELECT checked_at, check_name, target, status, value, message, run_id"
        " FROM {schema}.health_checks WHERE environment = %s AND checked_at >= %s"
        " ORDER BY checked_at DESC, id DESC LIMIT %s"
    ).format(schema=_schema(environment))
    with ops_session(environment) as connection:
        rows = connection.execute(statement, (environment.name, since, limit)).fetchall()
    return [HealthRow(*row) for row in rows]


def latest_health(environment: Environment, *, since: datetime) -> list[HealthRow]:
    """Each check and target's newest row since ``since`` (a check silent for longer is not
    current: the board does not show it as the host's health)."""
    statement = sql.SQL(
        "SELECT DISTINCT ON (check_name, target) checked_at, check_name, target, status, value,"
        " message, run_id FROM {schema}.health_checks WHERE environment = %s AND checked_at >= %s"
        " ORDER BY check_name, target, checked_at DESC"
    ).format(schema=_schema(environment))
    with ops_session(environment) as connection:
        rows = connection.execute(statement, (environment.name, since)).fetchall()
    return [HealthRow(*row) for row in rows]


def _schema(environment: Environment) -> sql.Identifier:
    return sql.Identifier(environment.database.ops_schema)


def _columns(names: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(name) for name in names)
