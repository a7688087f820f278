"""Database maintenance that never blocks production writes: VACUUM (ANALYZE), reports, REINDEX.

``db_maintenance_<env>`` inspects the application database (``database.conn_id``), vacuums the
tables autovacuum has fallen behind on, optionally rebuilds bloated B-tree indexes with
``REINDEX INDEX CONCURRENTLY``, and writes a report: vacuumed tables with their dead tuples
before and after, table and index bloat estimates, unused indexes, invalid indexes and long or
idle-in-transaction sessions.

What keeps production writing: only plain ``VACUUM (ANALYZE, SKIP_LOCKED, TRUNCATE false)`` (its
lock lets reads and writes go on; a table someone holds locked is skipped, not waited for; it never
takes the exclusive lock that truncating empty pages at the table's end needs), never ``VACUUM FULL``,
``CLUSTER`` or plain ``REINDEX``; every session sets ``lock_timeout`` and ``statement_timeout``
from ``db_maintenance`` (sessions come from :func:`airlock.hooks.postgres.session`). Queries live
in ``include/sql/db_maintenance/``; identifiers go through ``psycopg.sql``. Which indexes to
rebuild and the report's Markdown are decided in :mod:`airlock.core.db_maintenance`.

Sessions' statements are redacted to their shape (:func:`~airlock.core.db_maintenance.redact_query`)
as they are read, before XCom, the log or Slack see them. Every step that works on the
database holds the shared mode of the environment lock, so a release's migrations wait for it
instead of failing on ``lock_timeout`` (:mod:`airlock.tasks.shared_lock`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import date, datetime
from typing import Any

import psycopg
from airflow.sdk import get_current_context
from psycopg import sql

from airlock.config import PROJECT_ROOT, DatabaseMaintenanceSettings, Environment
from airlock.core.db_maintenance import indexes_to_rebuild, maintenance_report, qualified, redact_query
from airlock.hooks.lock import SharedHold
from airlock.hooks.postgres import session
from airlock.notifications.slack import post, render
from airlock.tasks.shared_lock import hold_shared

log = logging.getLogger(__name__)


class TaskIds:
    """The task ids of ``db_maintenance_<env>``."""

    INSPECT = "inspect"
    VACUUM = "vacuum"
    REINDEX = "reindex"
    REPORT = "report"


QUERIES = PROJECT_ROOT / "include" / "sql" / "db_maintenance"
MEGABYTE = 1024 * 1024


def query_text(name: str) -> str:
    return (QUERIES / f"{name}.sql").read_text()


def _plain(value: Any) -> Any:
    """Database values as JSON for XCom: timestamps as ISO text."""
    return value.isoformat() if isinstance(value, datetime | date) else value


def _rows(connection: psycopg.Connection[Any], name: str, **params: Any) -> list[dict[str, Any]]:
    rows = connection.execute(query_text(name).encode(), params).fetchall()
    return [{key: _plain(value) for key, value in row.items()} for row in rows]


def maintenance_connection(
    conn_id: str, settings: DatabaseMaintenanceSettings
) -> AbstractContextManager[psycopg.Connection[Any]]:
    """Autocommit (VACUUM and REINDEX CONCURRENTLY refuse transactions), with both timeouts set."""
    return session(
        conn_id,
        autocommit=True,
        rows_as_dicts=True,
        application_name="airlock-db-maintenance",
        timeouts={"lock_timeout": settings.lock_timeout, "statement_timeout": settings.statement_timeout},
    )


def _pgstattuple_installed(connection: psycopg.Connection[Any]) -> bool:
    row = connection.execute(
        "SELECT count(*) AS n FROM pg_extension WHERE extname = 'pgstattuple'"
    ).fetchone()
    return bool(row["n"])


def inspect_database(environment: Environment) -> dict[str, Any]:
    """Everything the report needs before anything changes; read-only."""
    settings = environment.db_maintenance
    min_bytes = settings.bloat_min_size_mb * MEGABYTE
    with maintenance_connection(environment.database.conn_id, settings) as connection:
        measured = _pgstattuple_installed(connection)
        inspection: dict[str, Any] = {
            "database": connection.info.dbname,
            "vacuum_candidates": _rows(
                connection,
                "vacuum_candidates",
                threshold=settings.dead_tuple_threshold,
                ratio=settings.dead_tuple_ratio,
            ),
            "sessions": [
                {**row, "query": redact_query(row["query"])}
                for row in _rows(connection, "sessions", seconds=settings.long_session.total_seconds())
            ],
            "invalid_indexes": _rows(connection, "invalid_indexes"),
            "unused_indexes": _rows(connection, "unused_indexes") if settings.report_unused_indexes else [],
            "pgstattuple": measured,
            "table_bloat": [],
            "index_bloat": [],
            "bloat_error": None,
        }
        try:
            query = "table_bloat_measured" if measured else "table_bloat"
            inspection["table_bloat"] = _rows(connection, query, min_bytes=min_bytes)
            if measured:
                inspection["index_bloat"] = _rows(connection, "index_bloat", min_bytes=min_bytes)
        except psycopg.Error as error:
            # Bloat is a report, not a reason to skip the vacuum: say why it is missing.
            inspection["bloat_error"] = f"{type(error).__name__}: {str(error).strip()}"
            log.warning("Could not estimate bloat: %s", inspection["bloat_error"])
    return inspection


def vacuum_tables(
    environment: Environment, candidates: list[dict[str, Any]], *, before_each=lambda: None
) -> list[dict[str, Any]]:
    """``VACUUM (ANALYZE, SKIP_LOCKED, TRUNCATE false)`` each candidate; dead tuples before and after,
    or why not. ``TRUNCATE false``: no exclusive lock to cut empty pages off the table's end.
    ``before_each`` runs before each table and raises to stop (the shared hold was lost)."""
    settings = environment.db_maintenance
    results = []
    with maintenance_connection(environment.database.conn_id, settings) as connection:
        notices: list[str] = []
        connection.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary or ""))
        for table in candidates:
            name = qualified(table["schema"], table["table"])
            notices.clear()
            before_each()
            result = {"table": name, "dead_tuples_before": table["dead_tuples"], "outcome": "vacuumed"}
            try:
                connection.execute(
                    sql.SQL("VACUUM (ANALYZE, SKIP_LOCKED, TRUNCATE false) {}").format(
                        sql.Identifier(table["schema"], table["table"])
                    )
                )
            except psycopg.Error as error:
                result.update(outcome="failed", detail=str(error).strip())
                log.warning("VACUUM of %s failed: %s", name, result["detail"])
            if any("skipping" in notice for notice in notices):
                result.update(outcome="skipped", detail="; ".join(notices))
                log.warning("VACUUM of %s skipped: %s", name, result["detail"])
            results.append(result)
        if results:
            # The vacuum's own statistics are written when it ends; read them back.
            connection.execute("SELECT pg_stat_clear_snapshot()")
            after = {qualified(row["schema"], row["table"]): row for row in _rows(connection, "table_stats")}
            for result in results:
                row = after.get(result["table"], {})
                result.update(
                    dead_tuples_after=row.get("dead_tuples"),
                    last_vacuum=row.get("last_vacuum"),
                    last_analyze=row.get("last_analyze"),
                )
                log.info(
                    "VACUUM (ANALYZE) %s: %s, dead tuples %s -> %s",
                    result["table"],
                    result["outcome"],
                    result["dead_tuples_before"],
                    result["dead_tuples_after"],
                )
    return results


def reindex_concurrently(
    environment: Environment, indexes: list[dict[str, Any]], *, before_each=lambda: None
) -> list[dict[str, Any]]:
    """``REINDEX INDEX CONCURRENTLY`` one index at a time; a failure is reported, not retried.
    ``before_each`` runs before each index and raises to stop (the shared hold was lost).

    A failed rebuild leaves an invalid ``<index>_ccnew`` (``_ccnew1``... when the name is taken)
    or, failing after the swap, ``<index>_ccold`` index; :func:`drop_reindex_leftovers` drops
    those, and only those that are invalid, concurrently so the next run can try again.
    """
    results = []
    with maintenance_connection(environment.database.conn_id, environment.db_maintenance) as connection:
        for index in indexes:
            before_each()
            identifier = sql.Identifier(index["schema"], index["index"])
            result = {
                "index": qualified(index["schema"], index["index"]),
                "bloat_percent": index["bloat_percent"],
                "bytes_before": index["bytes"],
            }
            try:
                connection.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(identifier))
                size = connection.execute(
                    "SELECT pg_relation_size(%s::regclass) AS bytes", (identifier.as_string(connection),)
                ).fetchone()
                result.update(outcome="rebuilt", bytes_after=size["bytes"])
            except psycopg.Error as error:
                result.update(outcome="failed", detail=str(error).strip())
                log.warning("REINDEX CONCURRENTLY %s failed: %s", result["index"], result["detail"])
                result["detail"] += drop_reindex_leftovers(connection, index["schema"], index["index"])
            results.append(result)
            log.info("REINDEX INDEX CONCURRENTLY %s: %s", result["index"], result["outcome"])
    return results


LEFTOVER_INDEXES = """
SELECT c.relname AS index
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND NOT i.indisvalid
  AND left(c.relname, length(%(index)s)) = %(index)s
  AND substr(c.relname, length(%(index)s) + 1) ~ '^_cc(new|old)[0-9]*$'
