"""The ``/airlock`` app: the board page, its JSON API and the Prometheus metrics.

Paths (stable, outside checks use them), all behind Airflow's own authentication:

- ``GET /airlock/`` the board (the "Airlock" view in Airflow's navigation);
- ``GET /airlock/api/environments`` each readable environment's overview;
- ``GET /airlock/api/environments/{env}/releases?limit=N`` audit rows, newest first;
- ``GET /airlock/api/environments/{env}/health?since=ISO8601`` health history, strips, trends;
- ``GET /airlock/api/environments/{env}/dora?days=30`` the DORA figures;
- ``GET /airlock/metrics`` Prometheus text;
- ``POST /airlock/slack/interactions`` Slack's callbacks of the approval buttons: the one route
  not behind Airflow's authentication, authenticated by Slack's request signature instead
  (:mod:`airlock.web.slack`).

An unknown environment, or one the user may not read, answers 404 (the same answer); bad query values 422.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
from airflow.api_fastapi.core_api.security import requires_access_view
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from airlock.web import overview
from airlock.web.access import EnvironmentDep, ReadableDep
from airlock.web.metrics import exposition

BOARD_PAGE = Path(__file__).with_name("board.html")
#: The health route's default window, when no ``since`` is given.
DEFAULT_HEALTH_WINDOW = timedelta(hours=24)


def create_board_app() -> FastAPI:
    """The app :class:`~airlock_plugin.AirlockPlugin` hands Airflow to mount at ``/airlock``."""
    app = FastAPI(
        title="Airlock",
        description="Environments, releases, health and DORA figures of Airlock",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get(
        "/",
        response_class=HTMLResponse,
        dependencies=[Depends(requires_access_view(AccessView.PLUGINS))],
    )
    def board() -> HTMLResponse:
        """The board page; it reads the JSON API below with the same cookie."""
        return HTMLResponse(BOARD_PAGE.read_text(), headers={"Cache-Control": "no-store"})

    @app.post("/slack/interactions")
    async def slack_interactions(request: Request) -> JSONResponse:
        """Approve or Reject clicked in Slack (see :mod:`airlock.web.slack`)."""
        from airlock.web.slack import MAX_BODY, handle_interaction

        body = b""
        async for chunk in request.stream():  # never more than a Slack payload into memory
            body += chunk
            if len(body) > MAX_BODY:
                return JSONResponse({"text": "not a Slack interaction"}, status_code=413)
        status, answer = await run_in_threadpool(handle_interaction, body, request.headers)
        return JSONResponse(answer, status_code=status)

    @app.get("/api/environments")
    def environments(readable: ReadableDep) -> dict[str, Any]:
        return {"environments": [overview.overview(environment) for environment in readable]}

    @app.get("/api/environments/{env}/releases")
    def releases(
        environment: EnvironmentDep, limit: Annotated[int, Query(ge=1, le=1000)] = 20
    ) -> dict[str, Any]:
        return {"environment": environment.name, "releases": overview.releases(environment, limit)}

    @app.get("/api/environments/{env}/health")
    def health(
        environment: EnvironmentDep,
        since: Annotated[datetime | None, Query(description="ISO 8601; default: the last 24 hours")] = None,
        limit: Annotated[int, Query(ge=1, le=20000)] = 5000,
    ) -> dict[str, Any]:
        since = since or datetime.now(UTC) - DEFAULT_HEALTH_WINDOW
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return overview.health(environment, since, limit)

    @app.get("/api/environments/{env}/dora")
    def dora(environment: EnvironmentDep, days: Annotated[int, Query(ge=1, le=365)] = 30) -> dict[str, Any]:
        return {"environment": environment.name, **overview.dora(environment, days).to_dict()}

    @app.get("/metrics")
    def metrics(readable: ReadableDep) -> Response:
        return Response(exposition(readable), media_type=CONTENT_TYPE_LATEST)

    return app
