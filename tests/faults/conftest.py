"""Fault injection: the release path against real services that fail the way production ones do.

Each scenario kills, hangs or restarts a real component (an ``sshd`` host, PostgreSQL, Redis, the
Slack receiver, the task process) at a chosen point of a real release run, then asserts what a
user would check: what every host serves, the lock, the audit row, the Slack text.

The release-shaped fixtures (artifacts of every test version, a verified backup, hosts on 1.0.0)
are the integration suite's own.
"""

from __future__ import annotations

import pytest

from tests.faults.load import HostLoad
from tests.faults.private_postgres import private_postgres_server
from tests.integration.conftest import artifacts, hosts_on_old, verified_backup  # noqa: F401


@pytest.fixture
def host_load():
    """``host_load(environment)``: a running :class:`~tests.faults.load.HostLoad` on every host of
    ``environment``; whatever the test did not stop is stopped afterwards."""
    started: list[HostLoad] = []

    def start(environment) -> HostLoad:
        load = HostLoad(environment).start()
        started.append(load)
        return load

    yield start
    for load in started:
        load.stop()


@pytest.fixture
def private_postgres():
    """A PostgreSQL 15 server of this test alone (:class:`~tests.faults.private_postgres.PrivateServer`),
    which it may restart; stopped and removed afterwards, whatever happened."""
    yield from private_postgres_server()
