"""Two CI jobs releasing at the same moment, against the running stack: exactly one goes ahead."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.e2e.rest import Rest, answer, finished, served


def pending_request(rest: Rest, dag_id: str, run_id: str) -> dict | None:
    pending = rest.call("GET", f"{rest.run_path(dag_id, run_id)}/hitlDetails", response_received="false")
    return pending["hitl_details"][0] if pending["hitl_details"] else None


def test_two_releases_triggered_together_exactly_one_proceeds_and_the_other_names_it(stack):
    rest = Rest(stack)
    before = served(stack)
    stack.slack.clear()

    # Both requests leave together (well within 100 ms of each other); the lock decides.
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda _: rest.trigger("release_demo", {"version": "2.0.0"}), range(2)))

    winner = loser = None
    deadline = time.monotonic() + 300
    while (winner is None or loser is None) and time.monotonic() < deadline:
        for run_id in runs:
            if run_id in (winner, loser):
                continue
            if pending_request(rest, "release_demo", run_id):
                winner = run_id
            elif rest.run_state("release_demo", run_id) in ("success", "failed"):
                loser = run_id
        time.sleep(0.2)
    assert winner is not None, {run: rest.task_states("release_demo", run) for run in runs}
    assert loser is not None, {run: rest.task_states("release_demo", run) for run in runs}

    lost = rest.task_states("release_demo", loser)
    assert rest.run_state("release_demo", loser) == "failed"
    assert lost["lock"] == "failed", lost
    assert not any(task.startswith("wave_") and state == "success" for task, state in lost.items()), lost
    assert stack.slack.wait_for(
        lambda texts: any("is locked by release 2.0.0" in t for t in texts), timeout=60
    )

    answer(rest, pending_request(rest, "release_demo", winner), "Reject")
    assert finished(rest, "release_demo", winner) == "failed"
    assert served(stack) == before
