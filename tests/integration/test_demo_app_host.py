"""The demo app as the release DAG drives it: built artifacts, real processes, a real database.

Each test lays out a host root (``releases/<version>``, ``current``, ``shared/app.env``) in a
temporary directory, runs ``bin/demo-app`` from the ``current`` release as the deployer does over
SSH, and checks what an HTTP client sees.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from include.demo_app.app.host_layout import process_is_alive
from include.demo_app.build import build_artifact

pytestmark = pytest.mark.integration

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
VERSIONS = ("1.0.0", "2.0.0", "2.1.0-broken")
COMMAND_TIMEOUT_SECONDS = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@dataclass
class DemoHost:
    """One sandbox host root with every built release unpacked under ``releases/``."""

    root: Path
    port: int

    def write_env(self, **settings: str) -> None:
        lines = [f"PORT={self.port}", "HOST=127.0.0.1", f"PYTHON={sys.executable}"]
        lines += [f"{key}={value}" for key, value in settings.items()]
        (self.root / "shared" / "app.env").write_text("\n".join(lines) + "\n")

    def switch_current(self, version: str) -> None:
        """Point ``current`` at a release the way the deployer does: a new symlink renamed over."""
        temporary = self.root / f".current-{uuid.uuid4().hex}"
        temporary.symlink_to(Path("releases") / version)
        os.replace(temporary, self.root / "current")

    def control(self, command: str, script_release: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``bin/demo-app``; capturing its output also proves the daemon keeps no pipe open."""
        release_dir = self.root / "releases" / script_release if script_release else self.root / "current"
        return subprocess.run(
            [str(release_dir / "bin" / "demo-app"), "--root", str(self.root), command],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECONDS,
        )

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def state(self) -> dict[str, Any]:
        return json.loads((self.root / "shared" / "run" / "state.json").read_text())


def apply_migrations(database_url: str, release: Path, *names: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name in names:
            conn.execute((release / "migrations" / name).read_text())


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out_dir = tmp_path_factory.mktemp("artifacts")
    return {version: build_artifact(version, out_dir) for version in VERSIONS}


@pytest.fixture
def database_url() -> Iterator[str]:
    """A fresh, empty database for the app, dropped afterwards."""
    name = f"airlock_demo_app_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def host(tmp_path: Path, artifacts: dict[str, Path], database_url: str) -> Iterator[DemoHost]:
    """A host root on 1.0.0, not started; whatever a test starts is stopped afterwards."""
    root = tmp_path / "srv" / "demo-app"
    for version, tarball in artifacts.items():
        release = root / "releases" / version
        release.mkdir(parents=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(release, filter="data")
    (root / "shared").mkdir()
    demo_host = DemoHost(root=root, port=free_port())
    demo_host.write_env(DATABASE_URL=database_url)
    demo_host.switch_current("1.0.0")
    yield demo_host
    pid_file = root / "shared" / "run" / "master.pid"
    master_pid = int(pid_file.read_text()) if pid_file.exists() else None
    demo_host.control("stop", script_release="2.0.0")
    if master_pid is not None and process_is_alive(master_pid):
        os.kill(master_pid, signal.SIGKILL)


@pytest.fixture
def started(host: DemoHost) -> DemoHost:
    result = host.control("start")
    assert result.returncode == 0, result.stderr
    return host


def test_start_serves_the_release_current_points_to(host: DemoHost) -> None:
    result = host.control("start")

    assert result.returncode == 0, result.stderr
    assert host.get("/version") == (200, {"version": "1.0.0", "config": None})
    assert host.get("/health") == (200, {"status": "ok", "version": "1.0.0"})


def test_start_when_running_leaves_the_running_master_alone(started: DemoHost) -> None:
    master_pid = started.state()["master_pid"]

    result = started.control("start")

    assert result.returncode == 0, result.stderr
    assert "already running" in result.stdout
    assert started.state()["master_pid"] == master_pid


def test_unknown_paths_answer_404(started: DemoHost) -> None:
    status, body = started.get("/nope")

    assert status == 404
    assert "no such endpoint" in body["error"]


def test_items_is_empty_before_the_first_migration_and_lists_sample_rows_after(
    started: DemoHost, database_url: str
) -> None:
    assert started.get("/items") == (200, {"items": [], "count": 0})

    apply_migrations(database_url, started.root / "releases" / "1.0.0", "V1__create_items.sql")

    status, body = started.get("/items")
    assert status == 200
    assert body["count"] == 3
    assert [sorted(item) for item in body["items"]] == [["created_at", "id", "name"]] * 3


def test_items_include_the_category_once_v2_is_applied(started: DemoHost, database_url: str) -> None:
    release = started.root / "releases" / "2.0.0"
    apply_migrations(database_url, release, "V1__create_items.sql", "V2__add_item_category.sql")

    status, body = started.get("/items")

    assert status == 200
    assert [item["category"] for item in body["items"]] == ["general"] * 3


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"}, id="unreachable"),
        pytest.param({}, id="unset"),
    ],
)
def test_items_answers_503_without_a_reachable_database(host: DemoHost, settings: dict[str, str]) -> None:
    host.write_env(**settings)
    assert host.control("start").returncode == 0

    status, body = host.get("/items")

    assert status == 503
    assert "DATABASE_URL" in body["error"] or "database unreachable" in body["error"]
    assert host.get("/health")[0] == 200


