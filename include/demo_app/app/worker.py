"""The demo app's HTTP worker: serves one release on a listening socket it inherits from the master.

The master binds the port once and hands the socket to each worker it spawns (``--listen-fd``).
Because the socket and its accept queue outlive any single worker, a reload never refuses a
connection: while the new worker starts, connections wait in the queue, and the old worker
only stops accepting once the new one has said it is ready (``--ready-fd``).

The worker reports the version of the release it was started from, not whatever ``current``
points to later. psycopg is needed only by ``/items``, so ``/health`` and ``/version`` work
under an interpreter without it; where it is installed, the worker imports it before it reports
ready, so the first ``/items`` after a reload does not pay for the import.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import logging.handlers
import os
import selectors
import signal
import socket
import sys
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from host_layout import HostLayout, Release, read_app_settings, read_release

log = logging.getLogger("demo-app.worker")

DATABASE_CONNECT_TIMEOUT_SECONDS = 2
# A query stuck behind a lock must not hold a request (and so the worker's shutdown) forever.
DATABASE_STATEMENT_TIMEOUT_MS = 5000
REQUEST_TIMEOUT_SECONDS = 30
MASTER_CHECK_SECONDS = 1.0
ITEM_COLUMNS = ("id", "name", "created_at", "category")


class DatabaseUnavailable(Exception):
    """The app's database cannot answer: unset, unreachable, or psycopg missing."""


@dataclass(frozen=True)
class ServedApp:
    """What the worker serves: one release and the database it reads.

    :param release: the release this worker was spawned from.
    :param database_url: the PostgreSQL URL from app.env, ``None`` when unset.
    """

    release: Release
    database_url: str | None


def fetch_items(database_url: str | None) -> list[dict[str, Any]]:
    """Read the ``items`` table; an empty list when the table does not exist yet (before V1).

    The ``category`` column only exists after the V2 migration, so the selected columns follow
    the table rather than the app version.
    """
    if not database_url:
        raise DatabaseUnavailable("DATABASE_URL is not set in shared/app.env")
    try:
        import psycopg
        from psycopg import sql
        from psycopg.rows import dict_row
    except ImportError:
        raise DatabaseUnavailable(
            f"psycopg is not installed for {sys.executable}: set PYTHON in shared/app.env "
            "to an interpreter that has it"
        ) from None
    try:
        with psycopg.connect(
            database_url,
            connect_timeout=DATABASE_CONNECT_TIMEOUT_SECONDS,
            autocommit=True,
            options=f"-c statement_timeout={DATABASE_STATEMENT_TIMEOUT_MS}",
        ) as conn:
            conn.execute("SELECT 1")
            present = {
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND table_name = 'items'"
                )
            }
            if not present:
                return []
            columns = [name for name in ITEM_COLUMNS if name in present]
            query = sql.SQL("SELECT {columns} FROM {table} ORDER BY {order}").format(
                columns=sql.SQL(", ").join(sql.Identifier(name) for name in columns),
                table=sql.Identifier("items"),
                order=sql.Identifier("id"),
            )
            with conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(query).fetchall()
    except psycopg.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(f"database unreachable: {first_line}") from exc
    return [
        {key: value.isoformat() if hasattr(value, "isoformat") else value for key, value in row.items()}
        for row in rows
    ]


