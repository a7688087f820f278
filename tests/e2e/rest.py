"""The Airflow REST API as impatient users and CI jobs drive it, for the end-to-end tests."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request


class Rest:
    """The Airflow REST API as a CI job calls it: a bearer token and JSON."""

    def __init__(self, stack) -> None:
        self.base = stack.api_url
        self.headers = {"Authorization": f"Bearer {stack.token()}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: dict | None = None, **query) -> dict:
        url = f"{self.base}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=self.headers, method=method)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def trigger(self, dag_id: str, conf: dict) -> str:
        run = self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    @staticmethod
    def run_path(dag_id: str, run_id: str) -> str:
        return f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.call("GET", self.run_path(dag_id, run_id))["state"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        instances = self.call("GET", f"{self.run_path(dag_id, run_id)}/taskInstances", limit=100)[
            "task_instances"
        ]
        return {
            ti["task_id"] + ("" if ti["map_index"] < 0 else f"[{ti['map_index']}]"): ti["state"]
            for ti in instances
        }


def listed_request(rest: Rest, dag_id: str, run_id: str, timeout: float = 240) -> dict:
    """Poll this run's pending approval requests every 50 ms; the first one, once listed."""
    deadline = time.monotonic() + timeout
    next_state_check = time.monotonic() + 2
    while time.monotonic() < deadline:
        pending = rest.call("GET", f"{rest.run_path(dag_id, run_id)}/hitlDetails", response_received="false")
        if pending["hitl_details"]:
            return pending["hitl_details"][0]
        if time.monotonic() > next_state_check:
            if rest.run_state(dag_id, run_id) in ("success", "failed"):
                states = rest.task_states(dag_id, run_id)
                raise AssertionError(f"{dag_id} {run_id} ended before asking: {states}")
            next_state_check = time.monotonic() + 2
        time.sleep(0.05)
    raise AssertionError(f"no approval request of {dag_id} {run_id} within {timeout:.0f}s")


def answer(rest: Rest, detail: dict, option: str = "Approve") -> None:
    ti = detail["task_instance"]
    task = f"taskInstances/{ti['task_id']}/{ti['map_index']}"
    rest.call(
        "PATCH",
        f"{rest.run_path(ti['dag_id'], ti['dag_run_id'])}/{task}/hitlDetails",
        {"chosen_options": [option], "params_input": {}},
    )


def approve_the_moment_it_is_listed(rest: Rest, dag_id: str, run_id: str, timeout: float = 240) -> float:
    """Approve this run's request as soon as it is listed; returns the seconds from the listing
    arriving to the answer being accepted."""
    detail = listed_request(rest, dag_id, run_id, timeout)
    listed = time.monotonic()
    answer(rest, detail)
    return time.monotonic() - listed


def finished(rest: Rest, dag_id: str, run_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = rest.run_state(dag_id, run_id)
        if state in ("success", "failed"):
            return state
        time.sleep(1)
    raise AssertionError(f"{dag_id} {run_id} did not finish within {timeout:.0f}s")


def served(stack) -> list[str]:
    versions = []
    for port in stack.ports.app:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=5) as response:
            versions.append(json.loads(response.read())["version"])
    return versions
