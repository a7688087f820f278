"""Reading the ops store for the Airlock board: the audit trail and the health history.

The writers live in :mod:`airlock.hooks.ops_store`; :class:`OpsHistory` only reads, one session
per request. A fresh installation gets its (empty) tables on the first read, so the board shows
an empty environment instead of an error. Every query names its columns, so columns added to
the tables later change nothing here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from airlock.config import Environment
from airlock.core.board import HealthRow, HostChange
from airlock.core.dora import AuditedRun
from airlock.hooks.ops_store import ops_session
from airlock.hooks.postgres import session

#: How many of the newest succeeded releases and rollbacks say which version a host got.
HOST_CHANGES = 50
#: A board request never waits long on the ops database.
READ_TIMEOUTS = {"statement_timeout": timedelta(seconds=10)}

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


class OpsHistory:
    """One read-only session on an environment's ops store; ``with OpsHistory.open(env) as h``.

    The schema is created if missing once per process (through
    :func:`~airlock.hooks.ops_store.ops_session`, the one place that creates it): a board read
    many times a minute must not run the schema's DDL, which locks the tables, on every request.
    """

    #: (connection id, schema) pairs whose schema this process has made sure of.
    _ensured: ClassVar[set[tuple[str, str]]] = set()

    def __init__(self, environment: Environment, connection: psycopg.Connection[Any]) -> None:
        self.environment = environment
        self.connection = connection
        self.schema = sql.Identifier(environment.database.ops_schema)

    @classmethod
    @contextmanager
    def open(cls, environment: Environment) -> Iterator[OpsHistory]:
        key = (environment.database.ops_connection, environment.database.ops_schema)
        if key not in cls._ensured:
            with ops_session(environment):
                pass
            cls._ensured.add(key)
        with session(
            environment.database.ops_connection, autocommit=True, timeouts=READ_TIMEOUTS
        ) as connection:
            yield cls(environment, connection)

    def audit_rows(self, *, limit: int, actions: tuple[str, ...] | None = None) -> list[AuditRow]:
        """The environment's newest ``limit`` audit rows (of ``actions`` only, if given), newest first."""
        statement = sql.SQL(
            "SELECT {columns} FROM {schema}.releases WHERE environment = %(environment)s"
            " AND (%(actions)s::text[] IS NULL OR action = ANY(%(actions)s))"
            " ORDER BY finished_at DESC, id DESC LIMIT %(limit)s"
        ).format(columns=_columns(AUDIT_COLUMNS), schema=self.schema)
        with self.connection.cursor(row_factory=dict_row) as cursor:
            cursor.execute(
                statement,
                {
                    "environment": self.environment.name,
                    "actions": list(actions) if actions else None,
                    "limit": limit,
                },
            )
            return [AuditRow(row) for row in cursor.fetchall()]

    def audited_runs(self, *, since: datetime) -> list[AuditedRun]:
        """Releases and rollbacks that finished since ``since``, for the DORA figures."""
        statement = sql.SQL(
            "SELECT action, version, result, started_at, finished_at, committed_at FROM {schema}.releases"
            " WHERE environment = %s AND action IN ('release', 'rollback') AND finished_at >= %s"
            " ORDER BY finished_at"
        ).format(schema=self.schema)
        rows = self.connection.execute(statement, (self.environment.name, since)).fetchall()
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

    def host_changes(self, *, newest: int = HOST_CHANGES) -> list[HostChange]:
        """The newest ``newest`` succeeded releases and rollbacks: which hosts each switched, to
        which version (``core.board.host_version`` picks each host's latest)."""
        statement = sql.SQL(
            "SELECT version, previous, finished_at FROM {schema}.releases"
            " WHERE environment = %s AND action IN ('release', 'rollback') AND result = 'succeeded'"
            " ORDER BY finished_at DESC LIMIT %s"
        ).format(schema=self.schema)
        rows = self.connection.execute(statement, (self.environment.name, newest)).fetchall()
        return [
            HostChange(version=version, hosts=frozenset(previous), finished_at=finished)
            for version, previous, finished in rows
        ]

    def release_counts(self) -> dict[str, int]:
        """How many release runs ended in each result, over the whole trail."""
        statement = sql.SQL(
            "SELECT result, count(*) FROM {schema}.releases"
            " WHERE environment = %s AND action = 'release' GROUP BY result"
        ).format(schema=self.schema)
        return dict(self.connection.execute(statement, (self.environment.name,)).fetchall())

    def health_rows(self, *, since: datetime, limit: int) -> list[HealthRow]:
        """The environment's health history since ``since``, newest first, at most ``limit`` rows."""
        statement = sql.SQL(
            "SELECT checked_at, check_name, target, status, value, message, run_id"
            " FROM {schema}.health_checks WHERE environment = %s AND checked_at >= %s"
            " ORDER BY checked_at DESC, id DESC LIMIT %s"
        ).format(schema=self.schema)
        rows = self.connection.execute(statement, (self.environment.name, since, limit)).fetchall()
        return [HealthRow(*row) for row in rows]

    def latest_health(self, *, since: datetime) -> list[HealthRow]:
        """Each check and target's newest row since ``since`` (a check silent for longer is not
        current: the board does not show it as the host's health)."""
        statement = sql.SQL(
            "SELECT DISTINCT ON (check_name, target) checked_at, check_name, target, status, value,"
            " message, run_id FROM {schema}.health_checks WHERE environment = %s AND checked_at >= %s"
            " ORDER BY check_name, target, checked_at DESC"
        ).format(schema=self.schema)
        rows = self.connection.execute(statement, (self.environment.name, since)).fetchall()
        return [HealthRow(*row) for row in rows]


def _columns(names: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(name) for name in names)
