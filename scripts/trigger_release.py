"""Trigger ``release_<env>`` from CI through Airflow's REST API and, with ``--wait``, follow it.

Needs only the official client (``pip install apache-airflow-client==3.3.2``), not Airflow.
Credentials come from the environment: ``AIRFLOW_USERNAME`` and ``AIRFLOW_PASSWORD`` (a token
is requested from ``/auth/token``), or ``AIRFLOW_TOKEN``.

Exit codes: 0 released (or planned, for ``--dry-run``); 1 the run failed or was rejected;
2 bad usage or a request the server refused (its message is printed).

    python scripts/trigger_release.py --url https://airflow.example.com --env production \\
        --version 2.0.0 --reason "PR #123" --artifact-sha256 "$(cut -d' ' -f1 app-2.0.0.tar.gz.sha256)" --wait

``--artifact-sha256`` pins the artifact CI built: the release refuses any other one.
``--committed-at "$(git show -s --format=%cI)"`` dates the commit, for the board's lead time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

import airflow_client.client as airflow
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.api.task_instance_api import TaskInstanceApi
from airflow_client.client.exceptions import ApiException
from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

FINISHED = {"success", "failed"}


class UsageError(Exception):
    """Bad arguments, missing credentials or a request the server refused: exit 2."""


def log(message: str) -> None:
    print(message, flush=True)


def request_token(url: str, username: str, password: str) -> str:
    request = urllib.request.Request(
        f"{url}/auth/token",
        data=json.dumps({"username": username, "password": password}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())["access_token"]
    except urllib.error.HTTPError as error:
        raise UsageError(
            f"login as {username} refused: HTTP {error.code} {error.read().decode()[:300]}"
        ) from None
    except urllib.error.URLError as error:
        raise UsageError(f"cannot reach {url}: {error.reason}") from None


def client_for(url: str) -> airflow.ApiClient:
    token = os.environ.get("AIRFLOW_TOKEN")
    if not token:
        username, password = os.environ.get("AIRFLOW_USERNAME"), os.environ.get("AIRFLOW_PASSWORD")
        if not username or not password:
            raise UsageError("set AIRFLOW_USERNAME and AIRFLOW_PASSWORD (or AIRFLOW_TOKEN)")
        token = request_token(url, username, password)
    return airflow.ApiClient(airflow.Configuration(host=url, access_token=token))


def server_message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body)["detail"])
    except (TypeError, ValueError, KeyError):
        return str(error.body or error.reason)


def trigger(api: airflow.ApiClient, dag_id: str, conf: dict) -> str:
    try:
        run = DagRunApi(api).trigger_dag_run(dag_id, TriggerDAGRunPostBody(logical_date=None, conf=conf))
    except ApiException as error:
        raise UsageError(
            f"the server refused the run (HTTP {error.status}): {server_message(error)}"
        ) from None
    return run.dag_run_id


def follow(api: airflow.ApiClient, dag_id: str, run_id: str, timeout: float, poll: float = 3.0) -> str:
    """Print each task state change until the run finishes; return its final state."""
    runs, tasks = DagRunApi(api), TaskInstanceApi(api)
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ti in tasks.get_task_instances(dag_id, run_id, limit=200).task_instances:
            name = (
                ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.rendered_map_index or ti.map_index}]"
            )
            state = str(ti.state.value if hasattr(ti.state, "value") else ti.state or "none")
            if seen.get(name) != state:
                seen[name] = state
                hint = " (answer it under Browse > Required Actions)" if state == "awaiting_input" else ""
                log(f"  {name}: {state}{hint}")
        run = runs.get_dag_run(dag_id, run_id)
        state = str(run.state.value if hasattr(run.state, "value") else run.state)
        if state in FINISHED:
            return state
        time.sleep(poll)
    raise TimeoutError(f"run {run_id} still not finished after {timeout:.0f}s")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Trigger an Airlock release and optionally wait for it.")
    parser.add_argument("--url", default=os.environ.get("AIRFLOW_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--env", required=True, help="environment name: triggers release_<env>")
    parser.add_argument("--version", required=True)
    parser.add_argument("--reason", default="")
    parser.add_argument("--dry-run", action="store_true", help="plan only")
    parser.add_argument(
        "--artifact-sha256",
        default="",
        help="SHA-256 of the artifact CI built (64 hex characters): the release refuses any other",
    )
    parser.add_argument(
        "--committed-at",
        default="",
        help="when the released commit was made, ISO 8601 (git show -s --format=%%cI): the lead time",
    )
    parser.add_argument("--wait", action="store_true", help="follow the run until it finishes")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait with --wait")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        arguments = parse_arguments(argv)
    except SystemExit as exit_:
        return 0 if exit_.code == 0 else 2
    url = arguments.url.rstrip("/")
    dag_id = f"release_{arguments.env}"
    conf = {"version": arguments.version, "reason": arguments.reason, "dry_run": arguments.dry_run}
    if arguments.artifact_sha256:
        conf["artifact_sha256"] = arguments.artifact_sha256
    if arguments.committed_at:
        conf["committed_at"] = arguments.committed_at
    try:
        with client_for(url) as api:
            run_id = trigger(api, dag_id, conf)
            log(f"triggered {dag_id} {arguments.version}: run {run_id}")
            log(f"  {url}/dags/{dag_id}/runs/{run_id}")
            if not arguments.wait:
                return 0
            state = follow(api, dag_id, run_id, arguments.timeout)
    except UsageError as error:
        log(f"error: {error}")
        return 2
    except (ApiException, TimeoutError) as error:
        log(f"error: {error}")
        return 1
    log(f"{dag_id} {arguments.version}: {state}")
    return 0 if state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
