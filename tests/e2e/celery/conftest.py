"""A real Airlock in Celery mode: the CeleryExecutor and two ``airflow celery worker`` processes.

The same stack as ``AIRLOCK_EXECUTOR=celery make demo``, on free ports in a temporary directory,
with its own PostgreSQL databases (one of them the Celery result backend). Airlock's keys live in
``AIRLOCK_E2E_REDIS_DB``; the Celery broker in ``AIRLOCK_E2E_BROKER_REDIS_DB`` (default: the same
database). Each worker has one task slot, so two tasks ready at once run on different workers.
"""

from __future__ import annotations

import os

import pytest

from airlock_dev.stack import disposable_stack
from tests.e2e.conftest import E2E_REDIS_DB

BROKER_REDIS_DB = int(os.environ.get("AIRLOCK_E2E_BROKER_REDIS_DB", str(E2E_REDIS_DB)))


@pytest.fixture(scope="session")
def celery_stack():
    with disposable_stack(
        redis_db=E2E_REDIS_DB,
        prefix="airlock-e2e-celery-",
        executor="celery",
        worker_concurrency=1,
        broker_redis_db=BROKER_REDIS_DB,
    ) as running:
        yield running
