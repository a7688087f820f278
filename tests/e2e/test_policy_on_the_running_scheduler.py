"""Release policy where the clock is the running scheduler's: a freeze that ends, and a
configuration update driven through the REST API.

Two environments are added to the running stack (the demo's hosts, database and connections, no
schedules, no backup): ``demo-frozen``, frozen from a minute ago until two minutes from now, and
``demo-config``, whose ``config.source`` is a directory this module writes.
"""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import yaml

from airlock.core.config_sets import ConfigSet
from tests.e2e.rest import Rest, answer, finished, listed_request

FROZEN = "demo-frozen"
CONFIGURED = "demo-config"


def quiet(demo: dict) -> dict:
    """Overrides that keep an added environment to the runs its test triggers."""
    return {
        "backup": None,
        "db_maintenance": {"schedule": None},
        **{section: {**demo.get(section, {}), "schedule": None} for section in ("health", "logs")},
    }


@pytest.fixture(scope="module")
def demo(stack) -> dict:
    return yaml.safe_load((stack.environments_dir / "demo.yaml").read_text())


def test_a_release_refused_during_a_freeze_goes_ahead_once_the_freeze_has_ended(stack, demo):
    now = datetime.now(UTC).replace(microsecond=0)
    end = now + timedelta(minutes=2)
    freeze = {
        "name": "e2e-freeze",
        "reason": "end-to-end freeze",
        "start": (now - timedelta(minutes=1)).isoformat(),
        "end": end.isoformat(),
    }
    stack.add_environment(
        FROZEN,
        {
            "description": "The demo, frozen for two minutes (test_policy_on_the_running_scheduler.py)",
            "freezes": [freeze],
            **quiet(demo),
        },
        dag_ids=(f"release_{FROZEN}",),
    )
    try:
        rest = Rest(stack)
        dag_id = f"release_{FROZEN}"
        assert datetime.now(UTC) < end - timedelta(seconds=20), "the stack took too long to parse the DAG"

        refused = rest.trigger(dag_id, {"version": "2.0.0", "reason": "during the freeze"})
        assert finished(rest, dag_id, refused, timeout=120) == "failed"
        assert datetime.now(UTC) < end, "the refusal came after the freeze ended"
        states = rest.task_states(dag_id, refused)
        assert states["lock"] == "failed", states
        with psycopg.connect(stack.ops_url) as connection:
            [(result, detail)] = connection.execute(
                "SELECT result, detail FROM airlock.releases WHERE run_id = %s", (refused,)
            ).fetchall()
        assert result == "failed"
        assert (
            f"frozen by 'e2e-freeze' (end-to-end freeze) until {end.isoformat(timespec='minutes')}" in detail
        )

        while datetime.now(UTC) < end + timedelta(seconds=1):
            time.sleep(0.5)
        allowed = rest.trigger(dag_id, {"version": "2.0.0", "reason": "after the freeze"})
        request = listed_request(rest, dag_id, allowed)  # past the lock: the freeze is over
        answer(rest, request, "Reject")
        assert finished(rest, dag_id, allowed) == "failed"
        assert rest.task_states(dag_id, allowed)["lock"] == "success"
    finally:
        stack.remove_environment(FROZEN)


def reported_config(stack) -> list[str | None]:
    found = []
    for port in stack.ports.app:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=5) as response:
            found.append(json.loads(response.read()).get("config"))
    return found


def test_a_configuration_update_through_the_rest_api_puts_the_set_live_on_every_host(stack, demo):
    source = stack.home / "config-e2e"
    source.mkdir(exist_ok=True)
    (source / "app.conf").write_text(
        f"greeting = hello from the e2e test {time.time_ns()}\napi_token = e2e-secret\n"
    )
    (source / "features.yaml").write_text("dark_mode: true\n")
    expected = ConfigSet.of({path.name: path.read_bytes() for path in source.iterdir()})
    stack.add_environment(
        CONFIGURED,
        {
            "description": "The demo with its own config source (test_policy_on_the_running_scheduler.py)",
            "config": {"source": str(source), "report_field": "config"},
            **quiet(demo),
        },
        dag_ids=(f"config_update_{CONFIGURED}",),
    )
    try:
        rest = Rest(stack)
        dag_id = f"config_update_{CONFIGURED}"
        run_id = rest.trigger(dag_id, {"reason": "from CI"})
        request = listed_request(rest, dag_id, run_id)
        assert "`app.conf`: added" in request["body"]
        assert "e2e-secret" not in request["body"]
        answer(rest, request)
        assert finished(rest, dag_id, run_id) == "success", rest.task_states(dag_id, run_id)
        assert reported_config(stack) == [expected.id] * len(stack.ports.app)
        with psycopg.connect(stack.ops_url) as connection:
            [(action, version, result, approver)] = connection.execute(
                "SELECT action, version, result, approved_by FROM airlock.releases WHERE run_id = %s",
                (run_id,),
            ).fetchall()
        assert (action, version, result, approver) == ("config_update", expected.id, "succeeded", "admin")
    finally:
        stack.remove_environment(CONFIGURED)
