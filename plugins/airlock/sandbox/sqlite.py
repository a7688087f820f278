"""Connect arguments for the local stack's SQLite metadata database (``make demo``, e2e tests).

With every demo DAG scheduled, the scheduler, dag-processor, triggerer, task processes and the
API server all write to one SQLite file at startup. SQLite's default 5 s lock wait then turns a
burst of writes into HTTP 500 ("database is locked") for a trigger through the API; waiting
longer serializes them instead. Named by ``[database] sql_alchemy_connect_args(_async)``.
"""

from __future__ import annotations

#: The synchronous engine (Airflow adds ``check_same_thread`` to this dict itself).
CONNECT_ARGS: dict[str, object] = {"timeout": 60}
#: The API server's async engine (aiosqlite passes it on to sqlite3).
ASYNC_CONNECT_ARGS: dict[str, object] = {"timeout": 60}
