"""Traffic to the hosts while a fault scenario runs: every failed request, with host, time and error.

What the users of the app see during a release: one thread per host requests the host's
``app_url`` (its version path, so the answers also say which build served them) over a new
connection each time, back to back, until stopped. A request fails when it cannot connect,
times out, or gets a status other than 200.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime

#: A request slower than this counts as failed: a user would have given up.
REQUEST_TIMEOUT_SECONDS = 5.0
#: Between two requests of one thread: enough to leave the 2 shared cores to the release.
PAUSE_SECONDS = 0.01


@dataclass(frozen=True)
class FailedRequest:
    host: str
    at: datetime
    error: str

    def __str__(self) -> str:
        return f"{self.at.isoformat(timespec='milliseconds')} {self.host}: {self.error}"


@dataclass(frozen=True)
class Answer:
    host: str
    at: datetime
    version: str | None


@dataclass
class HostLoad:
    """Requests to every host of ``environment`` in the background, from :meth:`start` to :meth:`stop`."""

    environment: object
    failures: list[FailedRequest] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> HostLoad:
        path = self.environment.deploy.version_path
        for host in self.environment.hosts:
            url = host.app_url.rstrip("/") + path
            thread = threading.Thread(target=self._requests, args=(host.name, url), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> HostLoad:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2 * REQUEST_TIMEOUT_SECONDS)
        return self

    def _requests(self, host: str, url: str) -> None:
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_SECONDS) as response:
                    version = json.loads(response.read()).get("version")
                self.answers.append(Answer(host, datetime.now(UTC), version))
            except urllib.error.HTTPError as error:
                self._failed(host, f"HTTP {error.code}")
            except (OSError, ValueError) as error:  # refused, reset, timed out, not JSON
                self._failed(host, f"{type(error).__name__}: {error}")
            time.sleep(PAUSE_SECONDS)

    def _failed(self, host: str, error: str) -> None:
        self.failures.append(FailedRequest(host, datetime.now(UTC), error))

    def answered(self, host: str) -> list[Answer]:
        return [answer for answer in self.answers if answer.host == host]

    def failed(self, host: str) -> list[FailedRequest]:
        return [failure for failure in self.failures if failure.host == host]

    def versions_served(self, host: str) -> set[str | None]:
        return {answer.version for answer in self.answered(host)}

    def assert_every_request_answered(self, *, at_least: int = 20) -> None:
        """Zero failed requests, and the load really ran: every host answered ``at_least`` times."""
        assert [str(failure) for failure in self.failures] == []
        for host in self.environment.hosts:
            assert len(self.answered(host.name)) >= at_least, (host.name, len(self.answered(host.name)))