ORDER BY c.relname
"""


def drop_reindex_leftovers(connection: psycopg.Connection[Any], schema: str, index: str) -> str:
    """Drop the invalid ``<index>_ccnew[N]``/``<index>_ccold[N]`` a failed REINDEX CONCURRENTLY
    left in ``schema``; a valid index of such a name is never touched. Returns text for the
    failure detail (empty when everything found was dropped)."""
    problems = ""
    try:
        leftovers = [
            row["index"] for row in connection.execute(LEFTOVER_INDEXES, {"schema": schema, "index": index})
        ]
    except psycopg.Error as error:
        return f"; could not look for invalid leftovers of {qualified(schema, index)}: {error}"
    for name in leftovers:
        leftover = sql.Identifier(schema, name)
        try:
            connection.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(leftover))
            log.info("Dropped invalid index %s left by the failed rebuild", qualified(schema, name))
        except psycopg.Error as drop_error:
            problems += f"; could not drop {qualified(schema, name)}: {drop_error}"
    return problems


def _dry_run() -> bool:
    return get_current_context()["params"]["dry_run"]


@contextmanager
def _holding(environment: Environment, step: str) -> Iterator[SharedHold]:
    """This run's shared hold for one step (waits while a migration runs; see the module doc)."""
    dag_run = get_current_context()["dag_run"]
    purpose = f"database maintenance ({step})"
    with hold_shared(environment, dag_id=dag_run.dag_id, run_id=dag_run.run_id, purpose=purpose) as hold:
        yield hold


