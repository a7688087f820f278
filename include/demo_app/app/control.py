"""``demo-app --root <root> start|stop|reload|status``: what the release DAG runs over SSH.

Every command returns promptly and within a bound: the master is detached (new session,
stdin from /dev/null, stdout and stderr to ``shared/log/daemon.log``), so the SSH session that
started it sees EOF at once. ``reload`` returns only once the new worker serves (exit 0) or
has failed to start while the previous worker keeps serving (exit 1), so the deployer can
trust the exit code.

Exit codes: 0 success (``status``: running), 1 failure, 3 ``status`` when stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from host_layout import (
    HostLayout,
    live_master_pid,
    process_is_alive,
    read_json,
    write_text_atomically,
)

START_TIMEOUT_SECONDS = 15.0
RELOAD_TIMEOUT_SECONDS = 20.0
RELOAD_POLL_SECONDS = 0.25
STOP_TIMEOUT_SECONDS = 20.0
CONTROL_LOCK_TIMEOUT_SECONDS = 60.0
EXIT_STOPPED = 3
DAEMON_LOG_TAIL_LINES = 20


class ControlError(Exception):
    """A command could not do what it was asked; the message says why and where to look."""


@contextlib.contextmanager
def control_lock(layout: HostLayout) -> Iterator[None]:
    """One start/stop/reload at a time per root, so concurrent deployers cannot interleave."""
    fd = os.open(layout.control_lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + CONTROL_LOCK_TIMEOUT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ControlError(
                        f"another demo-app command has held {layout.control_lock} for "
                        f"{CONTROL_LOCK_TIMEOUT_SECONDS:.0f}s; wait for it or check its process"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def daemon_log_since(layout: HostLayout, offset: int) -> str:
    """The last lines the daemon wrote since ``offset``: usually the reason it failed."""
    try:
        with open(layout.daemon_log, "rb") as handle:
            handle.seek(offset)
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-DAEMON_LOG_TAIL_LINES:])


def connect_host(host: str) -> str:
    """Where a local client reaches a socket bound to ``host`` (a wildcard bind answers on loopback)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return str(address)


def answers_http(host: str, port: int) -> bool:
    import http.client  # only `start` asks; a reload (every deploy) skips the import (ssl, email)

    connection = http.client.HTTPConnection(connect_host(host), port, timeout=2)
    try:
        connection.request("GET", "/version")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def describe_worker(state: dict[str, Any] | None) -> str:
    worker = (state or {}).get("worker")
    if not worker:
        return "no worker serving"
    return (
        f"worker pid {worker['pid']} serving version {worker['version']} on {state['host']}:{state['port']}"
    )


def start_locked(layout: HostLayout) -> int:
    master_pid = live_master_pid(layout)
    if master_pid is not None:
        state = read_json(layout.state_file)
        print(f"demo-app already running: master pid {master_pid}, {describe_worker(state)}")
        return 0
    for stale in (layout.master_pid_file, layout.state_file, layout.reload_request_file):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()

    master_script = Path(__file__).resolve().parent / "master.py"
    with open(layout.daemon_log, "ab") as daemon_log:
        log_offset = daemon_log.tell()
        master = subprocess.Popen(
            [sys.executable, "-B", str(master_script), "--root", str(layout.root)],
            stdin=subprocess.DEVNULL,
            stdout=daemon_log,
            stderr=daemon_log,
            cwd="/",
            start_new_session=True,
        )

    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        code = master.poll()
        if code is not None:
            raise ControlError(
                f"demo-app master exited with code {code} during start; "
                f"{layout.daemon_log} says:\n{daemon_log_since(layout, log_offset)}"
            )
        state = read_json(layout.state_file)
        if (
            state
            and state.get("master_pid") == master.pid
            and state.get("worker")
            and answers_http(state["host"], state["port"])
        ):
            print(f"demo-app started: master pid {master.pid}, {describe_worker(state)}")
            return 0
        time.sleep(0.1)

    master.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        master.wait(timeout=STOP_TIMEOUT_SECONDS)
    raise ControlError(
        f"demo-app did not serve within {START_TIMEOUT_SECONDS:.0f}s, so the master was stopped; "
        f"{layout.daemon_log} says:\n{daemon_log_since(layout, log_offset)}"
    )


