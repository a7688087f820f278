"""Fault injection around the approval and the artifact: what reaches production without an
approver's answer, from another approver than the one listed, or in other bits than approved.

Each scenario drives a real ``release_<env>`` run with ``dag.test()`` on the sandbox hosts and
checks what every host serves, what the database holds, the audit row and the message a user
reads.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException

from airlock.hooks.backup_store import BackupStore
from airlock.tasks import release as release_steps
from airlock.tasks.environment import require_host_ready
from airlock.tasks.migrate import check_migrations
from include.demo_app.build import artifact_files, build_artifact, tarball_bytes
from tests.integration import releases
from tests.integration.releases import NEW, OLD, on_every_host, served_versions
from tests.support import load_dag, run_dag

EVERY_HOST_ON_OLD = dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
REPUBLISHED = "2.5.0"


@pytest.fixture
def release(environment, sandbox):
    return load_dag(f"release_{environment.name}")


def audit_row(ops_url: str, run_id: str) -> tuple:
    [row] = releases.audit_rows(
        ops_url, run_id, "result", "detail", "approved_by", "approved_by_name", "triggered_by"
    )
    return row


def migration_history(postgres_url: str) -> list[str]:
    import psycopg

    with psycopg.connect(postgres_url) as connection:
        if connection.execute("SELECT to_regclass('public.airlock_schema_history')").fetchone() == (None,):
            return []
        rows = connection.execute("SELECT version FROM public.airlock_schema_history").fetchall()
    return sorted(version for (version,) in rows)


def task_errors(capfd) -> str:
    """What the run's tasks raised, as their logs show it (``dag.test()`` logs to the console)."""
    out, err = capfd.readouterr()
    return out + err


# -- `approve` marked success by hand ---------------------------------------------------------------


def mark_success_by_hand(dag_id: str, run_id: str, task_id: str) -> None:
    """What the grid's "Mark success" does to a waiting approval: the state, and no answer.

    ``dag.test()`` writes the task process's own state back after the park, which can park a task
    marked a moment earlier again (the scheduler never does that); so the mark is repeated until
    a task of the run starts after it.
    """
    from airflow.models import TaskInstance
    from airflow.utils import timezone
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import func, select, update

    this_run = (TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
    marked_at = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with create_session() as session:
            marked = session.execute(
                update(TaskInstance)
                .where(
                    *this_run,
                    TaskInstance.task_id == task_id,
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
                )
                .values(state=TaskInstanceState.SUCCESS)
            ).rowcount
            if marked:
                marked_at = marked_at or timezone.utcnow()
            elif marked_at is not None:
                started_since = session.scalar(
                    select(func.count())
                    .select_from(TaskInstance)
                    .where(*this_run, TaskInstance.start_date > marked_at)
                )
                if started_since:
                    return
        time.sleep(0.05)
    raise AssertionError(f"{task_id} of {run_id} never parked, or nothing ran after it was marked")


def test_an_approval_marked_success_by_hand_changes_nothing_and_says_to_trigger_a_new_release(
    release, hosts_on_old, postgres_url, capfd, ops_url
):
    environment = hosts_on_old
    migrations_before = migration_history(postgres_url)

    run_id, states, answered = run_dag(release, {"version": NEW}, answer=mark_success_by_hand)

    assert answered.get("ok") is True, answered
    assert states["approve"] == "success"
    assert states["backup"] == "failed"
    assert not [task for task, state in states.items() if task.startswith("wave_") and state == "success"]
    assert served_versions(environment) == EVERY_HOST_ON_OLD
    assert migration_history(postgres_url) == migrations_before
    assert not [b for b in BackupStore.of(environment).backups() if b.run_id == run_id]
    error = task_errors(capfd)
    assert "backup refused: this run has no recorded approval" in error
    assert "marked success by hand" in error
    assert "Trigger a new release" in error
    result, _detail, approved_by, _name, _who = audit_row(ops_url, run_id)
    assert (result, approved_by) == ("failed", None)


# -- an approver whose id is not their name (FAB: numeric ids) --------------------------------------


class FabUser:
    """A user of an auth manager whose ids are not names, as FAB's (``ab_user.id``)."""

    def __new__(cls, user_id: str, name: str):
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

        class _User(SimpleAuthManagerUser):
            def get_id(self) -> str:
                return user_id

        return _User(username=name, role="admin")


def respond_as(user, option: str = "Approve"):
    """An ``answer`` for ``run_dag``: the REST API's PATCH .../hitlDetails, as ``user``."""

    def respond(dag_id: str, run_id: str, task_id: str) -> None:
        from airflow.api_fastapi.app import create_auth_manager
        from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
        from airflow.api_fastapi.core_api.routes.public.hitl import update_hitl_detail
        from airflow.utils.session import create_session

        create_auth_manager()
        with create_session() as session:
            update_hitl_detail(
                dag_id=dag_id,
                dag_run_id=run_id,
                task_id=task_id,
                update_hitl_detail_payload=UpdateHITLDetailPayload(chosen_options=[option], params_input={}),
                user=user,
                session=session,
                map_index=-1,
            )

    return respond


@pytest.fixture
def approvers_by_id(environment):
    """The sandbox environment with approvers listed by FAB-style user id, no self-approval."""
    path = Path(os.environ["AIRLOCK_ENVIRONMENTS_DIR"]) / f"{environment.name}.yaml"
    original = path.read_text()
    document = yaml.safe_load(original)
    document["approval"] = {
        "required": True,
        "approvers": ["7"],
        "allow_self_approval": False,
        "timeout": "1h",
    }

    path.write_text(yaml.safe_dump(document, sort_keys=False))
    try:
        yield load_dag(f"release_{environment.name}")
    finally:
        path.write_text(original)


def test_an_approver_listed_by_id_whose_name_differs_approves_and_the_audit_keeps_both(
    approvers_by_id, hosts_on_old, postgres_url, ops_url
):
    environment = hosts_on_old

    run_id, states, answered = run_dag(
        approvers_by_id, {"version": NEW}, answer=respond_as(FabUser("7", "alice"))
    )

    assert answered.get("ok") is True, answered
    assert states["conclude"] == "success", states
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], NEW)
    result, _detail, approved_by, approved_by_name, _who = audit_row(ops_url, run_id)
    assert (result, approved_by, approved_by_name) == ("succeeded", "7", "alice")


