"""A real Airlock for end-to-end tests: Airflow's components, sandbox hosts, Slack, on free ports.

The same :class:`AirlockStack` as ``make demo``, in a temporary directory, with its own
PostgreSQL database and Redis database 14; everything is stopped and removed afterwards.
"""

from __future__ import annotations

import pytest

from airlock_dev.stack import disposable_stack

E2E_REDIS_DB = 14


@pytest.fixture(scope="session")
def stack():
    with disposable_stack(redis_db=E2E_REDIS_DB, prefix="airlock-e2e-") as running:
        yield running
