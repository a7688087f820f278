"""A release done by hand in Airflow's UI, as an operator does it: trigger, read the plan, approve.

Headless Chromium (Debian's ``chromium``, driven by Playwright) signs in as admin on the simple
auth manager's login page, opens ``release_demo``, fills the Trigger form, opens the approval
request under Browse > Required Actions and clicks Approve. Only the wait for the run to finish
goes through the REST API. The browser steps are the ones ``scripts/screenshots.py`` uses.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

import airflow_client.client as airflow
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from scripts.screenshots import approve, launch_chromium, log_in, open_approval_request, open_page
from scripts.trigger_release import follow
from tests.e2e.rest import served

DAG_ID = "release_demo"
RUN_PAGE = re.compile(rf"/dags/{DAG_ID}/runs/(?P<run_id>[^/?#]+)$")


@contextmanager
def browser_page(screenshot: Path) -> Iterator[Page]:
    """A page in headless Chromium; its last state is saved to ``screenshot``, also on failure."""
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = open_page(browser)
            try:
                yield page
            finally:
                page.screenshot(path=screenshot)
        finally:
            browser.close()


@pytest.fixture
def api(stack):
    configuration = airflow.Configuration(host=stack.api_url, access_token=stack.token())
    with airflow.ApiClient(configuration) as client:
        yield client


def trigger_in_form(page: Page, version: str, reason: str) -> str:
    """Dags > release_demo > Trigger, fill the run parameters, submit; the new run's id."""
    page.get_by_role("link", name="Dags", exact=True).click()
    page.get_by_role("link", name=DAG_ID, exact=True).click()
    expect(page.get_by_role("heading", name=DAG_ID)).to_be_visible()
    page.get_by_role("button", name="Trigger Dag").click()
    form = page.get_by_role("dialog")

    def field(name: str):
        label = page.get_by_text(re.compile(rf"^{name}\s*\*?$"))
        return form.get_by_role("group").filter(has=label).get_by_role("textbox")

    field("version").fill(version)
    field("reason").fill(reason)
    form.get_by_role("button", name="Trigger", exact=True).click()
    page.wait_for_url(RUN_PAGE)
    return unquote(RUN_PAGE.search(page.url)["run_id"])


def test_an_operator_triggers_and_approves_a_release_in_the_airflow_ui(stack, api, tmp_path):
    before = served(stack)
    assert len(set(before)) == 1, f"the hosts disagree before the release: {before}"
    current = before[0]
    version = "1.1.0" if current == "2.0.0" else "2.0.0"

    with browser_page(tmp_path / "last.png") as page:
        log_in(page, stack.api_url, "admin", stack.password())
        run_id = trigger_in_form(page, version, reason="released from the browser")
        open_approval_request(page, run_id, f"Release {version} to demo?")
        expect(page.get_by_role("row", name=f"1 web-1 {current} {version}")).to_be_visible()
        expect(page.get_by_text("released from the browser")).to_be_visible()
        approve(page)

    assert follow(api, DAG_ID, run_id, timeout=120) == "success"
    assert served(stack) == [version] * 3
