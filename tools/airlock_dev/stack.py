"""A running Airlock on this machine: Airflow's components, the sandbox hosts, Slack, artifacts.

One implementation serves ``make demo`` (fixed ports, ``.demo/``) and the end-to-end tests (free
ports, a temporary directory). Airflow runs as separate components bound to loopback, never
``airflow standalone`` (whose log servers listen on every interface): api-server, scheduler,
dag-processor and triggerer, with Airlock's LocalExecutor and a PostgreSQL metadata database.
With ``executor="celery"`` (``AIRLOCK_EXECUTOR=celery make demo``) the CeleryExecutor runs the
tasks instead, on Celery workers of this machine (see ``CeleryWorker``).

Three databases on the local PostgreSQL server (127.0.0.1:5432) belong to a stack: the demo app's
(``database``), Airlock's ops tables (``<database>_ops``: the audit trail and health history live
outside the application's database, so a restore cannot rewind them) and Airflow's metadata
(``metadata_database``). They are created when missing; the demo keeps them between runs
(``make clean`` drops them), the disposable stacks of the tests and benchmarks get fresh ones and
drop them afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from airlock.config import PROJECT_ROOT, Environment, Host, load_environment
from airlock_dev.hosts import Sandbox, SandboxError, port_is_free
from airlock_dev.slack import SlackReceiver

DEMO_VERSIONS = ("1.0.0", "1.1.0", "2.0.0", "2.1.0-broken")
#: Every DAG of the demo environment (and the environment-less ones): the stack is ready once
#: the dag-processor has parsed them all.
DEMO_DAGS = (
    "release_demo",
    "rollback_demo",
    "migrate_demo",
    "backup_demo",
    "restore_demo",
    "health_demo",
    "log_cleanup_demo",
    "db_maintenance_demo",
    "airflow_housekeeping",
    "unlock_demo",
)
INITIAL_VERSION = "1.0.0"
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
COMPONENTS = {
    "api-server": ["api-server", "--host", "127.0.0.1", "--port", "{port}"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
EXECUTORS = ("local", "celery")


@dataclass(frozen=True)
class CeleryWorker:
    """
    One ``airflow celery worker`` of a Celery stack: a machine of its own, as far as tasks can tell.

    Its home, temporary and artifact-cache directories and its task-log folder are its own (a file
    a task writes on one worker is not there for the next task on the other). It reports its own
    loopback address as its host name and serves its task logs there, on the port the api-server
    asks every worker for (Airflow has one ``worker_log_server_port`` for all workers).

    :param number: 1, 2, ...: the worker's name is ``worker-<number>``, its address 127.0.0.<number + 1>.
    :param root: the directory holding the worker's own directories.
    :param queues: the Celery queues it consumes.
    """

    number: int
    root: Path
    queues: tuple[str, ...] = ("default",)

    @property
    def name(self) -> str:
        return f"worker-{self.number}"

    @property
    def address(self) -> str:
        return f"127.0.0.{self.number + 1}"

    @property
    def directory(self) -> Path:
        return self.root / self.name

    @property
    def log_server(self) -> str:
        return f"{self.name}-logs"

    def settings(self) -> dict[str, str]:
        """What this worker's processes (and the task processes below them) see differently."""
        for sub in ("home", "tmp", "cache/artifacts", "logs"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        return {
            "HOME": str(self.directory / "home"),
            "TMPDIR": str(self.directory / "tmp"),
            "AIRLOCK_ARTIFACT_CACHE": str(self.directory / "cache" / "artifacts"),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.directory / "logs"),
            "AIRLOCK_WORKER_HOSTNAME": self.address,
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airlock_dev.worker_hostname.hostname",
            "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT / "plugins"), str(PROJECT_ROOT / "tools")]),
        }

    def commands(self, concurrency: int, log_port: int) -> dict[str, list[str]]:
        """The worker (Airflow's own log server off: it binds every interface) and its log server
        bound to the worker's loopback address."""
        return {
            self.name: [
                "-m", "airflow", "celery", "worker",
                "--celery-hostname", f"{self.name}@%h",
                "--queues", ",".join(self.queues),
                "--concurrency", str(concurrency),
                "--pid", str(self.directory / "worker.pid"),
                "--skip-serve-logs",
            ],
            self.log_server: [
                "-m", "uvicorn", "--factory", "airflow.utils.serve_logs.log_server:get_app",
                "--host", self.address, "--port", str(log_port), "--no-access-log",
            ],
        }  # fmt: skip


