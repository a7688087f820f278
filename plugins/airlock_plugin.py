"""Airlock's Airflow plugin: found by Airflow's plugin loader in ``plugins/``.

The ``airlock`` package itself is skipped by the loader (``plugins/.airflowignore``) and
imported as a package; this file only registers what it provides.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airlock.listeners import scheduler, warm_imports


class BoardApp:
    """The ``/airlock`` ASGI app, built on its first request: every Airflow component loads
    plugins (the scheduler for the listener, workers too), only the api-server serves the board,
    and only it should import FastAPI and Airflow's API security for it."""

    def __init__(self) -> None:
        self.app = None

    async def __call__(self, scope, receive, send) -> None:
        if self.app is None:
            from airlock.web.app import create_board_app

            self.app = create_board_app()
        await self.app(scope, receive, send)


class AirlockPlugin(AirflowPlugin):
    """Listeners: in the scheduler, stranded approvals resumed and the installation's sign of life;
    in the scheduler and the dag-processor, the DAG files' imports kept warm across forks.
    The board: the ``/airlock`` app (JSON API, Prometheus metrics) and the "Airlock" view."""

    name = "airlock"
    listeners = [scheduler, warm_imports]
    fastapi_apps = [{"name": "airlock", "app": BoardApp(), "url_prefix": "/airlock"}]
    external_views = [
        {
            "name": "Airlock",
            "href": "/airlock/",
            "url_route": "airlock",
            "destination": "nav",
            "nav_top_level": True,
        }
    ]
