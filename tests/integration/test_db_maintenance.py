"""``db_maintenance_<env>`` on real PostgreSQL: vacuums what needs it, reports what a DBA reads.

Each test makes its own schema in the session's database with a table full of dead tuples
(autovacuum off for it, so only Airlock can clean it), an index nobody uses, and a quiet table
below the limits (demo settings: more than 10,000 dead tuples and 10% of the rows).
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

from airlock.core.db_maintenance import indexes_to_rebuild, maintenance_report
from airlock.tasks.db_maintenance import drop_reindex_leftovers, inspect_database, reindex_concurrently
from tests.support import PROJECT, run_dag


def load_dag(dag_id: str):
    """A freshly parsed DAG from its own file (other DAG files being edited cannot break it)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=PROJECT / "dags" / "db_maintenance.py")
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def in_schema(statement: str, schema: str) -> sql.Composed:
    """``statement`` with ``{schema}`` filled in as a quoted identifier."""
    return sql.SQL(statement).format(schema=sql.Identifier(schema))


def table_stats(postgres_url: str, schema: str, table: str) -> dict:
    with psycopg.connect(postgres_url, row_factory=psycopg.rows.dict_row) as connection:
        return connection.execute(
            "SELECT n_dead_tup, last_vacuum, last_analyze FROM pg_stat_user_tables "
            "WHERE schemaname = %s AND relname = %s",
            (schema, table),
        ).fetchone()


def wait_for_dead_tuples(postgres_url: str, schema: str, table: str, at_least: int) -> None:
    """Statistics reach the views shortly after the deleting session ends."""
    deadline = time.monotonic() + 30
    while (table_stats(postgres_url, schema, table) or {}).get("n_dead_tup", 0) < at_least:
        assert time.monotonic() < deadline, f"{schema}.{table} never showed {at_least} dead tuples"
        time.sleep(0.2)


@pytest.fixture
def churned(postgres_url, redis_client):
    """Schema with ``orders`` (25,000 dead of 30,000 rows, an unused index) and ``quiet``; Redis for
    the shared lock the DAG's steps hold."""
    schema = f"maint_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        for statement in (
            "CREATE SCHEMA {schema}",
            "CREATE TABLE {schema}.orders (id int PRIMARY KEY, note text) WITH (autovacuum_enabled = off)",
            "CREATE INDEX orders_note_unused ON {schema}.orders (note)",
            "INSERT INTO {schema}.orders SELECT g, 'order ' || g FROM generate_series(1, 30000) g",
            "DELETE FROM {schema}.orders WHERE id > 5000",
            "CREATE TABLE {schema}.quiet (id int) WITH (autovacuum_enabled = off)",
            "INSERT INTO {schema}.quiet SELECT generate_series(1, 100)",
            "DELETE FROM {schema}.quiet WHERE id <= 10",
        ):
            connection.execute(in_schema(statement, schema))
    wait_for_dead_tuples(postgres_url, schema, "orders", 25000)
    yield schema
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(in_schema("DROP SCHEMA {schema} CASCADE", schema))


def test_tables_over_the_dead_tuple_limit_are_vacuumed_and_a_dry_run_only_reports(
    churned, environment, postgres_url, slack_messages
):
    _, dry_states, _ = run_dag(load_dag(f"db_maintenance_{environment.name}"), {"dry_run": True})

    assert dry_states["report"] == "success", dry_states
    assert table_stats(postgres_url, churned, "orders")["last_vacuum"] is None

    _, states, _ = run_dag(load_dag(f"db_maintenance_{environment.name}"), {})

    assert states["report"] == "success", states
    orders = table_stats(postgres_url, churned, "orders")
    assert orders["last_vacuum"] is not None
    assert orders["last_analyze"] is not None
    assert orders["n_dead_tup"] == 0
    assert table_stats(postgres_url, churned, "quiet")["last_vacuum"] is None
    assert slack_messages.texts() == []


def test_the_report_lists_the_unused_index_and_the_would_be_vacuum(churned, environment):
    inspection = inspect_database(environment)

    report = maintenance_report(environment, inspection, None, None, dry_run=True)

    assert f"- would vacuum {churned}.orders: 25000 dead tuples" in report["markdown"]
    assert f"- {churned}.orders_note_unused on orders:" in report["markdown"]
    assert f"{churned}.orders_pkey" not in report["markdown"].split("## Unused indexes")[1]
    assert report["attention"] == []


def test_a_transaction_left_open_is_reported_and_its_held_back_tuples_reach_slack(
    churned, environment, postgres_url, slack_messages
):
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(
            in_schema("CREATE TABLE {schema}.held (id int) WITH (autovacuum_enabled = off)", churned)
        )
        connection.execute(in_schema("INSERT INTO {schema}.held SELECT generate_series(1, 30000)", churned))
    with psycopg.connect(postgres_url) as idle:
        idle.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        held = in_schema("SELECT count(*) FROM {schema}.held", churned)
        idle.execute(held).fetchone()  # its snapshot still sees every row deleted below
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(in_schema("DELETE FROM {schema}.held WHERE id > 5000", churned))
        wait_for_dead_tuples(postgres_url, churned, "held", 25000)
        time.sleep(1.2)
        configured = environment.model_copy(
            update={
                "db_maintenance": environment.db_maintenance.model_copy(
                    update={"long_session": timedelta(seconds=1)}
                )
            }
        )
        inspection = inspect_database(configured)
        sessions = [s for s in inspection["sessions"] if s["state"] == "idle in transaction"]
        reported = maintenance_report(configured, inspection, None, None, dry_run=True)

        _, states, _ = run_dag(load_dag(f"db_maintenance_{environment.name}"), {})

    assert [s["query"] for s in sessions] == [held.as_string()]
    assert any("idle in transaction" in item for item in reported["attention"]), reported["attention"]
    assert states["report"] == "success", states
    assert table_stats(postgres_url, churned, "orders")["n_dead_tup"] == 0
    [message] = [text for text in slack_messages.texts() if "database maintenance needs attention" in text]
    assert f"{churned}.held still has 25000 dead tuples after VACUUM" in message
    assert "log" in message


