"""Smoke tests after each wave: HTTP checks against the wave's hosts, SQL checks on the database.

They are the environment's ``smoke_tests`` list. A failure stops the release (and triggers the
rollback); the message names the test, the host and what was expected. A restore runs the SQL
tests alone against the restored database. Hosts are reached through :mod:`airlock.hooks.http`,
the database through :func:`airlock.hooks.postgres.first_row`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from airlock.config import Environment, Host, HttpSmokeTest, SqlSmokeTest
from airlock.hooks.http import UNREACHABLE, fetch
from airlock.hooks.postgres import first_row


class SmokeTestFailed(RuntimeError):
    """At least one smoke test failed; the message lists every failure."""


@dataclass(frozen=True)
class SmokeResult:
    test: str
    target: str
    passed: bool
    detail: str


def run_http_test(test: HttpSmokeTest, host: Host) -> SmokeResult:
    url = host.app_url + test.path
    timeout = max(test.max_latency.total_seconds() * 2, 5)
    try:
        status, raw, latency = fetch(url, timeout=timeout)
    except UNREACHABLE as error:
        return SmokeResult(test.name, host.name, False, f"GET {url} failed: {error}")
    body = raw.decode(errors="replace")
    problems = []
    if status != test.expect_status:
        problems.append(f"status {status}, expected {test.expect_status}")
    if test.body_contains is not None and test.body_contains not in body:
        problems.append(f"body does not contain {test.body_contains!r}")
    if latency > test.max_latency.total_seconds():
        problems.append(
            f"took {latency * 1000:.0f} ms, limit {test.max_latency.total_seconds() * 1000:.0f} ms"
        )
    detail = "; ".join(problems) or f"{status} in {latency * 1000:.0f} ms"
    return SmokeResult(test.name, host.name, not problems, f"GET {url}: {detail}")


def _same(actual: object, expected: object) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return (
            str(actual).lower() in ("true", "t", "1")
            if expected
            else str(actual).lower() in ("false", "f", "0")
        )
    return str(actual) == str(expected)


def run_sql_test(test: SqlSmokeTest, conn_id: str) -> SmokeResult:
    try:
        row = first_row(conn_id, test.query)
    except Exception as error:
        return SmokeResult(test.name, conn_id, False, f"query failed: {error}")
    actual = row[0] if row else None
    if test.expect is not None and not _same(actual, test.expect):
        return SmokeResult(test.name, conn_id, False, f"returned {actual!r}, expected {test.expect!r}")
    return SmokeResult(test.name, conn_id, True, f"returned {actual!r}")


def run_smoke_tests(environment: Environment, hosts: list[Host]) -> list[SmokeResult]:
    """Run every smoke test; raise :class:`SmokeTestFailed` listing each failure."""
    results = []
    # A wave's hosts are checked together (at most rollout.max_parallel_per_wave at once), so
    # the smoke tests take one host's round trips, not the sum of them all.
    workers = max(1, min(environment.rollout.max_parallel_per_wave, len(hosts)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smoke") as pool:
        for test in environment.smoke_tests:
            if isinstance(test, HttpSmokeTest):
                results += pool.map(lambda host, test=test: run_http_test(test, host), hosts)
            else:
                results.append(run_sql_test(test, environment.database.conn_id))
    failures = [r for r in results if not r.passed]
    if failures:
        raise SmokeTestFailed(
            "smoke test(s) failed: " + "; ".join(f"{r.test} on {r.target}: {r.detail}" for r in failures)
        )
    return results
