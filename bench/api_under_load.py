"""REST latency while the scheduled DAGs run, beside the same requests against an idle stack.

Starts a real Airlock (the ``make demo`` stack on free ports: api-server, scheduler,
dag-processor, triggerer, PostgreSQL metadata). Loaded: every scheduled DAG runs (they start at
once, and the benchmark triggers them again every 30 s), and 4 clients make REST calls for
``--seconds`` (default 120): reads of the pages a UI and a CI job poll (DAGs, runs, pending
approvals, health) and, one request in 50, a trigger (``health_demo`` or a ``release_demo``
dry run). Idle: every DAG paused and no run active, the same clients and requests for the same
time.

Prints p50/p99/max latency and the error count (HTTP 5xx, no answer within 30 s) of both, and
the ratio of the p99s. Goal: 0 errors and p99 below 1 s under load.

    PYTHONPATH=plugins:tools .venv/bin/python bench/api_under_load.py [--seconds 120]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from airlock_dev.stack import AirlockStack, disposable_stack

REDIS_DB = 11
CLIENTS = 4
SCHEDULED = ("health_demo", "backup_demo", "log_cleanup_demo", "db_maintenance_demo", "airflow_housekeeping")
READS = (
    "/api/v2/dags?limit=100",
    "/api/v2/dags/release_demo/dagRuns?limit=20&order_by=-start_date",
    "/api/v2/dags/~/dagRuns/~/hitlDetails?response_received=false",
    "/api/v2/dags/health_demo/dagRuns?limit=20&order_by=-start_date",
    "/api/v2/monitor/health",
)


@dataclass
class Measured:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, seconds: float, error: str | None) -> None:
        with self.lock:
            self.latencies.append(seconds)
            if error:
                self.errors.append(error)

    def summary(self) -> str:
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"{len(ordered)} requests, p50 {statistics.median(ordered) * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms, {len(self.errors)} errors"
        )

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def call(stack: AirlockStack, token: str, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{stack.api_url}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def trigger(stack: AirlockStack, token: str, dag_id: str, conf: dict) -> None:
    call(stack, token, "POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})


def client(stack: AirlockStack, token: str, until: float, measured: Measured, seed: int) -> None:
    chance = random.Random(seed)
    while time.monotonic() < until:
        started = time.monotonic()
        error = None
        try:
            if chance.random() < 0.02:
                if chance.random() < 0.5:
                    trigger(stack, token, "health_demo", {})
                else:
                    trigger(stack, token, "release_demo", {"version": "2.0.0", "dry_run": True})
            else:
                call(stack, token, "GET", chance.choice(READS))
        except urllib.error.HTTPError as failure:
            if failure.code >= 500:
                error = f"HTTP {failure.code}"
        except OSError as failure:  # timeouts and refused connections
            error = type(failure).__name__
        measured.record(time.monotonic() - started, error)
        time.sleep(0.1)


def keep_scheduled_dags_running(stack: AirlockStack, token: str, until: float) -> None:
    while time.monotonic() < until:
        for dag_id in SCHEDULED:
            trigger(stack, token, dag_id, {})
        time.sleep(30)


def measure(stack: AirlockStack, seconds: float, *, loaded: bool) -> Measured:
    token = stack.token()
    measured = Measured()
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(target=client, args=(stack, token, until, measured, seed)) for seed in range(CLIENTS)
    ]
    if loaded:
        threads.append(threading.Thread(target=keep_scheduled_dags_running, args=(stack, token, until)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return measured


def go_idle(stack: AirlockStack, token: str) -> None:
    """Pause every DAG, then wait until no task is queued or running.

    The runs of paused DAGs stay as they are (the scheduler leaves them alone); what matters is
    that no task process competes with the API server for the two cores.
    """
    for dag in call(stack, token, "GET", "/api/v2/dags?limit=100")["dags"]:
        call(stack, token, "PATCH", f"/api/v2/dags/{dag['dag_id']}", {"is_paused": True})
    busy = "/api/v2/dags/~/dagRuns/~/taskInstances?state=running&state=queued&limit=1"
    deadline = time.monotonic() + 600
    while call(stack, token, "GET", busy)["total_entries"]:
        if time.monotonic() > deadline:
            raise TimeoutError("tasks were still running 10 minutes after pausing every DAG")
        time.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    arguments = parser.parse_args()
    with disposable_stack(redis_db=REDIS_DB, prefix="airlock-bench-load-") as stack:
        loaded = measure(stack, arguments.seconds, loaded=True)
        go_idle(stack, stack.token())
        idle = measure(stack, arguments.seconds, loaded=False)
    print(f"loaded (scheduled DAGs running): {loaded.summary()}")
    print(f"idle (every DAG paused):         {idle.summary()}")
    print(f"p99 loaded / idle: {loaded.p99() / idle.p99():.2f}")
    for error in sorted(set(loaded.errors + idle.errors)):
        print(f"error seen: {error}")


if __name__ == "__main__":
    main()
