"""Airflow's LocalExecutor, without the false failure of a task resumed the moment it paused.

A task that pauses (a human-in-the-loop approval parks in ``awaiting_input``; a deferrable
operator defers) ends its process, and the LocalExecutor reports that process's exit as
``success`` for the task instance's key (dag, task, run, map index, try number). Resuming the
task keeps the try number, so the resumed try has the same key. When the answer comes fast (an
approval within about a second of the request), the scheduler re-queues the task and sends it
to a worker before it has read the first process's exit. It then reads that exit as the
resumed try's, finds the task instance ``queued`` and unknown to the executor, and marks it
failed ("Executor ... reported that the task instance ... finished with state success, but the
task instance's state attribute is queued"). Airflow 3.3 recognizes the case only while the
task is still ``scheduled`` (``scheduler_job_runner._process_executor_events``).

This executor counts the processes it has sent for each key and drops the exit of a process
whose key has been sent again since: that exit belongs to the paused process, and the resumed
one reports its own. Every other result passes through unchanged. The reproduction and the
upstream fix are in ``docs/behaviour.md`` ("Approvals that come fast").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

from airflow.executors.local_executor import LocalExecutor
from airflow.executors.workloads import ExecuteTask
from airflow.utils.state import TaskInstanceState

#: What a worker reports when a task's process has ended.
_EXITS = (TaskInstanceState.SUCCESS, TaskInstanceState.FAILED)


class DispatchLedger:
    """How many processes were sent for each task-instance key and have not reported yet."""

    def __init__(self) -> None:
        self._outstanding: Counter[Hashable] = Counter()

    def sent(self, key: Hashable) -> None:
        self._outstanding[key] += 1

    def finished(self, key: Hashable) -> bool:
        """Record one process of ``key`` as finished; whether its result is the current one.

        False when another process for the same key was sent after it (the result is stale). A
        key this ledger never saw (a result it did not dispatch) is current.
        """
        if key not in self._outstanding:
            return True
        self._outstanding[key] -= 1
        if self._outstanding[key] > 0:
            return False
        del self._outstanding[key]
        return True

    def __len__(self) -> int:
        return len(self._outstanding)


class ResumeSafeLocalExecutor(LocalExecutor):
    """
    ``LocalExecutor`` that ignores a paused process's exit once its task was sent again.

    Set ``[core] executor = airlock.executors.local.ResumeSafeLocalExecutor`` (``make demo``
    and the test stacks do). The CeleryExecutor needs no such guard: it replaces a key's Celery
    result when the key is sent again (``docs/behaviour.md``, "Approvals that come fast").
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dispatches = DispatchLedger()

    def _process_workloads(self, workload_list: Sequence[Any]) -> None:
        for workload in workload_list:
            if isinstance(workload, ExecuteTask):
                self.dispatches.sent(workload.key)
        super()._process_workloads(workload_list)

    def _read_results(self) -> None:
        while not self.result_queue.empty():
            key, state, _error = self.result_queue.get()
            if state not in _EXITS or self.dispatches.finished(key):
                self.change_state(key, state)
            else:
                self.log.info(
                    "Ignoring %s reported for %s: it is the exit of the process that paused this "
                    "try, which has been sent to a worker again since",
                    state,
                    key,
                )
