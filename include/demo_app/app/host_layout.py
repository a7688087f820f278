"""Where the demo app finds its configuration and keeps its state on a host.

The release DAG deploys into a fixed layout (``<root>/releases/<version>``, the ``current``
symlink, ``shared/app.env``, ``shared/log``, ``shared/run``). The control script, the master
and the workers all agree on it through this module, so every pid, lock and state file lives
under ``shared/run`` and survives releases being pruned.

Only the standard library is imported here: the control script may run under a system
python without psycopg.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class HostLayout:
    """The paths of one deployment root.

    :param root: the deployment root holding ``releases/``, ``current`` and ``shared/``.
    """

    root: Path

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def env_file(self) -> Path:
        return self.root / "shared" / "app.env"

    @property
    def log_dir(self) -> Path:
        return self.root / "shared" / "log"

    @property
    def run_dir(self) -> Path:
        return self.root / "shared" / "run"

    @property
    def app_log(self) -> Path:
        return self.log_dir / "app.log"

    @property
    def daemon_log(self) -> Path:
        """Stdout and stderr of the detached master and its workers (tracebacks land here)."""
        return self.log_dir / "daemon.log"

    @property
    def master_pid_file(self) -> Path:
        return self.run_dir / "master.pid"

    @property
    def master_lock(self) -> Path:
        """Held by the live master for its whole life: proof of life that survives pid reuse."""
        return self.run_dir / "master.lock"

    @property
    def control_lock(self) -> Path:
        """Serialises start/stop/reload so two deployers cannot interleave."""
        return self.run_dir / "control.lock"

    @property
    def state_file(self) -> Path:
        """Written by the master: which worker serves which release, and how the last reload went."""
        return self.run_dir / "state.json"

    @property
    def reload_request_file(self) -> Path:
        """The token of the reload a control script asked for, echoed back in the state file."""
        return self.run_dir / "reload-request"

    def reload_done_fifo(self, token: str) -> Path:
        """Where ``reload`` waits for the master's word that reload ``token`` is over (a FIFO)."""
        return self.run_dir / f"reload-done-{token}"

    def ensure_shared_dirs(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class AppSettings:
    """The per-host settings from ``shared/app.env``.

    :param host: address the master binds.
    :param port: port the master binds; ``None`` when app.env does not set one.
    :param database_url: PostgreSQL URL for ``/items``; ``None`` when unset.
    :param python: interpreter for workers; ``None`` means the master's own interpreter.
    """

    host: str
    port: int | None
    database_url: str | None
    python: str | None


def parse_env_file(text: str) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines; blank lines and ``#`` comments are skipped, one level of quotes removed."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def read_app_settings(layout: HostLayout) -> AppSettings:
    """Read ``shared/app.env`` afresh, so a reload picks up edits made by whoever provisions the host."""
    try:
        values = parse_env_file(layout.env_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        values = {}
    port_text = values.get("PORT", "")
    try:
        port = int(port_text) if port_text else None
    except ValueError:
        raise ValueError(f"PORT={port_text!r} in {layout.env_file} is not a port number") from None
    return AppSettings(
        host=values.get("HOST") or DEFAULT_HOST,
        port=port,
        database_url=values.get("DATABASE_URL") or None,
        python=values.get("PYTHON") or None,
    )


def write_text_atomically(path: Path, text: str) -> None:
    """Readers never see a half-written file: write a sibling temp file, then rename it over."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    write_text_atomically(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def process_is_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone because it no longer serves anything."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name, which may itself contain ")".
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def try_lock(path: Path) -> int | None:
    """Take an exclusive lock on ``path`` without waiting; the open fd holds it, ``None`` if taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def live_master_pid(layout: HostLayout, startup_wait: float = 3.0) -> int | None:
    """The pid of the running master, or ``None`` when no master holds the master lock.

    A pid file alone is not proof: a crashed master leaves it behind and its pid may be reused.
    The master holds ``master.lock`` for as long as it lives, so the lock decides. A master that
    holds the lock but has not written its pid yet is starting up: wait for it briefly.
    """
    deadline = time.monotonic() + startup_wait
    while True:
        if not layout.master_lock.exists():
            return None
        fd = try_lock(layout.master_lock)
        if fd is not None:
            os.close(fd)
            return None
        try:
            return int(layout.master_pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


@dataclass(frozen=True)
class Release:
    """What an unpacked artifact says about itself.

    :param path: the resolved release directory.
    :param version: contents of its ``VERSION`` file.
    :param broken: whether the build carries the ``BROKEN`` marker, or the active configuration
        set does (``shared/config/BROKEN``: a bad configuration, for the demo and the tests).
    :param config: the id of the configuration set ``shared/config`` held when the worker started
        (its ``.airlock-config-set`` file); None without one.
    """

    path: Path
    version: str
    broken: bool
    config: str | None = None


def read_release(path: Path) -> Release:
    try:
        version = (path / "VERSION").read_text(encoding="utf-8").strip() or "unknown"
    except FileNotFoundError:
        version = "unknown"
    config_dir = path / "shared" / "config"
    try:
        config = (config_dir / ".airlock-config-set").read_text(encoding="utf-8").strip() or None
    except OSError:
        config = None
    broken = (path / "BROKEN").exists() or (config_dir / "BROKEN").exists()
    return Release(path=path, version=version, broken=broken, config=config)
