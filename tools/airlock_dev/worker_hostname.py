"""The host name a Celery worker of a local stack reports for its tasks (``[core] hostname_callable``).

Airflow records each task instance's ``hostname`` and fetches its log from
``http://<hostname>:<[logging] worker_log_server_port>/log/...``: one port for every worker. Two
workers on one machine would report the same name and could not be told apart, nor their logs
fetched. Each worker of a Celery stack gets its own loopback address instead (127.0.0.2,
127.0.0.3, ...), serves its logs there, and reports that address as its host name.
"""

from __future__ import annotations

import os
import socket

VARIABLE = "AIRLOCK_WORKER_HOSTNAME"


def hostname() -> str:
    """``$AIRLOCK_WORKER_HOSTNAME``, else the machine's fully qualified name (Airflow's default)."""
    return os.environ.get(VARIABLE) or socket.getfqdn()
