"""The LocalExecutor Airlock runs: a paused process's late exit never fails the resumed try."""

from __future__ import annotations

import pytest
from airflow.models.taskinstancekey import TaskInstanceKey
from airflow.utils.state import TaskInstanceState

from airlock.executors.local import DispatchLedger, ResumeSafeLocalExecutor

KEY = TaskInstanceKey(dag_id="release_demo", task_id="approve", run_id="manual__1", try_number=1)


def test_a_result_is_current_unless_the_same_key_was_sent_again_after_it():
    ledger = DispatchLedger()
    ledger.sent(KEY)
    ledger.sent(KEY)  # resumed after the approval, same try number

    assert ledger.finished(KEY) is False  # the paused process's exit
    assert ledger.finished(KEY) is True  # the resumed process's own
    assert len(ledger) == 0


def test_a_result_the_ledger_never_dispatched_passes_through():
    assert DispatchLedger().finished(KEY) is True


@pytest.fixture
def executor():
    running = ResumeSafeLocalExecutor(parallelism=1)
    running.start()
    yield running
    running.end()


def test_the_late_exit_of_a_paused_try_is_dropped_and_the_resumed_exit_reported(executor):
    executor.dispatches.sent(KEY)
    executor.dispatches.sent(KEY)
    executor.result_queue.put((KEY, TaskInstanceState.SUCCESS, None))

    executor.sync()
    assert KEY not in executor.event_buffer

    executor.result_queue.put((KEY, TaskInstanceState.FAILED, None))
    executor.sync()
    assert executor.event_buffer[KEY] == (TaskInstanceState.FAILED, None)


def test_an_exit_read_before_the_task_was_sent_again_is_reported_as_before(executor):
    executor.dispatches.sent(KEY)
    executor.result_queue.put((KEY, TaskInstanceState.SUCCESS, None))

    executor.sync()

    assert executor.event_buffer[KEY] == (TaskInstanceState.SUCCESS, None)