def inspect(environment: Environment) -> dict[str, Any]:
    """Task body of ``inspect``: :func:`inspect_database` (pgstattuple reads whole tables) held."""
    with _holding(environment, TaskIds.INSPECT):
        return inspect_database(environment)


def vacuum(environment: Environment, inspection: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Task body of ``vacuum``: the candidates the inspection found, nothing in a dry run (None)."""
    if _dry_run():
        return None
    with _holding(environment, TaskIds.VACUUM) as hold:
        return vacuum_tables(environment, inspection["vacuum_candidates"], before_each=hold.check)


def reindex(environment: Environment, inspection: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Task body of ``reindex``: the indexes over the bloat limit, nothing in a dry run (None)."""
    indexes = indexes_to_rebuild(environment.db_maintenance, inspection["index_bloat"])
    if _dry_run():
        return None
    if not indexes:
        return []
    with _holding(environment, TaskIds.REINDEX) as hold:
        return reindex_concurrently(environment, indexes, before_each=hold.check)


def report(
    environment: Environment,
    inspection: dict[str, Any] | None,
    vacuumed: list[dict[str, Any]] | None,
    reindexed: list[dict[str, Any]] | None,
) -> dict[str, Any]:
    """Task body of ``report``: the report in the task log; Slack only when something needs a person."""
    context = get_current_context()
    result = maintenance_report(
        environment, inspection, vacuumed, reindexed, dry_run=context["params"]["dry_run"]
    )
    if result["attention"]:
        post(
            environment.slack_conn_id,
            render(
                "db_maintenance_attention",
                environment=environment.name,
                items="\n".join(f"• {item}" for item in result["attention"]),
                log_url=getattr(context["ti"], "log_url", ""),
            ),
        )
    return result
