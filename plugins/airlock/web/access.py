"""Who may read what: Airflow's own authentication and DAG permissions, for every route.

Airflow does not authenticate the apps plugins mount (``fastapi_apps``), so each route depends
on :data:`ReaderDep` (Airflow's ``get_user``: the bearer token or the UI's cookie, 401 without
one, 403 for a bad one). An environment is readable by a user who may read its
``release_<env>`` and ``health_<env>`` DAGs, asked of the configured auth manager, so per-DAG
rights (FAB roles, Keycloak, teams) decide what the board shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
from airflow.api_fastapi.core_api.security import get_user
from airflow.models.dag import DagModel
from fastapi import Depends, HTTPException, status

from airlock.config import Environment, load_environments

ReaderDep = Annotated[BaseUser, Depends(get_user)]


def environment_dag_ids(environment: Environment) -> tuple[str, ...]:
    """The DAGs whose read permission opens an environment's board."""
    return (f"release_{environment.name}", f"health_{environment.name}")


def readable_environments(user: BaseUser, environments: Iterable[Environment]) -> list[Environment]:
    """The environments ``user`` may read, in name order."""
    environments = sorted(environments, key=lambda environment: environment.name)
    dag_ids = [dag_id for environment in environments for dag_id in environment_dag_ids(environment)]
    teams = DagModel.get_dag_id_to_team_name_mapping(dag_ids) if dag_ids else {}
    auth_manager = get_auth_manager()
    return [
        environment
        for environment in environments
        if auth_manager.batch_is_authorized_dag(
            [
                {"method": "GET", "details": DagDetails(id=dag_id, team_name=teams.get(dag_id))}
                for dag_id in environment_dag_ids(environment)
            ],
            user=user,
        )
    ]


def readable_environment(env: str, user: ReaderDep) -> Environment:
    """The path's environment, or 404 when none by that name is configured or the user may not
    read its DAGs: the same answer for both, so a reader learns nothing of environments they
    may not see (as GitHub answers for private repositories). 403 for a user who may read no
    environment at all."""
    catalog = load_environments()
    readable = readable_environments(user, catalog)
    if not readable:  # the same for every path: it tells nothing of what exists
        raise HTTPException(status.HTTP_403_FORBIDDEN, "You may read no environment's DAGs")
    for environment in readable:
        if environment.name == env:
            return environment
    known = ", ".join(e.name for e in readable)
    raise HTTPException(
        status.HTTP_404_NOT_FOUND, f"No environment {env!r} that you may read (yours: {known})"
    )


EnvironmentDep = Annotated[Environment, Depends(readable_environment)]


def all_readable(user: ReaderDep) -> list[Environment]:
    """Every configured environment the user may read."""
    return readable_environments(user, load_environments())


ReadableDep = Annotated[list[Environment], Depends(all_readable)]
