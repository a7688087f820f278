"""The audit trail lives in the ops database (``airlock_ops``), apart from the application's.

A restore swaps the whole application database; were the trail inside it, the restore would rewind
it to the backup's. These tests pin the default and what it buys.
"""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
from psycopg import sql

from airlock.hooks.ops_store import AuditRecord, write_audit_record
from airlock.tasks.backup import take_backup, verify_backup
from tests.integration.releases import audit_rows
from tests.support import load_dag, run_dag

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def schemas(url: str) -> set[str]:
    with psycopg.connect(url) as connection:
        return {name for (name,) in connection.execute("SELECT nspname FROM pg_namespace").fetchall()}


def test_a_restore_to_an_older_backup_keeps_the_audit_rows_written_since(
    environment, postgres_url, ops_url, redis_client, slack_messages
):
    backup = take_backup(environment, kind="manual")
    verify_backup(environment, backup.name)
    later = AuditRecord(
        dag_id=f"release_{environment.name}",
        run_id=f"manual__after_{backup.name}",
        action="release",
        version="9.9.9",
        previous={},
        triggered_by="ci",
        approved_by="approver",
        reason="written after the backup",
        started_at=datetime.now(UTC),
        result="succeeded",
    )
    write_audit_record(environment, later)

    run_id, states, answered = run_dag(
        load_dag(f"restore_{environment.name}"),
        {"backup": backup.name, "reason": "rewind the data, not the trail"},
        answer="Approve",
    )

    assert answered["ok"] is True
    assert states["restore"] == "success", states
    assert audit_rows(ops_url, later.run_id, "version", "result") == [("9.9.9", "succeeded")]
    assert audit_rows(ops_url, run_id, "action", "result") == [("restore", "succeeded")]
    assert "airlock" not in schemas(postgres_url), "the application database holds no Airlock table"
    assert "airlock" in schemas(ops_url)
    drop_kept_databases(postgres_url)


def drop_kept_databases(postgres_url: str) -> None:
    """The restore keeps the replaced database as ``<db>_before_restore_<time>``: not for later tests."""
    prefix = postgres_url.rsplit("/", 1)[1] + "_before_restore_"
    with psycopg.connect(ADMIN, autocommit=True) as connection:
        rows = connection.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (prefix,))
        for (name,) in rows.fetchall():
            connection.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
