"""A Slack stand-in on loopback that records what it receives.

Airlock's Slack notifications go through the Slack provider's webhook hook to whatever URL the
``airlock_slack`` connection names. The demo and the tests point that connection here, so the
messages are real HTTP posts that can be printed (demo) or asserted on (tests).

It also answers as Slack's Web API under ``/api/`` (``chat.postMessage``, ``chat.update``:
``{"ok": true, "channel", "ts"}``), where the ``airlock_slack_api`` connection points, and takes
the ephemeral answers posted to ``/response/...`` (a click's ``response_url``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class SlackReceiver:
    """
    Record JSON posts on ``http://127.0.0.1:<port>/services/...``.

    :param port: port to listen on (0 picks a free one).
    :param log_path: append each message as one JSON line here, if given.
    :param echo: print each message's text (the demo console does).
    """

    def __init__(self, port: int = 0, log_path: Path | None = None, echo: bool = False) -> None:
        self.messages: list[dict[str, Any]] = []
        #: Posts answered with an error instead of taken (see :meth:`refuse`), as (status, text).
        self.refused: list[tuple[int, str]] = []
        self._refusal: tuple[int, int | None] | None = None
        self._posted = 0
        self._lock = threading.Condition()
        self.log_path = log_path
        self.echo = echo
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self.send_response(400)
                    self.end_headers()
                    self.wfile.write(b"invalid_payload")
                    return
                refused = receiver._refuse(body)
                if refused is not None:
                    self.send_response(refused)
                    if refused == 429:
                        self.send_header("Retry-After", "60")
                    self.end_headers()
                    self.wfile.write(b"rate_limited" if refused == 429 else b"internal_error")
                    return
                if self.path.startswith("/api/"):
                    body = {**body, "ts": body.get("ts") or receiver._ts()}  # where the message is
                receiver._record(self.path, body)
                if self.path.startswith("/api/"):  # Slack's Web API answers JSON
                    answer = {"ok": True, "channel": body.get("channel"), "ts": body["ts"]}
                    data = json.dumps(answer).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="slack-receiver", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services"

    def _ts(self) -> str:
        with self._lock:
            self._posted += 1
            return f"{int(time.time())}.{self._posted:06d}"

    def api_connection(self) -> dict[str, Any]:
        """The ``slack`` (Web API) connection: a bot token, and this receiver as its base URL."""
        return {
            "conn_type": "slack",
            "password": "xoxb-airlock-test-token",
            "extra": {"base_url": f"http://127.0.0.1:{self.port}/api/"},
        }

    def api_calls(self, method: str) -> list[dict[str, Any]]:
        """What Airlock sent to the Web API's ``method`` (``chat.postMessage``...), in order."""
        with self._lock:
            return [message for message in self.messages if message["path"] == f"/api/{method}"]

    def connection(self) -> dict[str, str]:
        """The ``slackwebhook`` connection (full URL in ``host``: the hook ignores a port field)."""
        return {"conn_type": "slackwebhook", "host": self.base_url, "password": "T000/B000/XXXX"}

    def refuse(self, status: int = 500, times: int | None = None) -> None:
        """Answer the next ``times`` posts (all of them while ``times`` is None) with ``status``
        (429 as Slack's rate limit does, with ``Retry-After``; 500 as an outage) without taking them."""
        with self._lock:
            self._refusal = (status, times)

    def accept(self) -> None:
        """Take every post again (undoes :meth:`refuse`)."""
        with self._lock:
            self._refusal = None

    def _refuse(self, body: dict[str, Any]) -> int | None:
        with self._lock:
            if self._refusal is None:
                return None
            status, times = self._refusal
            if times is not None:
                self._refusal = (status, times - 1) if times > 1 else None
            self.refused.append((status, str(body.get("text", ""))))
            return status

    def _record(self, path: str, body: dict[str, Any]) -> None:
        entry = {"path": path, "received_at": datetime.now(UTC).isoformat(), **body}
        with self._lock:
            self.messages.append(entry)
            self._lock.notify_all()
        if self.log_path:
            with self.log_path.open("a") as log:
                log.write(json.dumps(entry) + "\n")
        if self.echo:
            print(f"[slack] {body.get('text', '')}", flush=True)

    def texts(self) -> list[str]:
        with self._lock:
            return [str(message.get("text", "")) for message in self.messages]

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
            self.refused.clear()
            self._refusal = None

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate([str(m.get("text", "")) for m in self.messages]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
        return True

    def start(self) -> SlackReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SlackReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
