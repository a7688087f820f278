"""Smoke tests against a real HTTP server and the session's PostgreSQL database."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from airlock.config import Host, HttpSmokeTest, SqlSmokeTest
from airlock.tasks.smoke import SmokeTestFailed, run_http_test, run_smoke_tests, run_sql_test
from airlock_dev.hosts import free_port


class _App(BaseHTTPRequestHandler):
    """``/version`` answers JSON, ``/slow`` takes 300 ms, anything else is 404 with a text body."""

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(0.3)
        status, body = (200, b'{"version": "1.0"}') if self.path in ("/version", "/slow") else (404, b"no")
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def app_host() -> Iterator[Host]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Host(name="web-9", address="127.0.0.1", app_url=f"http://127.0.0.1:{server.server_port}")
    server.shutdown()
    server.server_close()


def test_http_test_passes_on_expected_status_body_and_latency(app_host: Host) -> None:
    test = HttpSmokeTest(name="version", path="/version", body_contains='"version"')

    result = run_http_test(test, app_host)

    assert (result.test, result.target, result.passed) == ("version", "web-9", True)
    assert re.fullmatch(rf"GET {app_host.app_url}/version: 200 in \d+ ms", result.detail)


@pytest.mark.parametrize(
    ("test", "problem"),
    [
        pytest.param(
            HttpSmokeTest(name="home", path="/home"), r"status 404, expected 200", id="wrong-status"
        ),
        pytest.param(
            HttpSmokeTest(name="missing", path="/missing", expect_status=404, body_contains="version"),
            r"body does not contain 'version'",
            id="body-without-text",
        ),
        pytest.param(
            HttpSmokeTest(name="slow", path="/slow", max_latency=timedelta(milliseconds=100)),
            r"took \d+ ms, limit 100 ms",
            id="too-slow",
        ),
    ],
)
def test_http_test_fails_naming_what_differed(app_host: Host, test: HttpSmokeTest, problem: str) -> None:
    result = run_http_test(test, app_host)

    assert result.passed is False
    assert re.fullmatch(rf"GET {app_host.app_url}{test.path}: {problem}", result.detail)


def test_http_test_of_a_host_that_does_not_answer_fails_with_the_error() -> None:
    silent = Host(name="web-8", address="127.0.0.1", app_url=f"http://127.0.0.1:{free_port()}")

    result = run_http_test(HttpSmokeTest(name="version", path="/version"), silent)

    assert result.passed is False
    assert result.detail.startswith(f"GET {silent.app_url}/version failed: ")
    assert "Connection refused" in result.detail


@pytest.mark.parametrize(
    ("test", "passed", "detail"),
    [
        pytest.param(
            SqlSmokeTest(kind="sql", name="n", query="SELECT 2", expect=2), True, "returned 2", id="int"
        ),
        pytest.param(
            SqlSmokeTest(kind="sql", name="b", query="SELECT true", expect=True),
            True,
            "returned True",
            id="bool",
        ),
        pytest.param(
            SqlSmokeTest(kind="sql", name="t", query="SELECT 'a'", expect="b"),
            False,
            "returned 'a', expected 'b'",
            id="wrong-value",
        ),
        pytest.param(
            SqlSmokeTest(kind="sql", name="none", query="SELECT 1 WHERE false", expect=1),
            False,
            "returned None, expected 1",
            id="no-row",
        ),
    ],
)
def test_sql_test_compares_the_first_column_of_the_first_row(
    postgres_url: str, environment, test: SqlSmokeTest, passed: bool, detail: str
) -> None:
    result = run_sql_test(test, environment.database.conn_id)

    assert (result.target, result.passed, result.detail) == (environment.database.conn_id, passed, detail)


def test_sql_test_of_a_failing_query_reports_the_database_error(postgres_url: str, environment) -> None:
    test = SqlSmokeTest(kind="sql", name="orders", query="SELECT count(*) FROM no_such_table")

    result = run_sql_test(test, environment.database.conn_id)

    assert result.passed is False
    assert result.detail.startswith("query failed: ")
    assert 'relation "no_such_table" does not exist' in result.detail


def test_smoke_tests_run_http_per_host_and_sql_once_and_fail_listing_every_failure(
    postgres_url: str, environment, app_host: Host
) -> None:
    other = Host(name="web-7", address="127.0.0.1", app_url=app_host.app_url)
    smoke = environment.model_copy(
        update={
            "smoke_tests": [
                HttpSmokeTest(name="version", path="/version"),
                HttpSmokeTest(name="home", path="/home"),
                SqlSmokeTest(kind="sql", name="one", query="SELECT 1", expect=2),
            ]
        }
    )

    with pytest.raises(SmokeTestFailed) as failed:
        run_smoke_tests(smoke, [app_host, other])

    assert str(failed.value) == (
        "smoke test(s) failed: "
        f"home on web-9: GET {app_host.app_url}/home: status 404, expected 200; "
        f"home on web-7: GET {app_host.app_url}/home: status 404, expected 200; "
        f"one on {environment.database.conn_id}: returned 1, expected 2"
    )


def test_smoke_tests_that_all_pass_return_one_result_per_host_and_query(
    postgres_url: str, environment, app_host: Host
) -> None:
    smoke = environment.model_copy(
        update={
            "smoke_tests": [
                HttpSmokeTest(name="version", path="/version"),
                SqlSmokeTest(kind="sql", name="one", query="SELECT 1", expect=1),
            ]
        }
    )

    results = run_smoke_tests(smoke, [app_host])

    assert [(r.test, r.target, r.passed) for r in results] == [
        ("version", "web-9", True),
        ("one", environment.database.conn_id, True),
    ]