def test_the_triggering_user_cannot_approve_through_an_id_listed_as_approver(
    approvers_by_id, hosts_on_old, postgres_url, slack_messages, capfd, ops_url
):
    environment = hosts_on_old
    # dag.test() records its runs as triggered by "dag_test": here that user's FAB id is 7.

    run_id, states, answered = run_dag(
        approvers_by_id, {"version": NEW}, answer=respond_as(FabUser("7", "dag_test"))
    )

    assert answered.get("ok") is True, answered
    assert states["approve"] == "failed"
    assert served_versions(environment) == EVERY_HOST_ON_OLD
    assert not [b for b in BackupStore.of(environment).backups() if b.run_id == run_id]
    error = task_errors(capfd)
    assert "dag_test (id 7) triggered this run and may not approve it" in error
    result, *_ = audit_row(ops_url, run_id)
    assert result == "rejected"


# -- an artifact republished during the approval ----------------------------------------------------


def republish(environment, version: str) -> str:
    """Publish other bits under ``version`` (a rebuilt artifact), with their checksum; the new SHA-256."""
    directory = Path(urlsplit(environment.deploy.artifact_url).path).parent
    files = artifact_files(version)
    files["REBUILT"] = b"rebuilt after the plan was approved\n"
    tarball = directory / f"demo-app-{version}.tar.gz"
    tarball.write_bytes(tarball_bytes(files))
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    Path(f"{tarball}.sha256").write_text(f"{digest}  {tarball.name}\n")
    return digest


@pytest.fixture
def republishable(environment, artifacts):
    """A version of its own, published once; the test republishes it."""
    tarball = build_artifact(REPUBLISHED, artifacts)
    return hashlib.sha256(tarball.read_bytes()).hexdigest()


def test_an_artifact_republished_during_the_approval_reaches_no_host_and_no_database(
    release, hosts_on_old, republishable, postgres_url, capfd
):
    environment = hosts_on_old
    migrations_before = migration_history(postgres_url)
    published: dict[str, str] = {}

    def republish_then_approve(dag_id: str, run_id: str, task_id: str) -> None:
        published["new"] = republish(environment, REPUBLISHED)
        respond_as(FabUser("admin", "admin"))(dag_id, run_id, task_id)

    _, states, answered = run_dag(release, {"version": REPUBLISHED}, answer=republish_then_approve)

    assert answered.get("ok") is True, answered
    assert states["migrate"] == "failed"
    assert not [task for task, state in states.items() if task.startswith("wave_") and state == "success"]
    assert served_versions(environment) == EVERY_HOST_ON_OLD
    assert migration_history(postgres_url) == migrations_before
    error = task_errors(capfd)
    assert f"published with SHA-256 {published['new']}, not the expected {republishable}" in error
    assert "No migration was applied" in error


def test_a_deploy_refuses_an_artifact_republished_after_the_plan_before_touching_the_host(
    environment, hosts_on_old, republishable, verified_backup
):
    request = {"version": REPUBLISHED, "dry_run": False, "reason": ""}
    artifact = release_steps.check_artifact(environment, REPUBLISHED)
    planned = release_steps.plan_release(
        environment,
        request=request,
        artifact=artifact,
        host_states=[require_host_ready(environment, h.name) for h in environment.hosts],
        database=release_steps.require_database_reachable(environment),
        migrations=check_migrations(environment, REPUBLISHED),
        backup=release_steps.require_recent_backup(environment),
        triggered_by="alice",
    )
    approved = release_steps.ReleasePlan.from_dict(planned["plan"])
    rebuilt = republish(environment, REPUBLISHED)
    release_steps.shared.environment_lock(environment).acquire(
        run_id="manual__pinned", purpose="test", triggered_by="alice"
    )

    with pytest.raises(AirflowFailException) as refused:
        release_steps.deploy_host(
            environment,
            version=REPUBLISHED,
            host_name="web-1",
            wave_hosts=["web-1"],
            run_id="manual__pinned",
            approved=approved,
        )

    assert f"published with SHA-256 {rebuilt}, not the expected {republishable}" in str(refused.value)
    assert "web-1 was not touched" in str(refused.value)
    assert served_versions(environment) == EVERY_HOST_ON_OLD
    with release_steps.host_session(environment, environment.hosts[0]) as layout:
        assert REPUBLISHED not in layout.installed_versions()


