"""The Airlock board's reads with 10,000 audit rows and 1,000,000 health rows, against a bare
``SELECT`` of the same rows.

Fills a fresh database on the local PostgreSQL server (127.0.0.1:5432) through Airlock's own
schema (``include/sql/ops.sql``): 10,000 release and rollback rows and a year of health history
for three hosts (1,000,000 rows), then times what each route of ``/airlock/api`` reads and
computes (``airlock.web.overview``: ops store, Redis lock, the board and DORA computations;
Airflow's authentication and the JSON encoding are not in it) against a bare ``SELECT`` of the
same rows. Then the same routes over HTTP through Airflow's own api-server app, in process
(``create_app("core")``, a real JWT of the simple auth manager, a throwaway SQLite metadata
database): what a request pays for authentication, permissions and JSON on top. Prints p50 and
p99 per route and the ratio of the p99s. Goal: p99 under 200 ms.

    PYTHONPATH=plugins:tools .venv/bin/python bench/board_api.py [--samples 100] [--keep]

Redis: database ``AIRLOCK_BENCH_REDIS_DB`` (default 13) on 127.0.0.1:6379, for the lock read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import yaml

WORKSPACE = Path(tempfile.mkdtemp(prefix="airlock-bench-board-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(WORKSPACE / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{WORKSPACE}/airflow/airflow.db",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",  # not a line per timed request
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(Path(__file__).resolve().parents[1] / "plugins"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__BASE_URL": "http://127.0.0.1:8080",
        "AIRLOCK_ENVIRONMENTS_DIR": str(WORKSPACE),
    }
)

from airlock.config import PROJECT_ROOT, load_environment  # noqa: E402 - after Airflow's settings

SERVER = "postgresql://postgres@127.0.0.1:5432"
DATABASE = "airlock_bench_board"
AUDIT_ROWS, HEALTH_ROWS = 10_000, 1_000_000
CHECKS = ["app", "ssh", "disk", "inodes", "load", "memory"]
HOSTS = ["web-1", "web-2", "web-3"]


def prepare_environment(workspace: Path):
    database = {
        "conn_type": "postgres",
        "host": "127.0.0.1",
        "port": 5432,
        "login": "postgres",
        "schema": DATABASE,
    }
    # The board reads only Airlock's own tables (the ``airlock_ops`` connection); the app's
    # connection points at the same scratch database so nothing reaches a real one.
    os.environ["AIRFLOW_CONN_AIRLOCK_DEMO_DB"] = json.dumps(database)
    os.environ["AIRFLOW_CONN_AIRLOCK_OPS"] = json.dumps(database)
    redis_db = int(os.environ.get("AIRLOCK_BENCH_REDIS_DB", "13"))
    os.environ["AIRFLOW_CONN_AIRLOCK_REDIS"] = json.dumps(
        {"conn_type": "redis", "host": "127.0.0.1", "port": 6379, "extra": {"db": redis_db}}
    )
    document = yaml.safe_load((PROJECT_ROOT / "include" / "environments" / "demo.yaml").read_text())
    document.pop("backup", None)
    path = workspace / "demo.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_environment(path)


def fill(environment) -> None:
    """The ops schema (Airlock's own DDL), then the rows, generated in the database."""
    from airlock.hooks.ops_store import ops_session

    with ops_session(environment) as connection:
        if connection.execute("SELECT count(*) FROM airlock.health_checks").fetchone()[0] >= HEALTH_ROWS:
            return
        connection.execute(
            """
            INSERT INTO airlock.releases (environment, dag_id, run_id, action, version, previous,
                triggered_by, approved_by, reason, started_at, finished_at, result, detail)
            SELECT 'demo', 'release_demo', 'run-' || n,
                   CASE WHEN n %% 20 = 0 THEN 'rollback' ELSE 'release' END, '1.' || n,
                   '{"web-1": "1.0", "web-2": "1.0", "web-3": "1.0"}'::jsonb, 'ci', 'rita', 'bench',
                   now() - (n || ' hours')::interval - interval '10 minutes',
                   now() - (n || ' hours')::interval,
                   (ARRAY['succeeded', 'succeeded', 'succeeded', 'rolled_back', 'failed'])[1 + n %% 5], NULL
              FROM generate_series(1, %s) AS n
            """,
            (AUDIT_ROWS,),
        )
        pairs = len(CHECKS) * len(HOSTS)
        connection.execute(
            """
            INSERT INTO airlock.health_checks (environment, dag_id, run_id, checked_at, check_name, target,
                status, value, threshold, message, duration_ms)
            SELECT 'demo', 'health_demo', 'run-' || (n / %(pairs)s),
                   now() - ((n / %(pairs)s) * interval '1 minute' * 31.5),
                   (%(checks)s::text[])[1 + n %% %(n_checks)s],
                   (%(hosts)s::text[])[1 + (n / %(n_checks)s) %% %(n_hosts)s],
                   CASE WHEN n %% 97 = 0 THEN 'critical' WHEN n %% 13 = 0 THEN 'warn' ELSE 'ok' END,
                   (n %% 100)::float, 'warn 80 / critical 90', 'healthy in 12 ms, version 1.2.0', 3.0
              FROM generate_series(0, %(rows)s - 1) AS n
            """,
            {
                "pairs": pairs,
                "checks": CHECKS,
                "hosts": HOSTS,
                "n_checks": len(CHECKS),
                "n_hosts": len(HOSTS),
                "rows": HEALTH_ROWS,
            },
        )
        connection.execute("ANALYZE airlock.releases")
        connection.execute("ANALYZE airlock.health_checks")


def timed(call: Callable[[], object], samples: int) -> list[float]:
    call()  # warm: connections, plans, imports
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def percentile(times: list[float], share: float) -> float:
    return statistics.quantiles(times, n=100, method="inclusive")[int(share * 100) - 1]


def bare(statement: str, *args: object) -> Callable[[], object]:
    def run() -> object:
        with psycopg.connect(f"{SERVER}/{DATABASE}") as connection:
            return connection.execute(statement, args).fetchall()

    return run


def http_client():
    """Airflow's api-server app with the Airlock plugin mounted, and an admin's bearer header."""
    import subprocess
    import sys

    (WORKSPACE / "airflow").mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    from airflow.api_fastapi.app import create_app
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from fastapi.testclient import TestClient

    client = TestClient(create_app("core"), base_url="http://127.0.0.1:8080")
    client.__enter__()
    password = json.loads(Path(SimpleAuthManager.get_generated_password_file()).read_text())["admin"]
    token = client.post("/auth/token", json={"username": "admin", "password": password}).json()
    return client, {"Authorization": f"Bearer {token['access_token']}"}


def over_http(client, headers: dict[str, str], path: str, **query: object) -> Callable[[], object]:
    def get() -> object:
        response = client.get(path, params=query, headers=headers)
        response.raise_for_status()
        return response.json()

    return get


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    arguments = parser.parse_args()
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            connection.execute(f'CREATE DATABASE "{DATABASE}"')
    try:
        from airlock.web import overview

        environment = prepare_environment(WORKSPACE)
        started = time.monotonic()
        fill(environment)
        print(
            f"{AUDIT_ROWS} audit rows, {HEALTH_ROWS} health rows ready in {time.monotonic() - started:.0f}s"
        )
        day_ago = datetime.now(UTC) - timedelta(hours=24)
        routes = {
            "environments": (
                lambda: overview.overview(environment),
                bare(
                    "SELECT * FROM airlock.health_checks WHERE environment = 'demo' AND checked_at >= %s",
                    day_ago,
                ),
            ),
            "releases?limit=20": (
                lambda: overview.releases(environment, 20),
                bare(
                    "SELECT * FROM airlock.releases WHERE environment = 'demo'"
                    " ORDER BY finished_at DESC LIMIT 20"
                ),
            ),
            "health (24 h)": (
                lambda: overview.health(environment, day_ago, 5000),
                bare(
                    "SELECT * FROM airlock.health_checks WHERE environment = 'demo' AND checked_at >= %s",
                    day_ago,
                ),
            ),
            "dora?days=30": (
                lambda: overview.dora(environment, 30),
                bare(
                    "SELECT * FROM airlock.releases WHERE environment = 'demo' AND finished_at >= %s",
                    datetime.now(UTC) - timedelta(days=30),
                ),
            ),
        }
        client, admin = http_client()
        base = "/airlock/api/environments"
        requests = {
            "environments": over_http(client, admin, base),
            "releases?limit=20": over_http(client, admin, f"{base}/demo/releases", limit=20),
            "health (24 h)": over_http(client, admin, f"{base}/demo/health", since=day_ago.isoformat()),
            "dora?days=30": over_http(client, admin, f"{base}/demo/dora", days=30),
        }
        print(
            f"{'route':<20} {'p50 ms':>8} {'p99 ms':>8} {'bare p50':>9} {'bare p99':>9} {'p99 ratio':>9}"
            f" {'HTTP p50':>9} {'HTTP p99':>9}"
        )
        for name, (route, baseline) in routes.items():
            ours, theirs = timed(route, arguments.samples), timed(baseline, arguments.samples)
            http = timed(requests[name], arguments.samples)
            p99, bare_p99, http_p99 = percentile(ours, 0.99), percentile(theirs, 0.99), percentile(http, 0.99)
            print(
                f"{name:<20} {statistics.median(ours):8.1f} {p99:8.1f} {statistics.median(theirs):9.1f} "
                f"{bare_p99:9.1f} {p99 / bare_p99:9.2f} {statistics.median(http):9.1f} {http_p99:9.1f}"
                + ("" if http_p99 < 200 else "  (over 200 ms over HTTP)")
            )
        client.__exit__(None, None, None)
    finally:
        shutil.rmtree(WORKSPACE, ignore_errors=True)
        if not arguments.keep:
            with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as connection:
                connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')


if __name__ == "__main__":
    main()
