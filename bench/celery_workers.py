"""A 12-host release on the CeleryExecutor: one Celery worker against two of the same size.

Starts a real Airlock in Celery mode (the ``AIRLOCK_EXECUTOR=celery make demo`` stack on free
ports: api-server, scheduler, dag-processor, triggerer, Redis broker, PostgreSQL result backend)
with 12 sandbox sshd hosts, first with one ``airflow celery worker`` and then with two, each
worker with ``--slots`` task slots (default 2). Releases 2.0.0 in 3 waves (1, 50%, 100%: 1, 5
and 6 hosts) through the REST API, approval off for timing, and reads from the API the time
from the first deploy's start to the last smoke test's end, and the whole run's.

Prints both times and the ratio two workers / one worker: what adding a second worker machine
buys. On one 2-core machine both workers share the same CPUs, so this measures the gain of
more task slots, not of more CPU; on separate machines the second worker brings its own.

    PYTHONPATH=plugins:tools .venv/bin/python bench/celery_workers.py [--slots 2]
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from release_scaling import WAVES, api, release_seconds

from airlock_dev.stack import AirlockStack, disposable_stack

REDIS_DB = 10
HOSTS = 12


def run_seconds(stack: AirlockStack) -> float:
    """The last release run's whole duration, from its start to its end."""
    runs = api(stack, "GET", "/api/v2/dags/release_demo/dagRuns?limit=1&order_by=-start_date")["dag_runs"]
    start, end = (datetime.fromisoformat(runs[0][field]) for field in ("start_date", "end_date"))
    return (end - start).total_seconds()


def ran_on(stack: AirlockStack) -> dict[str, int]:
    runs = api(stack, "GET", "/api/v2/dags/release_demo/dagRuns?limit=1&order_by=-start_date")["dag_runs"]
    path = f"/api/v2/dags/release_demo/dagRuns/{runs[0]['dag_run_id']}/taskInstances?limit=200"
    counts: dict[str, int] = {}
    for ti in api(stack, "GET", path)["task_instances"]:
        if ti["hostname"]:
            counts[ti["hostname"]] = counts.get(ti["hostname"], 0) + 1
    return counts


def run(workers: int, slots: int) -> tuple[float, float, dict[str, int]]:
    overrides = {"rollout": {"waves": WAVES, "max_parallel_per_wave": 16}, "approval": {"required": False}}
    with disposable_stack(
        hosts=HOSTS,
        redis_db=REDIS_DB,
        prefix="airlock-bench-celery-",
        overrides=overrides,
        executor="celery",
        workers=workers,
        worker_concurrency=slots,
    ) as stack:
        waves = release_seconds(stack, "2.0.0")
        return waves, run_seconds(stack), ran_on(stack)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=2, help="task slots per worker (default 2)")
    slots = parser.parse_args().slots
    one_waves, one_run, one_on = run(1, slots)
    two_waves, two_run, two_on = run(2, slots)
    print(f"{HOSTS} hosts in 3 waves, {slots} task slots per worker")
    print(f"1 worker:  waves {one_waves:.1f}s, whole run {one_run:.1f}s (tasks per worker: {one_on})")
    print(f"2 workers: waves {two_waves:.1f}s, whole run {two_run:.1f}s (tasks per worker: {two_on})")
    print(f"ratio 2 workers/1 worker (waves): {two_waves / one_waves:.2f}")
    print(f"ratio 2 workers/1 worker (whole run): {two_run / one_run:.2f}")


if __name__ == "__main__":
    main()