def test_reload_switches_version_without_a_single_failed_request(started: DemoHost) -> None:
    outcomes: list[int | str] = []
    deadline = time.monotonic() + 2.0

    def hammer() -> None:
        while time.monotonic() < deadline:
            try:
                outcomes.append(started.get("/version")[0])
            except (OSError, http.client.HTTPException, ValueError) as exc:
                outcomes.append(repr(exc))

    client = threading.Thread(target=hammer)
    client.start()
    time.sleep(0.3)
    started.switch_current("2.0.0")
    result = started.control("reload")
    client.join()

    assert result.returncode == 0, result.stderr
    failures = [outcome for outcome in outcomes if outcome != 200]
    assert failures == []
    assert len(outcomes) > 50
    assert started.get("/version") == (200, {"version": "2.0.0", "config": None})


def test_reload_to_a_broken_build_serves_a_failing_health(started: DemoHost) -> None:
    started.switch_current("2.1.0-broken")

    result = started.control("reload")

    assert result.returncode == 0, result.stderr
    status, body = started.get("/health")
    assert (status, body["status"], body["version"]) == (503, "failing", "2.1.0-broken")
    assert started.get("/version") == (200, {"version": "2.1.0-broken", "config": None})


def test_failed_reload_exits_non_zero_and_the_previous_worker_keeps_serving(started: DemoHost) -> None:
    (started.root / "releases" / "empty").mkdir()
    started.switch_current("empty")

    result = started.control("reload", script_release="1.0.0")

    assert result.returncode == 1
    assert "has no app/worker.py" in result.stderr
    assert "previous worker keeps serving" in result.stderr
    assert started.get("/version") == (200, {"version": "1.0.0", "config": None})


def test_master_survives_the_pruning_of_the_release_it_started_from(started: DemoHost) -> None:
    started.switch_current("2.0.0")
    assert started.control("reload").returncode == 0
    shutil.rmtree(started.root / "releases" / "1.0.0")
    started.switch_current("2.1.0-broken")

    result = started.control("reload")

    assert result.returncode == 0, result.stderr
    assert started.get("/version") == (200, {"version": "2.1.0-broken", "config": None})


def test_reload_without_a_running_master_starts_one(host: DemoHost) -> None:
    result = host.control("reload")

    assert result.returncode == 0, result.stderr
    assert host.get("/version") == (200, {"version": "1.0.0", "config": None})


def test_status_reports_running_with_pid_and_version(started: DemoHost) -> None:
    state = started.state()

    result = started.control("status")

    assert result.returncode == 0
    assert f"master pid {state['master_pid']}" in result.stdout
    assert "version 1.0.0" in result.stdout


def test_stop_leaves_no_process_and_status_reports_stopped(started: DemoHost) -> None:
    state = started.state()
    pids = [state["master_pid"], state["worker"]["pid"]]

    result = started.control("stop")

    assert result.returncode == 0, result.stderr
    assert [pid for pid in pids if process_is_alive(pid)] == []
    assert not (started.root / "shared" / "run" / "master.pid").exists()
    status = started.control("status")
    assert (status.returncode, status.stdout.strip()) == (3, "demo-app stopped")
    assert not accepts_connections(started.port)


def test_stop_when_nothing_runs_succeeds(host: DemoHost) -> None:
    result = host.control("stop")

    assert result.returncode == 0, result.stderr
    assert "not running" in result.stdout
