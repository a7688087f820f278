"""Regenerate the README's screenshots from a real release: ``docs/images/*.png``.

Starts its own Airlock (Airflow's components, three sandbox hosts, Slack) on free ports in a
temporary directory, triggers ``release_demo`` 2.0.0 through the REST API and, in headless
Chromium at 1400x900, captures the approval request with its release plan
(``approval.png``), clicks Approve and, once the run has succeeded, captures the run's grid
with both waves expanded (``release-grid.png``). Everything it started is stopped and its
database, Redis keys (database 13) and directory are removed, also on failure or Ctrl-C.

Needs Debian's ``chromium`` (``apt-get install chromium``), PostgreSQL and Redis on loopback::

    PYTHONPATH=plugins:tools .venv/bin/python scripts/screenshots.py

The browser steps are shared with ``tests/e2e/test_release_in_browser.py``, which keeps them
working against the Airflow UI this project pins.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import time
from pathlib import Path
from urllib.parse import quote

# Run as a file, only scripts/ is on sys.path; `scripts.trigger_release` needs the project.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import airflow_client.client as airflow
from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from airlock.config import PROJECT_ROOT
from airlock_dev.stack import AirlockStack, disposable_stack, say
from scripts.trigger_release import follow, trigger

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
ANSWER_DELAY_MS = 3_000
IMAGES = PROJECT_ROOT / "docs" / "images"
DAG_ID = "release_demo"
VERSION = "2.0.0"
# Not 0 (make demo), 12 (bench), 14 (e2e tests) or 15 (other tests): it may run beside any of them.
SCREENSHOTS_REDIS_DB = 13


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless: Playwright's own browser downloads are not used."""
    if not CHROMIUM.exists():
        raise RuntimeError(
            f"Chromium is not installed at {CHROMIUM}: install Debian's package "
            "(`apt-get install -y chromium`); .ci/run installs it in CI"
        )
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


def open_page(browser: Browser) -> Page:
    page = browser.new_page(viewport=VIEWPORT, color_scheme="light")
    page.set_default_timeout(30_000)
    return page


def log_in(page: Page, api_url: str, username: str, password: str) -> None:
    """Sign in on the simple auth manager's login page."""
    page.goto(f"{api_url}/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("link", name="Dags", exact=True)).to_be_visible()


def open_approval_request(page: Page, run_id: str, subject: str, timeout: float = 90) -> None:
    """Browse > Required Actions, then the run's request, once the approval task has asked.

    The list does not refresh by itself, so it is reloaded until the request shows up.
    """
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Required Actions").click()
    request = page.get_by_role("row").filter(has_text=run_id).get_by_role("link", name=subject)
    deadline = time.monotonic() + timeout
    while True:
        try:
            request.wait_for(timeout=5_000)
            break
        except PlaywrightTimeoutError:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no approval request {subject!r} for run {run_id} under Required Actions "
                    f"after {timeout:.0f}s"
                ) from None
            page.reload()
    request.click()
    expect(page.get_by_role("button", name="Approve", exact=True)).to_be_enabled()


def approve(page: Page) -> None:
    """Click Approve on an open approval request and wait until Airflow has taken the answer.

    Only once the task shows "Awaiting Input", and a moment later: an answer within about a
    second of the task deferring races the scheduler, which then fails the resumed task as
    "state changed externally" (seen with Airflow 3.3.2; a person never answers that fast).
    """
    expect(page.get_by_text("Awaiting Input", exact=True)).to_be_visible()
    page.wait_for_timeout(ANSWER_DELAY_MS)
    button = page.get_by_role("button", name="Approve", exact=True)
    button.click()
    expect(button).to_be_disabled()


def open_run_grid(page: Page, api_url: str, dag_id: str, run_id: str) -> None:
    """The run's page: grid on the left with every task group expanded, its tasks on the right."""
    page.goto(f"{api_url}/dags/{dag_id}/runs/{quote(run_id)}")
    expect(page.get_by_role("heading", name=run_id)).to_be_visible()
    page.get_by_role("button", name="Expand all task groups").click()
    expect(page.get_by_role("button", name="Collapse all task groups")).to_be_enabled()
    expect(page.get_by_role("link", name=re.compile(r"^wave_2\.deploy$")).first).to_be_visible()


def capture(stack: AirlockStack, images: Path) -> None:
    """Release :data:`VERSION` and save the approval request and the finished run's grid."""
    images.mkdir(parents=True, exist_ok=True)
    with airflow.ApiClient(airflow.Configuration(host=stack.api_url, access_token=stack.token())) as api:
        run_id = trigger(api, DAG_ID, {"version": VERSION, "reason": "Screenshots for the README"})
        say(f"triggered {DAG_ID} {VERSION}: run {run_id}")
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                page = open_page(browser)
                log_in(page, stack.api_url, "admin", stack.password())
                open_approval_request(page, run_id, f"Release {VERSION} to demo?")
                expect(page.get_by_role("row", name=f"1 web-1 1.0.0 {VERSION}")).to_be_visible()
                page.screenshot(path=images / "approval.png", animations="disabled")
                approve(page)
                state = follow(api, DAG_ID, run_id, timeout=180)
                if state != "success":
                    raise RuntimeError(f"run {run_id} ended {state}; see {stack.home}/logs")
                open_run_grid(page, stack.api_url, DAG_ID, run_id)
                page.screenshot(path=images / "release-grid.png", animations="disabled")
            finally:
                browser.close()
    say(f"wrote {images / 'approval.png'} and {images / 'release-grid.png'}")


def main() -> int:
    # The console shows progress and task states; SSH chatter goes nowhere.
    logging.disable(logging.INFO)

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)
    try:
        with disposable_stack(redis_db=SCREENSHOTS_REDIS_DB, prefix="airlock-screenshots-") as stack:
            capture(stack, IMAGES)
    except KeyboardInterrupt:
        say("interrupted; everything it started is stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
