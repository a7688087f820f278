"""The demo app's master: owns the listening socket and swaps workers on SIGHUP without downtime.

The master binds ``HOST:PORT`` once and keeps the socket open for its whole life; workers
inherit it. On SIGHUP it spawns a worker from the release ``current`` points to *now*, waits
until that worker reports ready on a pipe, and only then asks the previous worker to stop
gracefully. Connections arriving in between wait in the kernel's accept queue, so clients
never see a refused connection. The reload counts as done once the previous worker has exited
(it stops accepting first; bounded by ``RELOAD_HANDOVER_SECONDS``): a request sent after
``demo-app reload`` returned is never answered by the old release. If the new worker fails to
start, the previous one keeps serving and the failure is recorded in ``shared/run/state.json``
for the control script.

Everything the master needs is imported at start-up and its working directory is ``/``: the
release it was started from may be pruned while it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.handlers
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host_layout import (
    AppSettings,
    HostLayout,
    read_app_settings,
    try_lock,
    write_json_atomically,
    write_text_atomically,
)

log = logging.getLogger("demo-app.master")

WORKER_READY_TIMEOUT_SECONDS = 15.0
WORKER_STOP_GRACE_SECONDS = 30.0
#: How long a reload waits for the previous worker to exit before it reports done (the control
#: script allows 20 s for the whole reload; a new worker gets 15 s to report ready).
RELOAD_HANDOVER_SECONDS = 4.0
SHUTDOWN_GRACE_SECONDS = 10.0
LOCK_WAIT_SECONDS = 3.0
RESPAWN_BACKOFF_MAX_SECONDS = 30.0
LISTEN_BACKLOG = 512


class MasterStartError(Exception):
    """The master cannot serve at all: no port configured, or the port cannot be bound."""


class WorkerStartError(Exception):
    """A new worker could not be started or did not report ready in time."""


@dataclass
class Worker:
    """A running worker process and the release it serves."""

    process: subprocess.Popen[bytes]
    version: str
    release: str
    started_at: float

    @property
    def pid(self) -> int:
        return self.process.pid

    def describe(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "version": self.version,
            "release": self.release,
            "started_at": self.started_at,
        }


@dataclass
class RetiringWorker:
    """A worker asked to stop gracefully, killed if it outlives its deadline."""

    worker: Worker
    deadline: float


def bind_listener(settings: AppSettings) -> socket.socket:
    """Bind the app's port once, with SO_REUSEADDR so a restart does not wait out TIME_WAIT."""
    if settings.port is None:
        raise MasterStartError("PORT is not set in shared/app.env, so the master has no port to bind")
    try:
        family, _, _, _, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as exc:
        raise MasterStartError(f"cannot resolve HOST={settings.host} from shared/app.env: {exc}") from exc
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as exc:
        listener.close()
        raise MasterStartError(
            f"cannot bind {settings.host}:{settings.port} ({exc.strerror}): another process holds the port, "
            "or HOST/PORT in shared/app.env are wrong"
        ) from exc
    listener.listen(LISTEN_BACKLOG)
    return listener