class DemoAppHandler(BaseHTTPRequestHandler):
    """Answers ``/health``, ``/version`` and ``/items`` with JSON; HTTP/1.0, one request per connection.

    One request per connection keeps a graceful stop short: an old worker never waits on an idle
    keep-alive client after it has stopped accepting.
    """

    server: DemoAppServer
    timeout = REQUEST_TIMEOUT_SECONDS

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        release = self.server.app.release
        if path == "/health":
            if release.broken:
                self.send_json(
                    HTTPStatus.SERVICE_UNAVAILABLE,
                    {"status": "failing", "version": release.version, "reason": "this build is BROKEN"},
                )
            else:
                self.send_json(HTTPStatus.OK, {"status": "ok", "version": release.version})
        elif path == "/version":
            self.send_json(HTTPStatus.OK, {"version": release.version, "config": release.config})
        elif path == "/items":
            self.send_items()
        else:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"})

    def send_items(self) -> None:
        try:
            items = fetch_items(self.server.app.database_url)
        except DatabaseUnavailable as exc:
            self.send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        except Exception as exc:
            log.exception("GET /items failed")
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})
        else:
            self.send_json(HTTPStatus.OK, {"items": items, "count": len(items)})

    def send_json(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode("utf-8") + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


class DemoAppServer(ThreadingHTTPServer):
    """A threading HTTP server on an already listening socket.

    Handler threads are not daemons and ``server_close`` joins them, so in-flight requests
    finish before the worker exits. The listening socket is non-blocking because old and new
    workers accept from it side by side during a reload: the one that loses the race for a
    connection must go back to its loop (and notice a stop request) instead of blocking in
    ``accept``.
    """

    daemon_threads = False

    def __init__(self, listener: socket.socket, app: ServedApp) -> None:
        super().__init__(listener.getsockname()[:2], DemoAppHandler, bind_and_activate=False)
        self.socket.close()
        self.socket = listener
        self.socket.setblocking(False)
        self.server_address = listener.getsockname()
        self.server_name = socket.getfqdn(str(self.server_address[0]))
        self.server_port = self.server_address[1]
        self.app = app

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = self.socket.accept()
        conn.setblocking(True)
        return conn, address


def configure_logging(layout: HostLayout) -> None:
    handler = logging.handlers.WatchedFileHandler(layout.app_log, encoding="utf-8")
    handler.setFormatter(logging.Formatter(f"%(asctime)s worker[{os.getpid()}] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve one demo-app release (spawned by the master).")
    parser.add_argument("--root", required=True, type=Path, help="deployment root")
    parser.add_argument("--release", required=True, type=Path, help="resolved release directory")
    parser.add_argument("--listen-fd", required=True, type=int, help="inherited listening socket")
    parser.add_argument("--ready-fd", required=True, type=int, help="pipe to report readiness on")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = HostLayout(args.root)
    configure_logging(layout)
    master_pid = os.getppid()
    release = read_release(args.release)
    app = ServedApp(release=release, database_url=read_app_settings(layout).database_url)

    stopping: list[int] = []
    wakeup_read, wakeup_write = os.pipe()
    for fd in (wakeup_read, wakeup_write):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wakeup_write)
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))

    server = DemoAppServer(socket.socket(fileno=args.listen_fd), app)
    if app.database_url:
        with contextlib.suppress(ImportError):  # /items says so when it is asked
            import psycopg  # noqa: F401
    os.write(args.ready_fd, json.dumps({"pid": os.getpid(), "version": release.version}).encode() + b"\n")
    os.close(args.ready_fd)
    log.info("serving version %s from %s", release.version, release.path)

    # Asleep until a connection or a signal arrives: a stop request (the signal's byte on the
    # wakeup pipe) is seen at once, and an idle worker costs no CPU. Once a second it checks
    # that its master still runs.
    with selectors.DefaultSelector() as selector:
        selector.register(server.socket, selectors.EVENT_READ)
        selector.register(wakeup_read, selectors.EVENT_READ)
        while not stopping:
            for key, _ in selector.select(timeout=MASTER_CHECK_SECONDS):
                if key.fileobj == wakeup_read:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wakeup_read, 4096)
                elif not stopping:
                    # Another worker may have taken the connection: accept is non-blocking.
                    server._handle_request_noblock()
            if os.getppid() != master_pid:
                log.warning("master %s is gone; stopping so the port is not held by an orphan", master_pid)
                break
    log.info("stopping: no longer accepting, finishing in-flight requests")
    server.server_close()  # joins the handler threads: in-flight requests finish
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
