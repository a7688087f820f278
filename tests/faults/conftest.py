"""Fault injection: the release path against real services that fail the way production ones do.

Each scenario kills, hangs or restarts a real component (an ``sshd`` host, PostgreSQL, Redis, the
Slack receiver, the task process) at a chosen point of a real release run, then asserts what a
user would check: what every host serves, the lock, the audit row, the Slack text.

The release-shaped fixtures (artifacts of every test version, a verified backup, hosts on 1.0.0)
are the integration suite's own.
"""

from __future__ import annotations

from tests.integration.conftest import artifacts, hosts_on_old, verified_backup  # noqa: F401
