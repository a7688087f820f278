"""A PostgreSQL 15 server of one test alone, which the test may restart (the shared one never is).

``initdb`` and ``pg_ctl`` from the server packages, run as the ``postgres`` OS user in a
temporary directory: trust authentication, a free loopback port, its socket in that directory.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from airlock_dev.hosts import free_port

BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class PrivateServer:
    home: Path
    port: int = field(default_factory=free_port)
    #: How many restarts completed.
    restarts: int = 0

    @property
    def data(self) -> Path:
        return self.home / "data"

    def _as_postgres(self, *argv: str) -> None:
        result = subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            log = (self.home / "server.log").read_text() if (self.home / "server.log").exists() else ""
            raise RuntimeError(f"{' '.join(argv)} failed: {result.stdout}{result.stderr}\n{log[-2000:]}")

    def _pg_ctl(self, *argv: str) -> None:
        self._as_postgres(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.home / "server.log"), *argv
        )

    def start(self) -> PrivateServer:
        self._as_postgres(
            str(BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.home} -c fsync=off"
        self._pg_ctl("-w", "-o", options, "start")
        return self

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is terminated, the server is back on the same port."""
        self._pg_ctl("-w", "-m", "fast", "restart")
        self.restarts += 1

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("-w", "-m", "immediate", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def connection(self, database: str) -> dict:
        """An Airflow connection (as JSON fields) to ``database`` on this server."""
        return {
            "conn_type": "postgres",
            "host": "127.0.0.1",
            "port": self.port,
            "login": "postgres",
            "schema": database,
        }

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def restart_when(self, condition: Callable[[psycopg.Connection], bool]) -> threading.Thread:
        """Restart the server once, the moment ``condition(connection)`` holds (checked every 20 ms on
        a fresh connection); the returned thread ends after the restart."""

        def watch() -> None:
            while not stop_watching.is_set():
                try:
                    with psycopg.connect(self.url(), autocommit=True, connect_timeout=2) as connection:
                        if condition(connection):
                            break
                except psycopg.OperationalError:
                    pass
                stop_watching.wait(0.02)
            else:
                return
            self.restart()

        stop_watching = threading.Event()
        thread = threading.Thread(target=watch, daemon=True)
        thread.stop_watching = stop_watching  # type: ignore[attr-defined]
        thread.start()
        return thread


def private_postgres_server():
    """Start a :class:`PrivateServer`; a generator for the fixture, which stops and removes it."""
    home = Path(tempfile.mkdtemp(prefix="airlock-private-pg-"))
    shutil.chown(home, user="postgres", group="postgres")
    server = PrivateServer(home=home)
    try:
        yield server.start()
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(home, ignore_errors=True)