class Master:
    """Supervises one serving worker on a socket it owns.

    :param layout: the host layout (state, pid and lock files live under ``shared/run``).
    :param listener: the bound, listening socket every worker inherits.
    :param settings: app.env as read at start-up (host and port are fixed for the master's life).
    """

    def __init__(self, layout: HostLayout, listener: socket.socket, settings: AppSettings) -> None:
        self.layout = layout
        self.listener = listener
        self.settings = settings
        self.worker: Worker | None = None
        self.retiring: list[RetiringWorker] = []
        self.last_reload: dict[str, Any] | None = None
        self.reload_requested = False
        self.stop_requested = False
        self.respawn_backoff = 1.0
        self.respawn_at: float | None = None

    def spawn_worker(self) -> Worker:
        """Start a worker from the release ``current`` points to now and wait until it is ready."""
        release = os.path.realpath(self.layout.current)
        worker_script = os.path.join(release, "app", "worker.py")
        if not os.path.isfile(worker_script):
            raise WorkerStartError(f"{self.layout.current} resolves to {release}, which has no app/worker.py")
        python = read_app_settings(self.layout).python or sys.executable
        ready_read, ready_write = os.pipe()
        try:
            command = [python, "-B", worker_script, "--root", str(self.layout.root), "--release", release]
            command += ["--listen-fd", str(self.listener.fileno()), "--ready-fd", str(ready_write)]
            try:
                process = subprocess.Popen(
                    command,
                    pass_fds=(self.listener.fileno(), ready_write),
                    stdin=subprocess.DEVNULL,
                    cwd=str(self.layout.root),
                )
            except OSError as exc:
                raise WorkerStartError(f"cannot run PYTHON={python} from shared/app.env: {exc}") from exc
            finally:
                os.close(ready_write)
            report = self.wait_ready(ready_read, process)
        finally:
            os.close(ready_read)
        worker = Worker(process=process, version=report["version"], release=release, started_at=time.time())
        log.info("worker %s ready, serving version %s from %s", worker.pid, worker.version, release)
        return worker

    def wait_ready(self, ready_read: int, process: subprocess.Popen[bytes]) -> dict[str, Any]:
        """Read the worker's ready report; EOF means it died, silence past the timeout means it hangs."""
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_SECONDS
        received = b""
        while b"\n" not in received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill(process)
                raise WorkerStartError(
                    f"worker {process.pid} did not report ready within {WORKER_READY_TIMEOUT_SECONDS:.0f}s"
                )
            readable, _, _ = select.select([ready_read], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(ready_read, 4096)
            if not chunk:
                try:
                    code = process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.kill(process)
                    code = process.returncode
                raise WorkerStartError(
                    f"worker {process.pid} exited with code {code} before it was ready; "
                    f"see {self.layout.daemon_log}"
                )
            received += chunk
        try:
            report = json.loads(received.split(b"\n", 1)[0])
            report["version"] = str(report["version"])
        except (ValueError, KeyError, TypeError) as exc:
            self.kill(process)
            message = f"worker {process.pid} sent an unreadable ready report: {received!r}"
            raise WorkerStartError(message) from exc
        return report

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()

    def retire(self, worker: Worker) -> None:
        """Ask a worker to stop accepting and finish its in-flight requests."""
        log.info("asking worker %s (version %s) to stop gracefully", worker.pid, worker.version)
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
        self.retiring.append(RetiringWorker(worker, time.monotonic() + WORKER_STOP_GRACE_SECONDS))

    @staticmethod
    def await_handover(worker: Worker) -> None:
        """Until the retired worker has exited, at most ``RELOAD_HANDOVER_SECONDS``: old and new
        worker accept from one socket, so until then the old release may still answer. One still
        finishing a long request past that is reaped (or killed) by :meth:`reap` as before."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.process.wait(timeout=RELOAD_HANDOVER_SECONDS)

    def reload(self) -> None:
        """Swap in a worker for the current release; keep the old one if the new one fails."""
        token = None
        with contextlib.suppress(FileNotFoundError):
            token = self.layout.reload_request_file.read_text(encoding="utf-8").strip() or None
        log.info("reload requested (token %s)", token)
        try:
            new_worker = self.spawn_worker()
        except WorkerStartError as exc:
            log.error("reload failed: %s", exc)
            self.last_reload = {"token": token, "ok": False, "error": str(exc), "finished_at": time.time()}
        else:
            old_worker, self.worker = self.worker, new_worker
            self.respawn_at = None
            self.respawn_backoff = 1.0
            if old_worker is not None:
                self.retire(old_worker)
                self.await_handover(old_worker)
            self.last_reload = {"token": token, "ok": True, "error": None, "finished_at": time.time()}
        self.write_state()
        if token:
            self.tell_reload_done(token)

    def tell_reload_done(self, token: str) -> None:
        """Wake the control script waiting on reload ``token``'s FIFO, if it still waits (a FIFO
        with no reader refuses the open, and anything but a FIFO is left alone)."""
        if not token.isalnum():
            return
        try:
            fd = os.open(self.layout.reload_done_fifo(token), os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            return
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, b"\n")
        except OSError:
            pass
        finally:
            os.close(fd)

    def write_state(self) -> None:
        write_json_atomically(
            self.layout.state_file,
            {
                "master_pid": os.getpid(),
                "host": self.settings.host,
                "port": self.listener.getsockname()[1],
                "worker": self.worker.describe() if self.worker else None,
                "retiring": [entry.worker.pid for entry in self.retiring],
                "last_reload": self.last_reload,
            },
        )

    def reap(self) -> None:
        """Collect exited workers; respawn the serving one (with backoff) if it died on its own."""
        still_retiring = []
        for entry in self.retiring:
            code = entry.worker.process.poll()
            if code is not None:
                log.info(
                    "worker %s (version %s) exited with code %s", entry.worker.pid, entry.worker.version, code
                )
            elif time.monotonic() > entry.deadline:
                log.warning(
                    "worker %s outlived its %ss grace period; killing it",
                    entry.worker.pid,
                    WORKER_STOP_GRACE_SECONDS,
                )
                self.kill(entry.worker.process)
            else:
                still_retiring.append(entry)
        if len(still_retiring) != len(self.retiring):
            self.retiring = still_retiring
            self.write_state()

        if self.worker is not None and self.worker.process.poll() is not None:
            log.error(
                "worker %s exited unexpectedly with code %s", self.worker.pid, self.worker.process.returncode
            )
            self.worker = None
            self.respawn_at = time.monotonic()
            self.write_state()
        if self.worker is None and self.respawn_at is not None and time.monotonic() >= self.respawn_at:
            try:
                self.worker = self.spawn_worker()
            except WorkerStartError as exc:
                log.error("respawn failed, retrying in %.0fs: %s", self.respawn_backoff, exc)
                self.respawn_at = time.monotonic() + self.respawn_backoff
                self.respawn_backoff = min(self.respawn_backoff * 2, RESPAWN_BACKOFF_MAX_SECONDS)
            else:
                self.respawn_at = None
                self.respawn_backoff = 1.0
            self.write_state()

    def shutdown(self) -> None:
        """Stop every worker gracefully (bounded), then release the port."""
        if self.worker is not None:
            self.retire(self.worker)
            self.worker = None
        deadline = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for entry in self.retiring:
            try:
                entry.worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker %s did not stop within %ss; killing it", entry.worker.pid, SHUTDOWN_GRACE_SECONDS
                )
                self.kill(entry.worker.process)
        self.retiring = []
        self.listener.close()

    def run(self) -> int:
        wakeup_read, wakeup_write = os.pipe()
        for fd in (wakeup_read, wakeup_write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wakeup_write)
        signal.signal(signal.SIGHUP, self.on_reload_signal)
        signal.signal(signal.SIGTERM, self.on_stop_signal)
        signal.signal(signal.SIGINT, self.on_stop_signal)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

        try:
            self.worker = self.spawn_worker()
        except WorkerStartError as exc:
            log.error("first worker failed, master exits: %s", exc)
            print(f"demo-app master: {exc}", file=sys.stderr)
            self.listener.close()
            return 1
        self.write_state()

        while not self.stop_requested:
            with contextlib.suppress(InterruptedError):
                select.select([wakeup_read], [], [], 1.0)
            with contextlib.suppress(BlockingIOError):
                while os.read(wakeup_read, 4096):
                    pass
            if self.stop_requested:
                break
            if self.reload_requested:
                self.reload_requested = False
                self.reload()
            self.reap()
        log.info("stop requested")
        self.shutdown()
        return 0

    def on_reload_signal(self, signum: int, frame: Any) -> None:
        self.reload_requested = True

    def on_stop_signal(self, signum: int, frame: Any) -> None:
        self.stop_requested = True


def acquire_master_lock(layout: HostLayout) -> int | None:
    """Retry briefly: a concurrent ``status`` probes the lock for an instant."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        fd = try_lock(layout.master_lock)
        if fd is not None or time.monotonic() > deadline:
            return fd
        time.sleep(0.05)


