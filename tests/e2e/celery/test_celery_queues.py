"""An environment's ``queue`` on the running Celery stack: its tasks run only on the workers that
serve that queue (worker-1 serves ``default``, worker-2 only ``zone-a``, the demo environment's).

The stack is this module's own and is gone before the session's ``celery_stack`` starts (this
file sorts first), so one stack runs at a time.
"""

from __future__ import annotations

import pytest

from airlock_dev.stack import disposable_stack
from tests.e2e.celery.conftest import BROKER_REDIS_DB
from tests.e2e.celery.test_celery_release import finished, task_instances
from tests.e2e.conftest import E2E_REDIS_DB
from tests.e2e.rest import Rest


@pytest.fixture(scope="module")
def zoned_stack():
    with disposable_stack(
        redis_db=E2E_REDIS_DB,
        prefix="airlock-e2e-queues-",
        executor="celery",
        worker_concurrency=1,
        worker_queues=("default", "zone-a"),
        broker_redis_db=BROKER_REDIS_DB,
        overrides={"queue": "zone-a"},
    ) as running:
        yield running


def test_an_environment_with_a_queue_runs_only_on_the_worker_serving_it(zoned_stack):
    stack = zoned_stack
    _default_only, zone_a = stack.celery_workers
    rest = Rest(stack)

    run_id = rest.trigger("backup_demo", {})

    assert finished(rest, "backup_demo", run_id, timeout=900) == "success"
    instances = task_instances(rest, "backup_demo", run_id)
    assert {ti["queue"] for ti in instances} == {"zone-a"}
    assert {ti["hostname"] for ti in instances} == {zone_a.address}
