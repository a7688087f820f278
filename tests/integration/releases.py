"""What the release DAG tests share: the versions they ship and how they check the hosts."""

from __future__ import annotations

import json

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


def task_times(dag_id: str, run_id: str) -> dict[str, tuple]:
    """``task_id`` (``task_id[map_index]`` for mapped ones) -> (start, end), from the metadata DB."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(
                TaskInstance.task_id, TaskInstance.map_index, TaskInstance.start_date, TaskInstance.end_date
            ).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        ).all()
    return {(task if index < 0 else f"{task}[{index}]"): (start, end) for task, index, start, end in rows}


def approval_response(dag_id: str, run_id: str, task_id: str = "approve") -> tuple:
    """What the run's approval request recorded as its answer: (responded_by, chosen_options)."""
    from airflow.models import TaskInstance
    from airflow.models.hitl import HITLDetail
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.execute(
            select(HITLDetail.responded_by, HITLDetail.chosen_options)
            .join(TaskInstance, HITLDetail.ti_id == TaskInstance.id)
            .where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id
            )
        ).one()


def plan_of(dag_id: str, run_id: str) -> dict:
    """The run's ``plan`` task result, from the metadata database."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = select(XComModel.value).where(
        XComModel.dag_id == dag_id,
        XComModel.run_id == run_id,
        XComModel.task_id == "plan",
        XComModel.key == "return_value",
    )
    with create_session() as session:
        [value] = session.scalars(query).all()
    return value if isinstance(value, dict) else json.loads(value)
