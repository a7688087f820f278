"""PostgreSQL sessions: the one place an Airflow Postgres connection id becomes a database session.

Every reader and writer of an environment's databases (the application database, the ops tables,
maintenance sessions, smoke queries, health probes) comes through here, so timeouts, autocommit
and the ``application_name`` seen in ``pg_stat_activity`` are set in one way.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row


def _milliseconds(value: timedelta) -> str:
    return f"{int(value.total_seconds() * 1000)}ms"


@contextmanager
def session(
    conn_id: str,
    *,
    autocommit: bool = False,
    rows_as_dicts: bool = False,
    application_name: str | None = None,
    timeouts: Mapping[str, timedelta] | None = None,
) -> Iterator[psycopg.Connection[Any]]:
    """A psycopg connection for ``conn_id``, closed on exit.

    Without autocommit the block runs in one transaction, committed when it ends and rolled back
    when it raises. ``timeouts`` maps settings such as ``lock_timeout`` or ``statement_timeout``
    to their values for this session.
    """
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    connection = PostgresHook(postgres_conn_id=conn_id).get_conn()
    try:
        connection.autocommit = autocommit
        if rows_as_dicts:
            connection.row_factory = dict_row
        settings = {name: _milliseconds(value) for name, value in (timeouts or {}).items()}
        if application_name:
            settings["application_name"] = application_name
        for name, value in settings.items():
            connection.execute("SELECT set_config(%s, %s, false)", (name, value))
        if autocommit:
            yield connection
        else:
            with connection.transaction():
                yield connection
            connection.commit()
    finally:
        connection.close()


def first_row(conn_id: str, query: str, parameters: Sequence[Any] | Mapping[str, Any] | None = None) -> Any:
    """The first row of ``query`` (a tuple), or None when it returns no rows."""
    with session(conn_id, autocommit=True) as connection:
        return connection.execute(query, parameters).fetchone()
