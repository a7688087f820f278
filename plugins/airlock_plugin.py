"""Airlock's Airflow plugin: found by Airflow's plugin loader in ``plugins/``.

The ``airlock`` package itself is skipped by the loader (``plugins/.airflowignore``) and
imported as a package; this file only registers what it provides.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airlock.listeners import scheduler


class AirlockPlugin(AirflowPlugin):
    """Listeners: in the scheduler, stranded approvals resumed and the installation's sign of life."""

    name = "airlock"
    listeners = [scheduler]