def start(layout: HostLayout) -> int:
    with control_lock(layout):
        return start_locked(layout)


def reload(layout: HostLayout) -> int:
    """Swap the worker for one running the release ``current`` points to; start if nothing runs."""
    with control_lock(layout):
        master_pid = live_master_pid(layout)
        if master_pid is None:
            return start_locked(layout)
        target = os.path.realpath(layout.current)
        token = uuid.uuid4().hex
        # The master writes a byte to this FIFO once the reload is over: the wait sleeps until
        # then instead of polling (24 reloads at once polled away a good part of a core). A
        # master that does not (an older release's) is still read every RELOAD_POLL_SECONDS.
        done = layout.reload_done_fifo(token)
        os.mkfifo(done, 0o600)
        try:
            reader = os.open(done, os.O_RDONLY | os.O_NONBLOCK)
            try:
                write_text_atomically(layout.reload_request_file, token + "\n")
                os.kill(master_pid, signal.SIGHUP)
                return await_reload(layout, master_pid, token, target, reader)
            finally:
                os.close(reader)
        finally:
            done.unlink(missing_ok=True)


def await_reload(layout: HostLayout, master_pid: int, token: str, target: str, done: int) -> int:
    """Until the master records reload ``token`` in its state (or dies, or the timeout passes).

    Asleep on the FIFO ``done`` between looks; once the master has written to it (its state is
    written first) the state is read again at once.
    """
    notified = False
    deadline = time.monotonic() + RELOAD_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        state = read_json(layout.state_file) or {}
        outcome = state.get("last_reload") or {}
        if outcome.get("token") == token:
            if outcome.get("ok"):
                print(f"demo-app reloaded: {describe_worker(state)}")
                return 0
            raise ControlError(
                f"reload to {target} failed: {outcome.get('error')}; "
                f"the previous worker keeps serving ({describe_worker(state)})"
            )
        if not process_is_alive(master_pid):
            raise ControlError(f"demo-app master {master_pid} exited during reload; see {layout.daemon_log}")
        if notified:  # the FIFO stays readable once written to: look again shortly
            time.sleep(0.02)
        else:
            notified = bool(select.select([done], [], [], RELOAD_POLL_SECONDS)[0])
    raise ControlError(
        f"master {master_pid} did not finish reloading to {target} within "
        f"{RELOAD_TIMEOUT_SECONDS:.0f}s; see {layout.app_log}"
    )


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while process_is_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop(layout: HostLayout) -> int:
    """Stop the master and its workers gracefully; kill them only if they outlive the bound."""
    with control_lock(layout):
        master_pid = live_master_pid(layout)
        if master_pid is None:
            for stale in (layout.master_pid_file, layout.state_file, layout.reload_request_file):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
            print("demo-app was not running")
            return 0
        state = read_json(layout.state_file) or {}
        worker_pids = [state["worker"]["pid"]] if state.get("worker") else []
        worker_pids += state.get("retiring", [])
        with contextlib.suppress(ProcessLookupError):
            os.kill(master_pid, signal.SIGTERM)
        if not wait_gone(master_pid, STOP_TIMEOUT_SECONDS):
            print(
                f"demo-app master {master_pid} did not stop within {STOP_TIMEOUT_SECONDS:.0f}s; killing it",
                file=sys.stderr,
            )
            for pid in [master_pid, *worker_pids]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_gone(master_pid, 5)
        for stale in (layout.master_pid_file, layout.state_file, layout.reload_request_file):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        print(f"demo-app stopped (master pid {master_pid})")
        return 0


def status(layout: HostLayout) -> int:
    master_pid = live_master_pid(layout)
    if master_pid is None:
        print("demo-app stopped")
        return EXIT_STOPPED
    print(f"demo-app running: master pid {master_pid}, {describe_worker(read_json(layout.state_file))}")
    return 0


COMMANDS = {"start": start, "stop": stop, "reload": reload, "status": status}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo-app", description="Control the demo app on this host.")
    parser.add_argument(
        "--root", required=True, type=Path, help="deployment root (holds current/ and shared/)"
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    args = parser.parse_args(argv)
    layout = HostLayout(args.root.resolve())
    if args.command != "status":
        layout.ensure_shared_dirs()
    try:
        return COMMANDS[args.command](layout)
    except ControlError as exc:
        print(f"demo-app {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
