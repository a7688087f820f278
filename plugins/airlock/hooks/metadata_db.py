"""Airflow's metadata database, reached through a dedicated Airflow connection.

Airflow 3 tasks have no direct access to the metadata database, so ``airflow_housekeeping``
names a connection (``metadata_conn_id`` in ``include/housekeeping.yaml``) and this module turns
it into the SQLAlchemy URL that ``airflow db clean`` runs against. The password is registered
with Airflow's secret masker and only ever shown masked.
"""

from __future__ import annotations

from urllib.parse import quote

#: Tables ``airflow db clean`` leaves behind when run without ``--skip-archive``.
ARCHIVE_PREFIX = "_airflow_deleted__"


def metadata_database_url(conn_id: str) -> tuple[str, str]:
    """The SQLAlchemy URL of the metadata connection, and the same URL with the password masked."""
    from airflow.sdk import BaseHook
    from airflow.sdk.log import mask_secret

    connection = BaseHook.get_connection(conn_id)
    if connection.conn_type == "sqlite":
        url = f"sqlite:///{connection.host}"
        return url, url
    if connection.conn_type not in ("postgres", "postgresql"):
        raise ValueError(
            f"Connection {conn_id} is of type {connection.conn_type!r}: airflow_housekeeping supports "
            "postgres and sqlite metadata databases"
        )
    if connection.password:
        mask_secret(connection.password)
    login = quote(connection.login or "", safe="")
    secret = f":{quote(connection.password, safe='')}" if connection.password else ""
    address = f"{connection.host or 'localhost'}:{connection.port or 5432}/{connection.schema or 'airflow'}"
    return (
        f"postgresql+psycopg2://{login}{secret}@{address}",
        f"postgresql+psycopg2://{login}{':***' if secret else ''}@{address}",
    )


def archive_tables(url: str) -> list[str]:
    """Archive tables (``_airflow_deleted__*``) earlier ``airflow db clean`` runs left behind."""
    from sqlalchemy import create_engine, inspect

    engine = create_engine(url)
    try:
        return sorted(name for name in inspect(engine).get_table_names() if name.startswith(ARCHIVE_PREFIX))
    finally:
        engine.dispose()
