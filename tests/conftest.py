"""Test harness: an isolated Airflow home and the real services Airlock talks to.

Before Airflow is imported anywhere, this module points ``AIRFLOW_HOME`` at a fresh directory
holding a copy of a pre-migrated SQLite metadata database (migrated once per Airflow version
and cached in ``.cache/``; copying it is instant). Fixtures then provide, per session:

- a fresh PostgreSQL database on 127.0.0.1:5432 (dropped afterwards),
- Redis on 127.0.0.1:6379, database 15, Airlock's keys cleared before and after,
- a sandbox of three real ``sshd`` hosts on free loopback ports,
- a Slack receiver recording what Airlock posts,
- the Airflow connections for all of them, as ``AIRFLOW_CONN_*`` environment variables.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
CACHE = PROJECT / ".cache"
SESSION_DIR = Path(tempfile.mkdtemp(prefix="airlock-tests-"))
AIRFLOW_HOME = SESSION_DIR / "airflow"
ENVIRONMENTS = SESSION_DIR / "environments"
# Tests running side by side (e.g. two checkouts) can each take their own database.
REDIS_TEST_DB = int(os.environ.get("AIRLOCK_TEST_REDIS_DB", "15"))


def _airflow_settings(home: Path) -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "AIRFLOW__API__BASE_URL": "http://127.0.0.1:8080",
    }


def _template_database() -> Path:
    """A migrated metadata DB for this Airflow version, built once and reused."""
    version = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m; print(m.version('apache-airflow-core'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    template_home = CACHE / f"airflow-{version}"
    template = template_home / "airflow.db"
    if not template.exists():
        template_home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **_airflow_settings(template_home)}
        subprocess.run(
            [sys.executable, "-m", "airflow", "db", "migrate"],
            check=True,
            env=env,
            capture_output=True,
        )
    return template


def _prepare_airflow_home() -> None:
    AIRFLOW_HOME.mkdir(parents=True)
    ENVIRONMENTS.mkdir()
    shutil.copy(_template_database(), AIRFLOW_HOME / "airflow.db")
    os.environ.update(_airflow_settings(AIRFLOW_HOME))
    os.environ["AIRLOCK_ENVIRONMENTS_DIR"] = str(ENVIRONMENTS)
    sys.path[:0] = [str(PROJECT / "plugins"), str(PROJECT / "tools")]


_prepare_airflow_home()

from airlock_dev.hosts import Sandbox, free_port  # noqa: E402 - after AIRFLOW_HOME is set
from airlock_dev.slack import SlackReceiver  # noqa: E402
from tests.support import serve_memory_urls, write_sandbox_environment  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by directory: tests/unit and tests/dags are unit, the others as named."""
    for item in items:
        parts = Path(str(item.fspath)).relative_to(PROJECT / "tests").parts
        kind = {"dags": "unit"}.get(parts[0], parts[0])
        if kind in ("unit", "integration", "faults", "e2e"):
            item.add_marker(getattr(pytest.mark, kind))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


def set_connection(conn_id: str, connection: dict) -> None:
    os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(connection)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A fresh application database on the local PostgreSQL server, dropped after the session.

    Its ops database (``<name>_ops``, the ``airlock_ops`` connection: the audit trail and health
    history, see :func:`ops_url`) comes and goes with it, as in a real installation.
    """
    import psycopg

    name = f"airlock_test_{uuid.uuid4().hex[:10]}"
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        for database in (name, f"{name}_ops"):
            connection.execute(f'CREATE DATABASE "{database}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    for conn_id, database in (("airlock_demo_db", name), ("airlock_ops", f"{name}_ops")):
        set_connection(
            conn_id,
            {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": 5432,
                "login": "postgres",
                "schema": database,
            },
        )
    yield url
    with psycopg.connect(admin, autocommit=True) as connection:
        for database in (name, f"{name}_ops"):
            connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="session")
def ops_url(postgres_url: str) -> str:
    """The ops database (``airlock_ops``) beside :func:`postgres_url`: where audit rows are read."""
    return f"{postgres_url}_ops"


def _clear_airlock_keys(client) -> None:
    for key in client.scan_iter("airlock:*"):
        client.delete(key)


@pytest.fixture(scope="session")
def redis_client():
    """Redis database 15 on the local server; Airlock's keys are removed before and after."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_TEST_DB, decode_responses=True)
    client.ping()
    _clear_airlock_keys(client)
    set_connection(
        "airlock_redis",
        {"conn_type": "redis", "host": "127.0.0.1", "port": 6379, "extra": {"db": REDIS_TEST_DB}},
    )
    yield client
    _clear_airlock_keys(client)
    client.close()


@pytest.fixture(scope="session")
def slack() -> SlackReceiver:
    with SlackReceiver() as receiver:
        set_connection("airlock_slack", receiver.connection())
        yield receiver


@pytest.fixture
def slack_messages(slack: SlackReceiver) -> SlackReceiver:
    """The session's Slack receiver, emptied for this test."""
    slack.clear()
    return slack


@pytest.fixture(scope="session")
def environment():
    """The ``sandbox`` environment: the demo's shape on free loopback ports, in this session's dir."""
    return write_sandbox_environment(
        ENVIRONMENTS / "sandbox.yaml",
        base=SESSION_DIR / "sandbox",
        ssh_ports=[free_port() for _ in range(3)],
        app_ports=[free_port() for _ in range(3)],
    )


@pytest.fixture(scope="session")
def sandbox(environment, postgres_url) -> Sandbox:
    """Three real sshd hosts serving nothing yet; every process is stopped after the session."""
    hosts = Sandbox(
        environment=environment,
        directory=SESSION_DIR / "sandbox" / "ssh",
        app_settings={"DATABASE_URL": postgres_url, "PYTHON": sys.executable},
    )
    hosts.start()
    set_connection("airlock_ssh", hosts.ssh_connection_uri())
    yield hosts
    hosts.stop()


@pytest.fixture
def memory_store(monkeypatch):
    """fsspec's in-memory filesystem, registered as a provider registers its store (S3 cannot run
    here): the same ObjectStoragePath code path as any remote archive."""
    from fsspec.implementations.memory import MemoryFileSystem

    store = MemoryFileSystem()
    store.store.clear()
    store.pseudo_dirs.clear()
    store.pseudo_dirs.append("")
    serve_memory_urls(monkeypatch, store)
    yield store
    store.store.clear()
