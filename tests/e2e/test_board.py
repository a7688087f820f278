"""The Airlock board in the running api-server: ``/airlock`` behind Airflow's auth, and the
"Airlock" view in the navigation, after a release and with one app stopped.

The stack's api-server mounts the plugin as in production. A release goes out through the REST
API (with the ``committed_at`` CI passes), web-3's app is stopped and ``health_demo`` runs; then
headless Chromium signs in, opens "Airlock" from the navigation and reads the board in its
frame: the three hosts with the version they serve, web-3's failed health check. The last
screen is saved as ``docs/images/airlock-board.png`` (the README shows it).
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from scripts.screenshots import launch_chromium, log_in, open_page
from tests.e2e.rest import Rest, approve_the_moment_it_is_listed, finished, served

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "airlock-board.png"
ROUTES = [
    "/airlock/",
    "/airlock/api/environments",
    "/airlock/api/environments/demo/releases?limit=5",
    "/airlock/api/environments/demo/health",
    "/airlock/api/environments/demo/dora?days=30",
    "/airlock/metrics",
]


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers or {}), timeout=30
        ) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def rest(stack) -> Rest:
    return Rest(stack)


@pytest.mark.parametrize("route", ROUTES)
def test_the_running_api_server_serves_the_board_only_with_credentials(stack, route):
    assert status_of(stack.api_url + route) == 401
    assert status_of(stack.api_url + route, {"Authorization": f"Bearer {stack.token()}"}) == 200


def test_the_navigation_lists_airlock(rest):
    plugins = rest.call("GET", "/api/v2/plugins")["plugins"]
    views = [view for plugin in plugins for view in plugin["external_views"]]
    assert [(view["href"], view["nav_top_level"]) for view in views if view["name"] == "Airlock"] == [
        ("/airlock/", True)
    ]


@contextmanager
def app_stopped(stack, host_name: str) -> Iterator[None]:
    """The host's app stopped by its control script, and started again afterwards (the other
    end-to-end tests share the stack)."""
    environment = stack.environment()
    root = environment.root_of(environment.host(host_name))
    control = [f"{root}/current/bin/demo-app", "--root", root]
    subprocess.run([*control, "stop"], check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([*control, "start"], check=True, capture_output=True)


def metric_samples(stack, rest: Rest) -> dict[tuple[str, tuple], float]:
    request = urllib.request.Request(f"{stack.api_url}/airlock/metrics", headers=rest.headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_board_shows_the_release_and_a_stopped_app(stack, rest):
    current = served(stack)[0]
    version = "1.1.0" if current == "2.0.0" else "2.0.0"
    committed_at = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    run_id = rest.trigger("release_demo", {"version": version, "committed_at": committed_at})
    approve_the_moment_it_is_listed(rest, "release_demo", run_id)
    assert finished(rest, "release_demo", run_id) == "success"
    with app_stopped(stack, "web-3"):
        finished(rest, "health_demo", rest.trigger("health_demo", {}))
        read_the_board(stack, rest, version, run_id)


def read_the_board(stack, rest: Rest, version: str, run_id: str) -> None:
    dora = rest.call("GET", "/airlock/api/environments/demo/dora", days=1)
    assert dora["lead_time"]["samples"] >= 1
    web_3_app = (("check", "app"), ("environment", "demo"), ("target", "web-3"))
    assert metric_samples(stack, rest)[("airlock_health_status", web_3_app)] == 2

    # The shared machine can be slow to render the UI: wait up to 30 s, not 5, for each sight.
    expect.set_options(timeout=30_000)
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = open_page(browser)
            log_in(page, stack.api_url, "admin", stack.password())
            page.get_by_test_id("nav-sidebar").get_by_role("link", name="Airlock", exact=True).click()
            board = page.frame_locator("iframe")
            for host in ("web-1", "web-2", "web-3"):
                expect(board.locator(f"tr[data-host='{host}'] td.version")).to_have_text(
                    version, timeout=30000
                )
            expect(board.locator("tr[data-host='web-3'] td.health")).to_have_text("critical")
            expect(board.locator("tr[data-check='app web-3'] td").nth(2)).to_have_text("critical")
            expect(board.locator("table.releases a", has_text=run_id)).to_be_visible()
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=SCREENSHOT, full_page=True)
        finally:
            browser.close()
            expect.set_options(timeout=None)
