"""A real Airlock for end-to-end tests: Airflow's components, sandbox hosts, Slack, on free ports.

The same :class:`AirlockStack` as ``make demo``, in a temporary directory, with its own
PostgreSQL database and Redis database 14 (``AIRLOCK_E2E_REDIS_DB`` picks another, so two
checkouts can run their end-to-end tests side by side); everything is stopped and removed afterwards.
"""

from __future__ import annotations

import os

import pytest

from airlock_dev.stack import disposable_stack

E2E_REDIS_DB = int(os.environ.get("AIRLOCK_E2E_REDIS_DB", "14"))


@pytest.fixture(scope="session")
def stack():
    with disposable_stack(redis_db=E2E_REDIS_DB, prefix="airlock-e2e-") as running:
        yield running