def installation_id(home: Path) -> str:
    """The stable id of the Airflow installation rooted at ``home``: made once, then kept."""
    path = home / "installation_id"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(uuid.uuid4().hex + "\n")
    return path.read_text().strip()


def descendants(roots: list[int]) -> list[int]:
    """Every process below ``roots`` (children, grandchildren, ...), read from ``ps``."""
    listing = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True)
    children: dict[int, list[int]] = {}
    for line in listing.stdout.splitlines():
        pid, ppid = (int(field) for field in line.split())
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def say(message: str) -> None:
    print(f"[airlock] {message}", flush=True)


@dataclass
class Ports:
    api: int = 8080
    slack: int = 8099
    ssh: list[int] = field(default_factory=lambda: [2201, 2202, 2203])
    app: list[int] = field(default_factory=lambda: [8101, 8102, 8103])
    #: the port every Celery worker serves its task logs on (each on its own loopback address)
    worker_logs: int = 8793


@dataclass
class AirlockStack:
    """
    Everything ``make demo`` runs, rooted at ``home``.

    :param home: directory for all state (``.demo`` for the demo).
    :param ports: loopback ports of the API, Slack receiver, sshd hosts and demo app.
    :param database: name of the demo app's PostgreSQL database on 127.0.0.1:5432.
    :param metadata_database: name of Airflow's metadata database on the same server.
    :param redis_db: Redis database number on 127.0.0.1:6379.
    :param echo_slack: print Slack messages on the console.
    :param overrides: top-level settings replaced in the generated demo environment (not with
        the default ports, where the shipped ``include/environments/demo.yaml`` is used as is).
    :param executor: ``local`` (Airlock's LocalExecutor) or ``celery`` (the CeleryExecutor and
        ``workers`` Celery workers, Redis broker and PostgreSQL result backend).
    :param workers: how many Celery workers (``celery`` only).
    :param worker_queues: the queues of each worker, comma-separated (``("default", "zone-a")``:
        worker-2 serves only ``zone-a``); empty: every worker serves ``default``.
    :param worker_concurrency: task slots per Celery worker.
    :param broker_redis_db: Redis database of the Celery broker (default: ``redis_db``; Celery's
        keys never start with ``airlock:``).
    """

    home: Path
    ports: Ports = field(default_factory=Ports)
    database: str = "airlock_demo"
    metadata_database: str = "airlock_demo_airflow"
    redis_db: int = 0
    echo_slack: bool = True
    overrides: dict = field(default_factory=dict)
    executor: str = "local"
    workers: int = 2
    worker_queues: tuple[str, ...] = ()
    worker_concurrency: int = 2
    broker_redis_db: int | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    sandbox: Sandbox | None = None
    slack: SlackReceiver | None = None
    celery_workers: tuple[CeleryWorker, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor {self.executor!r} is not one of {', '.join(EXECUTORS)}")
        if self.worker_queues and len(self.worker_queues) != self.workers:
            raise ValueError(f"{len(self.worker_queues)} worker_queues for {self.workers} workers")
        self.celery_workers = tuple(
            CeleryWorker(
                number,
                self.home / "workers",
                tuple(self.worker_queues[number - 1].split(",")) if self.worker_queues else ("default",),
            )
            for number in range(1, self.workers + 1)
        )

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def environments_dir(self) -> Path:
        """The shipped environments, unless this stack moved the demo to other ports."""
        if self.ports == Ports() and not self.overrides:
            return PROJECT_ROOT / "include" / "environments"
        return self.home / "environments"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:5432/{self.database}"

    @property
    def ops_database(self) -> str:
        """Airlock's own tables (the ``airlock_ops`` connection): beside, not inside, the app's."""
        return f"{self.database}_ops"

    @property
    def ops_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:5432/{self.ops_database}"

    @property
    def metadata_url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{self.metadata_database}"

    @contextlib.contextmanager
    def own_settings(self, prefixes: tuple[str, ...] = ("AIRLOCK_",)):
        """This stack's variables (``AIRLOCK_*`` by default) in ``os.environ``, only for the block.

        The stack never leaves its settings behind in the caller's process (tests share it).
        """
        saved = dict(os.environ)
        values = {"AIRLOCK_DEMO_HOME": str(self.home.resolve())}
        if self.slack and self.sandbox:
            values.update(self.settings())
        os.environ.update({k: v for k, v in values.items() if k.startswith(prefixes)})
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    @classmethod
    def demo(cls, home: Path, ports: Ports, **options) -> AirlockStack:
        """``make demo``'s stack: its databases are named after this checkout's installation id.

        A fresh clone never inherits an earlier clone's DAG runs or data; the same clone finds its
        own again on the next ``make demo``.
        """
        suffix = installation_id(home)[:8]
        return cls(
            home=home,
            ports=ports,
            database=f"airlock_demo_{suffix}",
            metadata_database=f"airlock_demo_{suffix}_airflow",
            **options,
        )

    def environment(self) -> Environment:
        with self.own_settings():
            return load_environment(self.environments_dir / "demo.yaml")

    # -- configuration -------------------------------------------------------------------

    def _write_environment(self) -> None:
        """``include/environments/demo.yaml`` with this stack's ports (when they differ)."""
        if self.environments_dir == PROJECT_ROOT / "include" / "environments":
            return
        document = yaml.safe_load((PROJECT_ROOT / "include" / "environments" / "demo.yaml").read_text())
        template = document["hosts"][0]
        document["hosts"] = [
            {
                **template,
                "name": f"web-{number}",
                "ssh_port": ssh_port,
                "app_url": f"http://127.0.0.1:{app_port}",
                "root": template["root"].replace("web-1", f"web-{number}"),
            }
            for number, (ssh_port, app_port) in enumerate(zip(self.ports.ssh, self.ports.app, strict=True), 1)
        ]
        document.update(self.overrides)
        self.environments_dir.mkdir(parents=True, exist_ok=True)
        (self.environments_dir / "demo.yaml").write_text(
            "# Generated from include/environments/demo.yaml with this stack's ports.\n"
            + yaml.safe_dump(document, sort_keys=False)
        )

    def add_environment(self, name: str, overrides: dict, dag_ids: tuple[str, ...]) -> Environment:
        """A second environment next to this stack's demo, parsed by the running dag-processor.

        It is the generated demo environment (same hosts, database, connections) with the
        top-level settings in ``overrides`` replaced, written to ``environments/<name>.yaml`` and
        validated as every component will read it. Returns once the DAGs in ``dag_ids`` are
        parsed. Only for stacks with their own environments directory (not ``make demo``'s).
        """
        if self.environments_dir == PROJECT_ROOT / "include" / "environments":
            raise ValueError("add_environment needs a stack with its own environments directory")
        document = yaml.safe_load((self.environments_dir / "demo.yaml").read_text())
        document.update(overrides)
        text = f"# {name}: the demo environment with {', '.join(overrides)} replaced.\n"
        text += yaml.safe_dump(document, sort_keys=False)
        # Validated in a subdirectory first (the DAG files read only environments/*.yaml), so the
        # dag-processor never sees a file that does not load.
        candidate = self.environments_dir / ".candidates" / f"{name}.yaml"
        candidate.parent.mkdir(exist_ok=True)
        candidate.write_text(text)
        try:
            with self.own_settings():
                environment = load_environment(candidate)
        except Exception:
            candidate.unlink()
            raise
        candidate.rename(self.environments_dir / f"{name}.yaml")
        self.wait_until_ready(dag_ids)
        return environment

    def remove_environment(self, name: str) -> None:
        """Undo :meth:`add_environment`: the dag-processor drops its DAGs on its next parse."""
        (self.environments_dir / f"{name}.yaml").unlink(missing_ok=True)

    def slack_signing_secret(self) -> str:
        """The signing secret of the stack's stand-in Slack app (``airlock_slack_signing``)."""
        return self._secret("slack_signing_secret")

    def _secret(self, name: str) -> str:
        path = self.home / "secrets" / name
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text()

    def settings(self) -> dict[str, str]:
        """Environment variables every Airflow component and this process share."""
        connections = {
            "AIRFLOW_CONN_AIRLOCK_SSH": self.sandbox.ssh_connection_uri() if self.sandbox else None,
            "AIRFLOW_CONN_AIRLOCK_SLACK": self.slack.connection() if self.slack else None,
            # Interactive approvals (approval.slack_channel): the Web API on the same receiver,
            # and the Slack app's signing secret, which a test signs its clicks with.
            "AIRFLOW_CONN_AIRLOCK_SLACK_API": self.slack.api_connection() if self.slack else None,
            "AIRFLOW_CONN_AIRLOCK_SLACK_SIGNING": {
                "conn_type": "generic",
                "password": self.slack_signing_secret(),
            },
            "AIRFLOW_CONN_AIRLOCK_REDIS": {
                "conn_type": "redis",
                "host": "127.0.0.1",
                "port": 6379,
                "extra": {"db": self.redis_db},
            },
            # airflow_housekeeping trims the metadata database through this connection.
            "AIRFLOW_CONN_AIRFLOW_METADATA_DB": {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": 5432,
                "login": "postgres",
                "schema": self.metadata_database,
            },
            "AIRFLOW_CONN_AIRLOCK_DEMO_DB": {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": 5432,
                "login": "postgres",
                "schema": self.database,
            },
            "AIRFLOW_CONN_AIRLOCK_OPS": {
                "conn_type": "postgres",
                "host": "127.0.0.1",
                "port": 5432,
                "login": "postgres",
                "schema": self.ops_database,
            },
        }
        return {
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRLOCK_DEMO_HOME": str(self.home.resolve()),
            "AIRLOCK_INSTALLATION_ID": installation_id(self.home),
            "AIRLOCK_API_URL": self.api_url,
            "AIRLOCK_ENVIRONMENTS_DIR": str(self.environments_dir),
            "AIRLOCK_ARTIFACT_CACHE": str(self.home / "cache" / "artifacts"),
            "PYTHONPATH": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # LocalExecutor, minus the false failure of a task resumed within a second of pausing.
            "AIRFLOW__CORE__EXECUTOR": "airlock.executors.local.ResumeSafeLocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,operator:op",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
            "AIRFLOW__API__BASE_URL": self.api_url,
            "AIRFLOW__API__PORT": str(self.ports.api),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__SECRET_KEY": self._secret("api_secret_key"),
            "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("jwt_secret"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_url,
            # Four components, each with a sync pool (the api-server an async one too), on 2 cores:
            # 3 kept + 5 on demand each stays far below PostgreSQL's 100 connections with two
            # stacks and a test session side by side.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "5",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_RECYCLE": "1800",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            # A task cut off by a hard stop is failed (or retried) 90 s after its last heartbeat,
            # not the default 5 minutes; its teardown then frees the environment's lock.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "90",
            # A scheduler restarted within 30 s of a hard stop still counts the old one as alive
            # (scheduler_health_check_threshold), so the tasks it ran are reset only by the next
            # orphan sweep: every 30 s here, not the default 5 minutes, or such a release hangs
            # for 5 minutes with its deploy "running" on no process at all.
            "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
            # An idle scheduler loop sleeps 0.25 s, not 1 s: the gap between one step of a release
            # and the next (a wave's deploy, its verify, the next wave) is that sleep, at each step.
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.airflow_home / "logs"),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            **{name: json.dumps(value) for name, value in connections.items() if value},
            **(self.celery_settings() if self.executor == "celery" else {}),
        }

    @property
    def broker_url(self) -> str:
        db = self.redis_db if self.broker_redis_db is None else self.broker_redis_db
        return f"redis://127.0.0.1:6379/{db}"

    def celery_settings(self) -> dict[str, str]:
        """The CeleryExecutor: Redis broker, the metadata database as result backend.

        Airflow 3.3's CeleryExecutor needs no guard against an approval answered the moment the
        task paused (``ResumeSafeLocalExecutor``'s race): it keeps one Celery result per
        task-instance key, replaced when the key is sent again, and sends before it reads
        results in the same heartbeat; the paused try's result is never read as the resumed one's.
        """
        return {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.metadata_url.replace("+psycopg2", ""),
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.worker_concurrency),
            # One process sends and polls (2 shared cores); the default is one per core minus one.
            "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports.worker_logs),
        }

    # -- lifecycle -----------------------------------------------------------------------

    def check_ports(self) -> None:
        wanted = {
            "Airflow API": [self.ports.api],
            "Slack receiver": [self.ports.slack],
            "sandbox SSH": self.ports.ssh,
            "demo app": self.ports.app,
        }
        busy = [
            f"{what} 127.0.0.1:{port}"
            for what, ports in wanted.items()
            for port in ports
            if not port_is_free("127.0.0.1", port)
        ]
        if self.executor == "celery":
            busy += [
                f"Celery worker log server {worker.address}:{self.ports.worker_logs}"
                for worker in self.celery_workers
                if not port_is_free(worker.address, self.ports.worker_logs)
            ]
        if busy:
            raise SandboxError(
                "port(s) already in use: "
                + ", ".join(busy)
                + ". Is another `make demo` running? Stop it, or set AIRLOCK_PORT for the API."
            )

    def prepare_databases(self) -> None:
        """The demo app's, the ops and Airflow's databases, created when missing (kept when present)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
            for name in (self.database, self.ops_database, self.metadata_database):
                exists = connection.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
                ).fetchone()
                if not exists:
                    connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_databases(self) -> list[str]:
        """Drop the stack's databases (connections are closed first); returns the names that existed."""
        import psycopg
        from psycopg import sql

        dropped = []
        with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
            for name in (self.database, self.ops_database, self.metadata_database):
                if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                    connection.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                    )
                    dropped.append(name)
        return dropped

    def build_artifacts(self) -> None:
        sys.path.insert(0, str(PROJECT_ROOT))
        from include.demo_app.build import build_artifact

        directory = Path(urlsplit(self.environment().deploy.artifact_url).path).parent
        for version in DEMO_VERSIONS:
            build_artifact(version, directory)

    def start_hosts(self) -> None:
        self.sandbox = Sandbox(
            environment=self.environment(),
            directory=self.home / "sandbox",
            app_settings={"DATABASE_URL": self.database_url, "PYTHON": sys.executable},
        )
        self.sandbox.start()

    def serve_initial_release(self) -> None:
        """Hosts without a release get 1.0.0; hosts with one get their app (re)started on it."""

        environment = self.environment()
        with self.own_settings(("AIRLOCK_", "AIRFLOW_CONN_")):
            for host in environment.hosts:
                self._serve_on(environment, host)

    def _serve_on(self, environment: Environment, host: Host) -> None:
        from airlock.hooks.artifacts import release_artifact
        from airlock.hooks.hosts import deploy_to_host, host_session

        with host_session(environment, host) as layout:
            version = layout.current_version()
            if version is not None:
                layout.activate(environment.deploy.activate_command, version)
                return
        artifact = release_artifact(environment.deploy, INITIAL_VERSION)
        deploy_to_host(environment, host, INITIAL_VERSION, artifact)

    def airflow(self, *arguments: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "airflow", *arguments], env={**os.environ, **self.settings()}, **kwargs
        )

    def migrate_metadata(self) -> None:
        self.airflow_home.mkdir(parents=True, exist_ok=True)
        result = self.airflow("db", "migrate", capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{result.stderr[-3000:]}")

    def start_airflow(self) -> None:
        for name, arguments in COMPONENTS.items():
            self._spawn(name, ["-m", "airflow", *(a.format(port=self.ports.api) for a in arguments)])
        if self.executor == "celery":
            # A task started before the api-server answers fails at once (its supervisor cannot
            # reach the execution API): the workers start once it does.
            self.wait_for_api()
            for worker in self.celery_workers:
                self.start_worker(worker)

    def wait_for_api(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes["api-server"].poll() is not None:
                raise RuntimeError(f"airflow api-server exited; see {self.home}/logs/api-server.log")
            try:
                urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=10).close()
                return
            except (OSError, urllib.error.URLError):
                time.sleep(1)
        raise RuntimeError(f"the Airflow API did not answer within {timeout:.0f}s")

    def start_worker(self, worker: CeleryWorker) -> None:
        """Start a Celery worker and its log server (again, after ``kill_worker``)."""
        for name, arguments in worker.commands(self.worker_concurrency, self.ports.worker_logs).items():
            self._spawn(name, arguments, worker.settings())

    def kill_worker(self, worker: CeleryWorker) -> None:
        """SIGKILL a Celery worker, every task process below it and its log server, as a machine
        dying would."""
        processes = [self.processes.pop(name) for name in (worker.name, worker.log_server)]
        for pid in [*(p.pid for p in processes), *descendants([p.pid for p in processes])]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for process in processes:
            process.wait(timeout=20)

    def _spawn(self, name: str, arguments: list[str], extra: dict[str, str] | None = None) -> None:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, *arguments],
                env={**os.environ, **self.settings(), **(extra or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def password(self) -> str:
        path = self.airflow_home / "simple_auth_manager_passwords.json.generated"
        return json.loads(path.read_text())["admin"]

    def token(self, username: str = "admin", password: str | None = None) -> str:
        request = urllib.request.Request(
            f"{self.api_url}/auth/token",
            data=json.dumps({"username": username, "password": password or self.password()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["access_token"]

    def wait_until_ready(self, dag_ids: tuple[str, ...], timeout: float = 240) -> None:
        """Until the API answers, the password file exists and every DAG in ``dag_ids`` is parsed."""
        deadline = time.monotonic() + timeout
        last = "the API is not answering yet"
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"airflow {name} exited ({process.returncode}); see {self.home}/logs/{name}.log"
                    )
            try:
                token = self.token()
                missing = []
                for dag_id in dag_ids:
                    request = urllib.request.Request(
                        f"{self.api_url}/api/v2/dags/{dag_id}", headers={"Authorization": f"Bearer {token}"}
                    )
                    try:
                        urllib.request.urlopen(request, timeout=10).close()
                    except urllib.error.HTTPError:
                        missing.append(dag_id)
                if not missing:
                    return
                last = f"waiting for the dag-processor to parse {', '.join(missing)}"
            except (OSError, KeyError, ValueError, urllib.error.URLError):
                pass
            time.sleep(2)
        raise RuntimeError(f"Airflow was not ready after {timeout:.0f}s: {last}")

    def trigger(self, dag_id: str, conf: dict | None = None) -> str:
        """Start a run of ``dag_id`` through the REST API; returns its run id."""
        request = urllib.request.Request(
            f"{self.api_url}/api/v2/dags/{dag_id}/dagRuns",
            data=json.dumps({"logical_date": None, "conf": conf or {}}).encode(),
            headers={"Authorization": f"Bearer {self.token()}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """Poll a run until it finishes; returns its final state."""
        deadline = time.monotonic() + timeout
        url = f"{self.api_url}/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
        while time.monotonic() < deadline:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token()}"})
            with urllib.request.urlopen(request, timeout=30) as response:
                state = json.loads(response.read())["state"]
            if state in ("success", "failed"):
                return state
            time.sleep(2)
        raise RuntimeError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")

    def take_first_backup(self) -> None:
        """A verified backup before Airflow starts, unless a fresh one exists.

        Releases need one younger than ``backup.max_age``, and ``health_demo`` (which runs as
        soon as the scheduler starts) would otherwise greet a newcomer with a critical alert.
        It is the same code ``backup_demo`` runs; the end-to-end tests run that DAG itself.
        """
        from airlock.tasks.backup import newest_verified, take_backup, verify_backup

        environment = self.environment()
        with self.own_settings(("AIRLOCK_", "AIRFLOW_CONN_")):
            newest = newest_verified(environment)
            if newest and datetime.now(UTC) - newest.finished_at < environment.backup.max_age / 2:
                return
            verify_backup(environment, take_backup(environment, kind="manual").name)

    def start(self, dag_ids: tuple[str, ...] = DEMO_DAGS) -> None:
        steps = [
            ("checking ports", self.check_ports),
            ("preparing the demo environment", self._write_environment),
            ("creating the demo and Airflow databases (if missing)", self.prepare_databases),
            ("building demo app artifacts " + ", ".join(DEMO_VERSIONS), self.build_artifacts),
            ("starting Slack receiver", self._start_slack),
            (f"starting {len(self.ports.ssh)} sandbox hosts (sshd)", self.start_hosts),
            (f"serving demo app {INITIAL_VERSION} on the hosts", self.serve_initial_release),
            ("taking a verified backup of the demo database (if none is fresh)", self.take_first_backup),
            ("migrating the Airflow metadata database", self.migrate_metadata),
            (f"starting {self.components_title()}", self.start_airflow),
            ("waiting for the API and the DAGs", lambda: self.wait_until_ready(dag_ids)),
        ]
        self.home.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        for number, (title, step) in enumerate(steps, start=1):
            say(f"[{number}/{len(steps)}] {title}")
            step()
        say(f"ready in {time.monotonic() - started:.0f}s")

    def clear_broker(self) -> None:
        """Remove the Celery keys this stack's broker holds (queues, bindings, unacked messages)."""
        import redis

        queues = {queue for worker in self.celery_workers for queue in worker.queues}
        patterns = ["_kombu.*", "unacked*", *queues, *(f"{queue}\x06\x16*" for queue in queues)]
        with redis.Redis.from_url(self.broker_url) as broker:
            for pattern in patterns:
                for key in broker.scan_iter(pattern):
                    broker.delete(key)

    def components_title(self) -> str:
        title = "api-server, scheduler, dag-processor, triggerer"
        if self.executor == "celery":
            title += f", {self.workers} Celery workers"
        return title

    def _start_slack(self) -> None:
        self.slack = SlackReceiver(
            port=self.ports.slack, log_path=self.home / "slack.log", echo=self.echo_slack
        )
        self.slack.start()

    def stop_airflow(self, *, kill: bool = False) -> None:
        """Stop Airflow's components: SIGTERM and a wait, or SIGKILL of every process (a hard stop,
        task processes included, as a power cut would)."""
        if kill:  # task processes run in process groups of their own: kill every descendant
            for pid in descendants([process.pid for process in self.processes.values()]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop in time; killing it")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self.processes.clear()

    def restart_airflow(self, *, kill: bool = False, dag_ids: tuple[str, ...] = DEMO_DAGS) -> None:
        """Stop Airflow's components (``kill``: hard) and start them again on the same state."""
        self.stop_airflow(kill=kill)
        self.start_airflow()
        self.wait_until_ready(dag_ids)

    def stop(self) -> None:
        """Stop every process this stack started; safe to call twice."""
        self.stop_airflow()
        if self.executor == "celery":
            self.clear_broker()
        if self.sandbox is not None:
            self.sandbox.stop()
        if self.slack is not None:
            self.slack.stop()
            self.slack = None

    def wipe(self) -> None:
        self.stop()
        shutil.rmtree(self.home, ignore_errors=True)


@contextlib.contextmanager
def disposable_stack(*, hosts: int = 3, redis_db: int, prefix: str = "airlock-", **options):
    """A started stack on free ports in a temporary directory, with its own PostgreSQL databases.

    Airlock's keys in Redis database ``redis_db`` are removed before and after; the database,
    the directory and every process are gone afterwards. Used by the end-to-end tests, the
    benchmarks and the screenshot script. With ``AIRLOCK_KEEP_STACK_LOGS=<dir>``, every
    process's log and the task logs are copied to ``<dir>/<the stack's directory name>/`` first,
    to read after a failed run.
    """
    import redis

    from airlock_dev.hosts import free_port

    home = Path(tempfile.mkdtemp(prefix=prefix))
    database = f"airlock_{prefix.strip('-').replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    keys = redis.Redis(host="127.0.0.1", port=6379, db=redis_db)
    stack = AirlockStack(
        home=home,
        ports=Ports(
            api=free_port(),
            slack=free_port(),
            ssh=[free_port() for _ in range(hosts)],
            app=[free_port() for _ in range(hosts)],
            worker_logs=free_port(),
        ),
        database=database,
        metadata_database=f"{database}_airflow",
        redis_db=redis_db,
        echo_slack=False,
        **options,
    )

    def clear_keys() -> None:
        for key in keys.scan_iter("airlock:*"):
            keys.delete(key)

    clear_keys()
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        clear_keys()
        keys.close()
        stack.drop_databases()
        if os.environ.get("AIRLOCK_KEEP_STACK_LOGS"):
            kept = Path(os.environ["AIRLOCK_KEEP_STACK_LOGS"]) / home.name
            for logs in [home / "logs", stack.airflow_home / "logs", *home.glob("workers/*/logs")]:
                if logs.is_dir():
                    shutil.copytree(logs, kept / logs.relative_to(home), dirs_exist_ok=True)
        shutil.rmtree(home, ignore_errors=True)
