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
from ``db_maintenance``. Queries live in ``include/sql/db_maintenance/``; identifiers go through
``psycopg.sql``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

import psycopg
from airflow.providers.postgres.hooks.postgres import PostgresHook
from psycopg import sql
from psycopg.rows import dict_row

from airlock.config import PROJECT_ROOT, DatabaseMaintenanceSettings, Environment

log = logging.getLogger(__name__)

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


def qualified(schema: str, name: str) -> str:
    """``schema.name`` for the report (statements always use ``sql.Identifier``)."""
    return f"{schema}.{name}"


@contextmanager
def maintenance_connection(
    conn_id: str, settings: DatabaseMaintenanceSettings
) -> Iterator[psycopg.Connection]:
    """Autocommit (VACUUM and REINDEX CONCURRENTLY refuse transactions), with both timeouts set."""
    connection = PostgresHook(postgres_conn_id=conn_id).get_conn()
    try:
        connection.autocommit = True
        connection.row_factory = dict_row
        for name, value in (
            ("lock_timeout", settings.lock_timeout),
            ("statement_timeout", settings.statement_timeout),
            ("application_name", None),
        ):
            setting = "airlock-db-maintenance" if value is None else f"{int(value.total_seconds() * 1000)}ms"
            connection.execute("SELECT set_config(%s, %s, false)", (name, setting))
        yield connection
    finally:
        connection.close()


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
            "sessions": _rows(connection, "sessions", seconds=settings.long_session.total_seconds()),
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


def vacuum_tables(environment: Environment, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``VACUUM (ANALYZE, SKIP_LOCKED, TRUNCATE false)`` each candidate; dead tuples before and after,
    or why not. ``TRUNCATE false``: no exclusive lock to cut empty pages off the table's end."""
    settings = environment.db_maintenance
    results = []
    with maintenance_connection(environment.database.conn_id, settings) as connection:
        notices: list[str] = []
        connection.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary or ""))
        for table in candidates:
            name = qualified(table["schema"], table["table"])
            notices.clear()
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


def indexes_to_rebuild(
    settings: DatabaseMaintenanceSettings, index_bloat: list[dict[str, Any]]
) -> list[dict]:
    if settings.reindex_bloat_percent is None:
        return []
    return [
        index
        for index in index_bloat
        if index["bloat_percent"] is not None and index["bloat_percent"] > settings.reindex_bloat_percent
    ]