def test_ci_pinning_another_artifact_stops_the_release_at_check_artifact(
    release, hosts_on_old, artifacts, capfd
):
    environment = hosts_on_old
    other = "0" * 64

    _, states, _ = run_dag(release, {"version": NEW, "artifact_sha256": other})

    assert states["check_artifact"] == "failed"
    assert states["plan"] == "upstream_failed"
    assert served_versions(environment) == EVERY_HOST_ON_OLD
    error = task_errors(capfd)
    published = Path(f"{artifacts}/demo-app-{NEW}.tar.gz.sha256").read_text().split()[0]
    assert f"published with SHA-256 {published}, not the expected {other}" in error
    assert "the trigger pinned artifact_sha256" in error


# -- clearing an old run's deploy -------------------------------------------------------------------


def clear_task(dag_id: str, run_id: str, task_id: str) -> int:
    """Clear a task of a finished run as the grid's Clear does; the run's clear number after it."""
    from airflow.models import DagRun, TaskInstance
    from airflow.models.taskinstance import clear_task_instances
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id
            )
        ).all()
        clear_task_instances(tis, session)
        session.flush()
        return session.scalar(
            select(DagRun.clear_number).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)
        )


def run_xcom(dag_id: str, run_id: str, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        value = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == dag_id,
                XComModel.run_id == run_id,
                XComModel.task_id == task_id,
                XComModel.key == "return_value",
            )
        )
    return XComModel.deserialize_value(type("Row", (), {"value": value})())


def test_a_wave_whose_approved_artifact_was_republished_reports_each_host_untouched(
    environment, hosts_on_old, republishable, verified_backup, caplog
):
    """The wave's deploy fetches the artifact once for all its hosts; when that is refused,
    every host still gets its line (the report, the audit row and Slack name the artifact)."""
    request = {"version": REPUBLISHED, "dry_run": False, "reason": ""}
    planned = release_steps.plan_release(
        environment,
        request=request,
        artifact=release_steps.check_artifact(environment, REPUBLISHED),
        host_states=[require_host_ready(environment, h.name) for h in environment.hosts],
        database=release_steps.require_database_reachable(environment),
        migrations=check_migrations(environment, REPUBLISHED),
        backup=release_steps.require_recent_backup(environment),
        triggered_by="alice",
    )
    approved = release_steps.ReleasePlan.from_dict(planned["plan"])
    rebuilt = republish(environment, REPUBLISHED)
    release_steps.shared.environment_lock(environment).acquire(
        run_id="manual__wave_pinned", purpose="test", triggered_by="alice"
    )
    names = [host.name for host in environment.hosts]

    lines = release_steps.deploy_hosts(
        environment,
        version=REPUBLISHED,
        hosts=names,
        wave_hosts=names,
        run_id="manual__wave_pinned",
        approved=approved,
    )

    assert [(line.host, line.result, line.retry) for line in lines] == [
        (name, release_steps.HOST_FAILED, False) for name in names
    ]
    for line in lines:
        assert f"published with SHA-256 {rebuilt}, not the expected {republishable}" in line.why
    assert "No host was touched; trigger a new release" in caplog.text  # the whole refusal, in the log
    assert served_versions(environment) == EVERY_HOST_ON_OLD
    for host in environment.hosts:
        with release_steps.host_session(environment, host) as layout:
            assert REPUBLISHED not in layout.installed_versions()


def test_clearing_an_old_runs_deploy_is_refused_although_its_approval_is_still_there(release, hosts_on_old):
    environment = hosts_on_old
    run_id, states, _ = run_dag(release, {"version": NEW}, answer="Approve")
    assert states["conclude"] == "success", states
    on_every_host(environment, OLD)  # a month later the hosts are on the release before again
    planned = run_xcom(release.dag_id, run_id, "plan")
    approval = run_xcom(release.dag_id, run_id, "approve")
    evidence = {"planned": planned, "approval": approval, "run_id": run_id, "triggered_by": "dag_test"}
    # The approval as recorded covers the run as it was (the same check lets a deploy of the run go).
    release_steps.require_approval(environment, step="deploy of web-1", clear_number=0, **evidence)

    clear_number = clear_task(release.dag_id, run_id, "wave_1.deploy")

    with pytest.raises(AirflowFailException) as refused:
        release_steps.require_approval(
            environment, step="deploy of web-1", clear_number=clear_number, **evidence
        )
    assert clear_number == 1
    assert "the approval was given before this run's tasks were cleared" in str(refused.value)
    assert "Trigger a new release" in str(refused.value)
    assert served_versions(environment) == EVERY_HOST_ON_OLD
