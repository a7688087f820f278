"""The scheduler's Airlock thread and the LocalExecutor's forks never overlap."""

from __future__ import annotations

import os
import threading

from airlock.listeners import scheduler


def test_a_fork_waits_until_the_tick_in_progress_has_ended():
    order: list[str] = []
    in_tick, may_end = threading.Event(), threading.Event()

    def tick() -> None:
        with scheduler._fork_guard:
            in_tick.set()
            may_end.wait(timeout=30)
            order.append("tick ended")

    thread = threading.Thread(target=tick)
    thread.start()
    in_tick.wait(timeout=30)
    threading.Timer(0.2, may_end.set).start()  # the tick ends while the fork waits for it

    pid = os.fork()
    if pid == 0:  # the child: its guard is free (no tick thread of its own)
        os._exit(0 if scheduler._fork_guard.acquire(timeout=5) else 1)
    order.append("forked")
    _, status = os.waitpid(pid, 0)
    thread.join()

    assert order == ["tick ended", "forked"]
    assert os.waitstatus_to_exitcode(status) == 0
    assert scheduler._fork_guard.acquire(blocking=False)  # released in the parent after the fork
    scheduler._fork_guard.release()