def configure_logging(layout: HostLayout) -> None:
    handler = logging.handlers.WatchedFileHandler(layout.app_log, encoding="utf-8")
    handler.setFormatter(logging.Formatter(f"%(asctime)s master[{os.getpid()}] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the demo-app master (started by `demo-app start`).")
    parser.add_argument("--root", required=True, type=Path, help="deployment root")
    args = parser.parse_args(argv)
    layout = HostLayout(args.root.resolve())
    layout.ensure_shared_dirs()
    os.chdir("/")
    configure_logging(layout)

    lock_fd = acquire_master_lock(layout)
    if lock_fd is None:
        print(f"demo-app master: another master holds {layout.master_lock}", file=sys.stderr)
        return 1
    try:
        try:
            settings = read_app_settings(layout)
            listener = bind_listener(settings)
        except (MasterStartError, ValueError) as exc:
            log.error("cannot start: %s", exc)
            print(f"demo-app master: {exc}", file=sys.stderr)
            return 1
        write_text_atomically(layout.master_pid_file, f"{os.getpid()}\n")
        log.info("listening on %s:%s", settings.host, listener.getsockname()[1])
        return Master(layout, listener, settings).run()
    finally:
        for path in (layout.state_file, layout.master_pid_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        os.close(lock_fd)


if __name__ == "__main__":
    sys.exit(main())
