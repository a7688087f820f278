"""A Slack incoming-webhook stand-in for the ``demo`` profile of docker-compose.yaml.

Airlock sends Slack messages through the Slack provider's webhook hook to whatever URL the
``airlock_slack`` connection names. In the compose demo that connection points here
(``{"conn_type": "slackwebhook", "host": "http://slack-receiver:8090/services", ...}``), so
every notification is a real HTTP post. Each one is printed to stdout as one JSON line, which
``docker compose logs slack-receiver`` shows, and kept in memory for ``GET /messages``.

Answers like Slack: ``200 ok`` for a JSON body (or a form-encoded ``payload=`` field, the
legacy form), ``400 invalid_payload`` for anything else. ``GET /health`` is the healthcheck.
Standard library only, so it runs on a plain ``python`` image. The same record shape as
``airlock_dev.slack.SlackReceiver``, which serves the loopback demo and the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TextIO
from urllib.parse import parse_qs

KEPT_MESSAGES = 1000


class InvalidPayloadError(ValueError):
    """The body is neither a JSON object nor a form with a JSON ``payload`` field."""


def parse_webhook_body(raw: bytes, content_type: str) -> dict[str, Any]:
    """Read a webhook post the way Slack does: a JSON object, or a form field ``payload`` holding one."""
    text = raw.decode("utf-8", errors="replace")
    if content_type.split(";")[0].strip() == "application/x-www-form-urlencoded":
        fields = parse_qs(text)
        if "payload" not in fields:
            raise InvalidPayloadError("form post without a payload field")
        text = fields["payload"][0]
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidPayloadError(f"body is not JSON: {error}") from error
    if not isinstance(body, dict):
        raise InvalidPayloadError("body is JSON but not an object")
    return body


class WebhookRecorder:
    """Prints each received message as a JSON line and keeps the latest ``KEPT_MESSAGES``."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._messages: deque[dict[str, Any]] = deque(maxlen=KEPT_MESSAGES)
        self._lock = threading.Lock()

    def record(self, path: str, body: dict[str, Any]) -> None:
        entry = {"path": path, "received_at": datetime.now(UTC).isoformat(), **body}
        with self._lock:
            self._messages.append(entry)
            print(json.dumps(entry, sort_keys=True), file=self._out, flush=True)

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._messages)


def make_server(host: str, port: int, out: TextIO = sys.stdout) -> ThreadingHTTPServer:
    """An HTTP server recording webhook posts to ``out``; port 0 picks a free one."""
    recorder = WebhookRecorder(out)

    class WebhookHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body = parse_webhook_body(raw, self.headers.get("Content-Type", "application/json"))
            except InvalidPayloadError:
                self._answer(400, b"invalid_payload", "text/plain")
                return
            recorder.record(self.path, body)
            self._answer(200, b"ok", "text/plain")

        def do_GET(self) -> None:
            if self.path == "/health":
                self._answer(200, b"ok", "text/plain")
            elif self.path == "/messages":
                self._answer(200, json.dumps(recorder.messages()).encode(), "application/json")
            else:
                self._answer(404, b"not_found", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Keep stdout for the messages themselves; access lines would drown them."""

    return ThreadingHTTPServer((host, port), WebhookHandler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port)
    print(f"slack receiver listening on {args.host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
