"""HTTP probes: the one place Airlock GETs a URL and reads its JSON (app health, versions, Airflow)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

# What a GET raises when nothing answers: refused, timed out, unresolvable.
UNREACHABLE = (OSError, urllib.error.URLError)


def fetch(url: str, timeout: float) -> tuple[int, bytes, float]:
    """GET ``url``: status, raw body and latency in seconds.

    An HTTP error status is returned, not raised; :data:`UNREACHABLE` errors propagate.
    """
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body, status = response.read(), response.status
    except urllib.error.HTTPError as error:
        body, status = error.read(), error.code
    return status, body, time.monotonic() - started


def fetch_json(url: str, timeout: float) -> tuple[int, Any | None, float]:
    """GET ``url``: status, parsed JSON body (None when not JSON) and latency in seconds."""
    status, body, latency = fetch(url, timeout)
    try:
        return status, json.loads(body), latency
    except ValueError:
        return status, None, latency