def test_an_index_over_the_bloat_limit_is_rebuilt_concurrently(postgres_url, environment):
    schema = f"bloat_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        connection.execute(in_schema("CREATE SCHEMA {schema}", schema))
        connection.execute(in_schema("CREATE TABLE {schema}.events (id int)", schema))
        connection.execute(in_schema("CREATE INDEX events_id ON {schema}.events (id)", schema))
        connection.execute(in_schema("INSERT INTO {schema}.events SELECT generate_series(1, 200000)", schema))
        connection.execute(in_schema("DELETE FROM {schema}.events WHERE id % 10 <> 0", schema))
        connection.execute(in_schema("VACUUM {schema}.events", schema))
    settings = environment.db_maintenance.model_copy(update={"reindex_bloat_percent": 50.0})
    configured = environment.model_copy(update={"db_maintenance": settings})
    try:
        inspection = inspect_database(configured)
        [bloated] = [
            i for i in indexes_to_rebuild(settings, inspection["index_bloat"]) if i["schema"] == schema
        ]

        [result] = reindex_concurrently(configured, [bloated])

        assert result["outcome"] == "rebuilt"
        assert result["bytes_after"] < result["bytes_before"] / 3
        after = inspect_database(configured)
        assert [i for i in indexes_to_rebuild(settings, after["index_bloat"]) if i["schema"] == schema] == []
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(in_schema("DROP SCHEMA {schema} CASCADE", schema))


def test_only_invalid_leftovers_of_a_failed_rebuild_are_dropped(postgres_url):
    """``_ccnew1`` and ``_ccold`` left invalid go; a valid ``_ccnew`` and another index stay."""
    schema = f"leftover_{uuid.uuid4().hex[:8]}"

    def indexes(connection) -> set[str]:
        rows = connection.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,)
        ).fetchall()
        return {row[0] for row in rows}

    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(in_schema("CREATE SCHEMA {schema}", schema))
        connection.execute(in_schema("CREATE TABLE {schema}.t (v int)", schema))
        connection.execute(in_schema("INSERT INTO {schema}.t VALUES (1), (1)", schema))
        for name in ("t_v", "t_v_ccnew", "t_v_ccnewer"):
            connection.execute(in_schema(f"CREATE INDEX {name} ON {{schema}}.t (v)", schema))
        for name in ("t_v_ccnew1", "t_v_ccold", "other_ccnew"):
            # Duplicates make a unique build fail half-way: the index is left invalid.
            with pytest.raises(psycopg.errors.UniqueViolation):
                connection.execute(
                    in_schema(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON {{schema}}.t (v)", schema)
                )
    try:
        with psycopg.connect(postgres_url, autocommit=True, row_factory=psycopg.rows.dict_row) as connection:
            assert drop_reindex_leftovers(connection, schema, "t_v") == ""
        with psycopg.connect(postgres_url) as connection:
            assert indexes(connection) == {"t_v", "t_v_ccnew", "t_v_ccnewer", "other_ccnew"}
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(in_schema("DROP SCHEMA {schema} CASCADE", schema))


def test_the_report_says_when_vacuum_or_reindex_failed(environment):
    settings = environment.db_maintenance.model_copy(update={"reindex_bloat_percent": 50.0})
    configured = environment.model_copy(update={"db_maintenance": settings})
    bloated = {"schema": "s", "table": "t", "index": "t_id", "bytes": 1 << 20, "bloat_percent": 80.0}
    inspection = {
        "database": "app",
        "vacuum_candidates": [{"schema": "s", "table": "t", "dead_tuples": 50000}],
        "sessions": [],
        "invalid_indexes": [],
        "unused_indexes": [],
        "pgstattuple": True,
        "table_bloat": [],
        "index_bloat": [bloated],
        "bloat_error": None,
    }

    failed = maintenance_report(configured, inspection, None, None, dry_run=False)
    dry = maintenance_report(configured, inspection, None, None, dry_run=True)
    nothing = maintenance_report(configured, None, None, None, dry_run=False)

    assert any("vacuum task failed" in item for item in failed["attention"])
    assert any("REINDEX CONCURRENTLY did not run" in item for item in failed["attention"])
    assert dry["attention"] == []
    assert any("inspect task failed" in item for item in nothing["attention"])


def test_a_long_session_reaches_slack_with_its_statement_redacted(environment, postgres_url, slack_messages):
    """The session's last statement carries a password and a card number; Slack sees its shape."""
    from airlock.notifications.slack import post, render

    configured = environment.model_copy(
        update={
            "db_maintenance": environment.db_maintenance.model_copy(
                update={"long_session": timedelta(seconds=1)}
            )
        }
    )
    with psycopg.connect(postgres_url) as idle:
        idle.execute("SELECT 'hunter2' AS password, 4111111111111111 AS card").fetchone()
        time.sleep(1.2)  # idle in transaction for longer than long_session
        inspection = inspect_database(configured)
        result = maintenance_report(configured, inspection, [], [], dry_run=False)
        post(
            configured.slack_conn_id,
            render(
                "db_maintenance_attention",
                environment=configured.name,
                items="\n".join(result["attention"]),
                log_url="",
            ),
        )

    [message] = [text for text in slack_messages.texts() if "idle in transaction" in text]
    assert "SELECT ? AS password, ? AS card" in message
    assert "hunter2" not in message
    assert "4111" not in message
    assert "hunter2" not in result["markdown"]