def reindex_concurrently(environment: Environment, indexes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``REINDEX INDEX CONCURRENTLY`` one index at a time; a failure is reported, not retried.

    A failed rebuild leaves an invalid ``<index>_ccnew`` (``_ccnew1``... when the name is taken)
    or, failing after the swap, ``<index>_ccold`` index; :func:`drop_reindex_leftovers` drops
    those, and only those that are invalid, concurrently so the next run can try again.
    """
    results = []
    with maintenance_connection(environment.database.conn_id, environment.db_maintenance) as connection:
        for index in indexes:
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


def _size(value: int | None) -> str:
    if value is None:
        return "?"
    for unit in ("bytes", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def maintenance_report(
    environment: Environment,
    inspection: dict[str, Any] | None,
    vacuumed: list[dict[str, Any]] | None,
    reindexed: list[dict[str, Any]] | None,
    *,
    dry_run: bool,
) -> dict[str, Any]:
    """The report as Markdown, and the list of what needs a person (empty: no Slack message).

    The report runs whatever happened before it: ``inspection`` None means the inspect task
    failed; ``vacuumed``/``reindexed`` None outside a dry run mean that task failed or never ran.
    """
    settings = environment.db_maintenance
    attention: list[str] = []
    if inspection is None:
        attention.append("the inspect task failed: nothing was vacuumed or rebuilt (see its log)")
        lines = [f"# Database maintenance of {environment.name}", "", f"- {attention[0]}"]
        for line in lines:
            log.info("%s", line)
        return {"markdown": "\n".join(lines), "attention": attention}
    lines = [
        f"# Database maintenance of {environment.name} ({inspection['database']})"
        + (" - dry run, nothing changed" if dry_run else ""),
        "",
        f"## VACUUM (ANALYZE): tables above {settings.dead_tuple_threshold} dead tuples "
        f"and {settings.dead_tuple_ratio:.0%} of their rows",
    ]
    if dry_run:
        lines += [
            f"- would vacuum {qualified(t['schema'], t['table'])}: {t['dead_tuples']} dead tuples"
            for t in inspection["vacuum_candidates"]
        ]
    for result in vacuumed or []:
        lines.append(
            f"- {result['table']}: {result['outcome']}, dead tuples {result['dead_tuples_before']} -> "
            f"{result.get('dead_tuples_after')}" + (f" ({result['detail']})" if result.get("detail") else "")
        )
        if result["outcome"] != "vacuumed":
            attention.append(f"VACUUM of {result['table']} {result['outcome']}: {result.get('detail', '')}")
        elif (result.get("dead_tuples_after") or 0) > settings.dead_tuple_threshold:
            attention.append(
                f"{result['table']} still has {result['dead_tuples_after']} dead tuples after VACUUM: "
                "an old transaction holds them back (see sessions)"
            )
    if vacuumed is None and not dry_run:
        lines.append("- the vacuum task failed: see its log")
        attention.append("the vacuum task failed: tables may not have been vacuumed (see its log)")
    elif not inspection["vacuum_candidates"]:
        lines.append("- none needed")

    lines += ["", "## Long-running and idle-in-transaction sessions"]
    for session in inspection["sessions"]:
        application = session["application_name"] or "no application name"
        text = (
            f"pid {session['pid']} ({session['user']}, {application}) "
            f"{session['state']} for {session['seconds']} s: {session['query']}"
        )
        lines.append(f"- {text}")
        attention.append(f"session {text}")
    if not inspection["sessions"]:
        lines.append(f"- none longer than {int(settings.long_session.total_seconds())} s")

    lines += ["", "## Bloat estimates"]
    if inspection["bloat_error"]:
        lines.append(f"- could not be estimated: {inspection['bloat_error']}")
    elif not inspection["pgstattuple"]:
        lines.append(
            "- pgstattuple is not installed: table bloat is the dead tuple share only, index bloat is "
            "not measured (CREATE EXTENSION pgstattuple, see the runbook)"
        )
    for table in inspection["table_bloat"]:
        measured = f", bloat {table['bloat_percent']}%" if table["bloat_percent"] is not None else ""
        lines.append(
            f"- table {qualified(table['schema'], table['table'])}: {_size(table['bytes'])}, "
            f"dead {table['dead_percent'] if table['dead_percent'] is not None else 0}%{measured}"
        )
    rebuild = {index["index"] for index in indexes_to_rebuild(settings, inspection["index_bloat"])}
    for index in inspection["index_bloat"]:
        over = " (over the REINDEX limit)" if index["index"] in rebuild else ""
        lines.append(
            f"- index {qualified(index['schema'], index['index'])} on {index['table']}: "
            f"{_size(index['bytes'])}, bloat {index['bloat_percent']}%{over}"
        )
    if settings.reindex_bloat_percent is not None:
        limit = settings.reindex_bloat_percent
        lines += ["", f"## REINDEX INDEX CONCURRENTLY: B-tree indexes over {limit}% bloat"]
        if not rebuild:
            lines.append(
                "- none" if inspection["pgstattuple"] else "- not measured: pgstattuple is not installed"
            )
        elif reindexed is None and not dry_run:
            lines.append("- the reindex task failed or did not run (vacuum failed): see its log")
            attention.append(
                f"REINDEX CONCURRENTLY did not run or failed: {len(rebuild)} index(es) over the limit"
            )
        if dry_run:
            lines += [f"- would rebuild {name}" for name in sorted(rebuild)]
        for result in reindexed or []:
            lines.append(
                f"- {result['index']}: {result['outcome']}, {_size(result['bytes_before'])} -> "
                f"{_size(result.get('bytes_after'))}"
                + (f" ({result['detail']})" if result.get("detail") else "")
            )
            if result["outcome"] != "rebuilt":
                attention.append(f"REINDEX CONCURRENTLY {result['index']} failed: {result.get('detail', '')}")

    if settings.report_unused_indexes:
        lines += ["", "## Unused indexes (never scanned since the statistics were reset; report only)"]
        for index in inspection["unused_indexes"]:
            lines.append(
                f"- {qualified(index['schema'], index['index'])} on {index['table']}: {_size(index['bytes'])}"
            )
        if not inspection["unused_indexes"]:
            lines.append("- none")

    if inspection["invalid_indexes"]:
        lines += ["", "## Invalid indexes"]
        for index in inspection["invalid_indexes"]:
            name = qualified(index["schema"], index["index"])
            lines.append(f"- {name} on {index['table']}: drop it with DROP INDEX CONCURRENTLY, then rebuild")
            attention.append(f"invalid index {name}")

    markdown = "\n".join(lines)
    for line in lines:
        log.info("%s", line)
    return {"markdown": markdown, "attention": attention}
