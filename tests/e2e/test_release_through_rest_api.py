"""Releases driven from outside, as CI drives them: the REST API, the official client, the trigger script.

Against a running Airflow (api-server, scheduler, dag-processor, triggerer) with LocalExecutor,
three sandbox sshd hosts running the demo app, PostgreSQL, Redis and the Slack receiver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import airflow_client.client as airflow
import pytest
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.api.task_instance_api import TaskInstanceApi
from airflow_client.client.models.update_hitl_detail_payload import UpdateHITLDetailPayload

from tests.support import PROJECT

SCRIPT = PROJECT / "scripts" / "trigger_release.py"


def served(stack) -> list[str | None]:
    versions = []
    for port in stack.ports.app:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=5) as response:
                versions.append(json.loads(response.read())["version"])
        except OSError:
            versions.append(None)
    return versions


@pytest.fixture(scope="module")
def api(stack):
    configuration = airflow.Configuration(host=stack.api_url, access_token=stack.token())
    with airflow.ApiClient(configuration) as client:
        yield client


def start_trigger_script(stack, version: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "AIRFLOW_USERNAME": "admin", "AIRFLOW_PASSWORD": stack.password()}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--url", stack.api_url, "--env", "demo", "--version", version, *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def pending_approval(api, version: str, timeout: float = 120):
    """The pending approval request of the release of ``version``, the moment it is listed.

    Only this release's request: one another test left unanswered must not be taken for it.
    """
    tasks = TaskInstanceApi(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        details = tasks.get_hitl_details("~", "~", response_received=False).hitl_details
        mine = [d for d in details if d.body and d.body.startswith(f"## Release {version} to demo")]
        if mine:
            return mine[0]
        time.sleep(0.05)
    raise AssertionError(f"no approval request for release {version} appeared")


def other_than(*versions: str) -> str:
    """A good demo version none of the hosts is on: the tests run in any order after one another."""
    return next(v for v in ("2.0.0", "1.1.0", "1.0.0") if v not in versions)


def on_one_version(stack) -> str:
    before = served(stack)
    assert len(set(before)) == 1, f"the hosts disagree before the release: {before}"
    assert before[0], f"no host serves the app before the release: {before}"
    return before[0]


def approve(api, detail, option: str = "Approve") -> None:
    ti = detail.task_instance
    TaskInstanceApi(api).update_hitl_detail(
        ti.dag_id,
        ti.dag_run_id,
        ti.task_id,
        ti.map_index,
        UpdateHITLDetailPayload(chosen_options=[option], params_input={}),
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


def test_an_invalid_version_is_refused_with_http_400_and_nothing_runs(stack, api):
    before = DagRunApi(api).get_dag_runs("release_demo").total_entries

    code, output = finish(start_trigger_script(stack, "2.0; touch /tmp/pwned"))

    assert code == 2
    assert "HTTP 400" in output
    assert "does not match" in output
    assert DagRunApi(api).get_dag_runs("release_demo").total_entries == before


def test_a_second_release_while_one_waits_for_approval_fails_naming_the_holder(stack, api):
    current = on_one_version(stack)
    first_version = other_than(current)
    second_version = other_than(current, first_version)
    first = start_trigger_script(stack, first_version, "--wait", "--reason", "first")
    detail = pending_approval(api, first_version)

    code, output = finish(start_trigger_script(stack, second_version, "--wait"))

    assert code == 1, output
    assert "lock: failed" in output
    assert stack.slack.wait_for(
        lambda texts: any(f"is locked by release {first_version}" in t for t in texts), timeout=30
    )
    approve(api, detail, "Reject")
    code, output = finish(first)
    assert code == 1, output
    assert served(stack) == [current] * 3


def test_ci_releases_a_version_that_is_approved_by_the_assigned_user(stack, api):
    current = on_one_version(stack)
    version = other_than(current)
    stack.slack.clear()
    process = start_trigger_script(stack, version, "--wait", "--reason", "e2e")
    detail = pending_approval(api, version)

    assert detail.assigned_users[0].id == "admin"
    assert f"| 1 | web-1 | {current} | {version} |" in detail.body
    approve(api, detail)
    code, output = finish(process)

    assert code == 0, output
    assert "wave_2.deploy[web-2, web-3]: success" in output  # one deploy task per wave
    assert served(stack) == [version] * 3
    texts = stack.slack.texts()
    assert any(f"release {version} needs approval" in t for t in texts)
    assert any(f"release {version} is live on web-1, web-2, web-3" in t for t in texts)


def test_a_broken_version_fails_and_every_host_is_back_on_the_previous_release(stack, api):
    current = on_one_version(stack)
    process = start_trigger_script(stack, "2.1.0-broken", "--wait")
    approve(api, pending_approval(api, "2.1.0-broken"))

    code, output = finish(process)

    assert code == 1, output
    assert "rollback: success" in output
    assert served(stack) == [current] * 3
    assert any("failed at wave_1.deploy (web-1)" in t for t in stack.slack.texts())
