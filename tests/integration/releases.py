"""What the release DAG tests share: the versions they ship and how they check the hosts."""

from __future__ import annotations

import psycopg
from psycopg import sql

from airlock.hooks.artifacts import release_artifact
from airlock.hooks.hosts import deploy_to_host, serving_version

OLD, NEW, BROKEN, BAD_MIGRATION, GOOD_MIGRATION = "1.0.0", "2.0.0", "2.1.0-broken", "2.2.0", "2.4.0"


def on_every_host(environment, version: str) -> None:
    artifact = release_artifact(environment.deploy, version)
    for host in environment.hosts:
        deploy_to_host(environment, host, version, artifact)


def served_versions(environment) -> dict[str, str | None]:
    return {host.name: serving_version(environment, host)[1] for host in environment.hosts}


def audit_rows(postgres_url: str, run_id: str, *columns: str) -> list[tuple]:
    """The run's rows of the audit trail (``airlock.releases``), oldest first, with ``columns``."""
    query = sql.SQL("SELECT {} FROM airlock.releases WHERE run_id = %s ORDER BY id").format(
        sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with psycopg.connect(postgres_url) as connection:
        return connection.execute(query, (run_id,)).fetchall()
