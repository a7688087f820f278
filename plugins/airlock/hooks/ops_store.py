"""The audit trail: one row per release or rollback in the ops database (``<ops_schema>.releases``).

Written by the last task of a run whatever its outcome, so the trail has the failures too. The
row is keyed by run and action, so a retried audit task updates its row instead of adding one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from airflow.providers.postgres.hooks.postgres import PostgresHook
from psycopg import sql

from airlock.config import PROJECT_ROOT, Environment

SCHEMA_SQL = PROJECT_ROOT / "include" / "sql" / "audit.sql"


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


def write_audit_record(environment: Environment, record: AuditRecord) -> None:
    schema = sql.Identifier(environment.database.ops_schema)
    statement = sql.SQL(
        """
        INSERT INTO {schema}.releases (environment, dag_id, run_id, action, version, previous,
            triggered_by, approved_by, reason, started_at, result, detail)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (run_id, action) DO UPDATE SET
            result = EXCLUDED.result, detail = EXCLUDED.detail, approved_by = EXCLUDED.approved_by,
            finished_at = now()
        """
    ).format(schema=schema)
    hook = PostgresHook(postgres_conn_id=environment.database.ops_connection)
    with hook.get_conn() as connection, connection.cursor() as cursor:
        cursor.execute(sql.SQL(SCHEMA_SQL.read_text()).format(schema=schema))
        cursor.execute(
            statement,
            (
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
            ),
        )
        connection.commit()
