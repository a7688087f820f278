"""A real Airlock for end-to-end tests: Airflow's components, sandbox hosts, Slack, on free ports.

The same :class:`AirlockStack` as ``make demo``, in a temporary directory, with its own
PostgreSQL database and Redis database; everything is stopped and removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
import redis

from airlock.sandbox.hosts import free_port
from airlock.sandbox.stack import AirlockStack, Ports

E2E_REDIS_DB = 14


@pytest.fixture(scope="session")
def stack():
    home = Path(tempfile.mkdtemp(prefix="airlock-e2e-"))
    database = f"airlock_e2e_{uuid.uuid4().hex[:8]}"
    client = redis.Redis(host="127.0.0.1", port=6379, db=E2E_REDIS_DB)
    for key in client.scan_iter("airlock:*"):
        client.delete(key)
    saved = dict(os.environ)
    running = AirlockStack(
        home=home,
        ports=Ports(
            api=free_port(),
            slack=free_port(),
            ssh=[free_port() for _ in range(3)],
            app=[free_port() for _ in range(3)],
        ),
        database=database,
        redis_db=E2E_REDIS_DB,
        echo_slack=False,
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()
        os.environ.clear()
        os.environ.update(saved)
        for key in client.scan_iter("airlock:*"):
            client.delete(key)
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(home, ignore_errors=True)
