"""What a release run's deploy tasks did to each host, from their states and deploy reports."""

from __future__ import annotations

import pytest

from airlock.config import load_environment
from airlock.core.outcome import (
    ALREADY_THERE,
    HOST_FAILED,
    NOT_SWITCHED,
    SWITCHED,
    HostDeploy,
    deploy_table,
    release_outcome,
)
from airlock.tasks.release import release_run
from tests.support import PROJECT

DEMO = load_environment(PROJECT / "include" / "environments" / "demo.yaml")  # waves: web-1 | web-2, web-3


def report(*lines: HostDeploy) -> list[dict]:
    return [line.to_dict() for line in lines]


def test_one_deploy_task_per_wave_names_each_host_from_its_report():
    states = {"wave_1.deploy_0": "success", "wave_1.verify": "success", "wave_2.deploy_0": "failed"}
    reports = {
        "wave_2.deploy_0": report(
            HostDeploy("web-2", HOST_FAILED, before="1.0.0", why="Host web-2: connection refused"),
            HostDeploy("web-3", SWITCHED, before="1.0.0", after="2.0.0"),
        )
    }

    run = release_run(DEMO, states, reports=reports)

    assert run.deploys == {"web-1": "success", "web-2": "failed", "web-3": "success"}
    assert run.failed == "wave_2.deploy (web-2)"
    assert run.failed_hosts() == ["web-2"]
    assert run.attempted_hosts() == ["web-1", "web-2", "web-3"]
    assert run.why == {"web-2": "Host web-2: connection refused"}


def test_without_a_report_every_host_of_the_task_has_its_state():
    """A killed task leaves no report: each of its hosts may have been switched."""
    run = release_run(DEMO, {"wave_1.deploy_0": "success", "wave_2.deploy_0": "failed"})

    assert run.deploys == {"web-1": "success", "web-2": "failed", "web-3": "failed"}
    assert run.failed == "wave_2.deploy (web-2, web-3)"
    assert run.why == {}


def test_a_host_not_switched_after_a_wave_mate_failed_counts_as_never_attempted():
    reports = {
        "wave_2.deploy_0": report(
            HostDeploy("web-2", HOST_FAILED, why="not healthy on 2.0.0 after 30s"),
            HostDeploy("web-3", NOT_SWITCHED, why="the deploy of web-2 failed in this run"),
        )
    }

    run = release_run(DEMO, {"wave_1.deploy_0": "success", "wave_2.deploy_0": "failed"}, reports=reports)

    assert run.deploys["web-3"] == "skipped"
    assert run.attempted_hosts() == ["web-1", "web-2"]


def test_batches_of_a_wave_are_separate_tasks(tmp_path):
    environment = DEMO.model_copy(update={"rollout": DEMO.rollout.model_copy(update={"hosts_per_task": 1})})
    states = {"wave_1.deploy_0": "success", "wave_2.deploy_0": "success", "wave_2.deploy_1": "failed"}

    run = release_run(environment, states)

    assert run.deploys == {"web-1": "success", "web-2": "success", "web-3": "failed"}
    assert run.failed == "wave_2.deploy (web-3)"


def test_the_outcome_says_why_each_failed_host_failed():
    reports = {
        "wave_1.deploy_0": report(HostDeploy("web-1", HOST_FAILED, why="not healthy on 2.1.0 after 30s"))
    }
    run = release_run(DEMO, {"wave_1.deploy_0": "failed"}, reports=reports)

    outcome = release_outcome(run, planned=True, dry_run=False, rollback=None, backup="pre-1")

    assert outcome.detail == (
        "failed at wave_1.deploy (web-1). No host was switched. web-1: not healthy on 2.1.0 after 30s. "
        "Database not rolled back; pre-release backup: pre-1."
    )


def test_the_deploy_table_shows_each_hosts_before_after_result_and_why():
    table = deploy_table(
        [
            HostDeploy("web-2", SWITCHED, before="1.0.0", after="2.0.0", seconds=1.24),
            HostDeploy("web-3", ALREADY_THERE, before="2.0.0", after="2.0.0", seconds=0.3),
            HostDeploy("web-10", HOST_FAILED, before=None, seconds=3.0, why="connection refused"),
        ]
    )

    assert table.splitlines() == [
        "host    before  after  result         seconds  why",
        "web-2   1.0.0   2.0.0  switched       1.2",
        "web-3   2.0.0   2.0.0  already there  0.3",
        "web-10  -       -      failed         3.0      connection refused",
    ]


@pytest.mark.parametrize(
    ("hosts_per_task", "expected"),
    [(None, [["web-2", "web-3"]]), (1, [["web-2"], ["web-3"]]), (5, [["web-2", "web-3"]])],
)
def test_a_wave_is_one_batch_unless_hosts_per_task_says_otherwise(hosts_per_task, expected):
    assert DEMO.waves[1].batches(hosts_per_task) == expected


def test_batches_of_a_wave_run_side_by_side_up_to_max_parallel_per_wave_hosts():
    rollout = DEMO.rollout.model_copy(update={"max_parallel_per_wave": 16, "hosts_per_task": 4})

    assert rollout.deploy_tasks_at_once == 4
    assert DEMO.rollout.model_copy(update={"hosts_per_task": None}).deploy_tasks_at_once == 16
    assert rollout.model_copy(update={"hosts_per_task": 32}).deploy_tasks_at_once == 1
