"""Maintenance windows and freezes as the DAGs are built: which tasks exist and where they sit."""

from __future__ import annotations

from types import SimpleNamespace

from airlock.config.environment import RecurringWindow
from airlock.tasks.environment import TaskIds, in_maintenance_window
from tests.support import environment_dags

WINDOW = TaskIds.WINDOW


def dags(tmp_path, monkeypatch, **change):
    files = ("log_cleanup", "db_maintenance", "release", "migrate")
    return environment_dags(tmp_path, monkeypatch, "windowed", files, **change)


def test_with_maintenance_windows_every_maintenance_task_waits_on_the_window_check(tmp_path, monkeypatch):
    found = dags(tmp_path, monkeypatch, maintenance_windows=[{"cron": "0 2 * * *", "duration": "3h"}])
    for name in ("log_cleanup", "db_maintenance"):
        dag = found[name]
        check = dag.get_task(WINDOW)
        assert check.ignore_downstream_trigger_rules  # skips the ALL_DONE report too
        assert {task.task_id for task in check.get_flat_relatives(upstream=False)} == set(dag.task_ids) - {
            WINDOW
        }


def test_without_maintenance_windows_there_is_no_window_check(tmp_path, monkeypatch):
    found = dags(tmp_path, monkeypatch)
    assert not any(dag.has_task(WINDOW) for dag in found.values())


def test_release_and_migrate_of_an_environment_without_approvals_keep_a_gate_for_freeze_overrides(
    tmp_path, monkeypatch
):
    freezes = [{"name": "nightly", "reason": "batch jobs", "cron": "0 1 * * *", "duration": "2h"}]
    no_approval = {"required": False, "approvers": [], "timeout": "30m"}
    overridable = dags(tmp_path, monkeypatch, approval=no_approval, freezes=freezes, freeze_approvers=["cto"])
    assert overridable["release"].has_task("approve")
    assert overridable["migrate"].has_task("approve")
    hard = dags(tmp_path, monkeypatch, approval=no_approval, freezes=freezes)
    assert not hard["release"].has_task("approve")  # no freeze approvers: no override, no gate


ALWAYS = RecurringWindow(cron="* * * * *", duration="1h")
NEW_YEAR_SECOND = RecurringWindow(cron="0 0 1 1 *", duration="1s")


def test_only_scheduled_runs_are_held_to_the_maintenance_windows():
    closed = SimpleNamespace(name="windowed", maintenance_windows=[NEW_YEAR_SECOND])
    assert not in_maintenance_window(closed, "scheduled")
    assert in_maintenance_window(closed, "manual")
    assert in_maintenance_window(SimpleNamespace(name="windowed", maintenance_windows=[ALWAYS]), "scheduled")
    assert in_maintenance_window(SimpleNamespace(name="windowed", maintenance_windows=[]), "scheduled")
