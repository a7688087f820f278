"""Helpers shared by the tests: environment files shaped like the demo's."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from airlock.config import Environment, load_environment

PROJECT = Path(__file__).resolve().parents[1]
DEMO_ENVIRONMENT = PROJECT / "include" / "environments" / "demo.yaml"


def demo_document() -> dict[str, Any]:
    """The demo environment file as written (``${...}`` references not yet expanded)."""
    return yaml.safe_load(DEMO_ENVIRONMENT.read_text())


def write_environment(path: Path, document: dict[str, Any]) -> Environment:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_environment(path)


def write_sandbox_environment(
    path: Path, *, base: Path, ssh_ports: list[int], app_ports: list[int], **overrides: Any
) -> Environment:
    """The demo environment moved to the given ports and to directories under ``base``."""
    document = demo_document()
    document["hosts"] = [
        {
            "name": f"web-{index}",
            "address": "127.0.0.1",
            "ssh_port": ssh_port,
            "app_url": f"http://127.0.0.1:{app_port}",
            "root": str(base / "hosts" / f"web-{index}" / "srv" / "demo-app"),
        }
        for index, (ssh_port, app_port) in enumerate(zip(ssh_ports, app_ports, strict=True), start=1)
    ]
    document["ssh"]["known_hosts"] = str(base / "known_hosts")
    document["deploy"]["artifact_url"] = f"file://{base}/artifacts/demo-app-{{version}}.tar.gz"
    document["backup"]["destination"] = f"file://{base}/backups"
    document["deploy"]["health_timeout"] = "10s"
    # Tests of config_update_<env> write the set they ship here (tests/integration/test_config_update.py).
    document["config"] = {**document["config"], "source": str(base / "config-source")}
    document.update(overrides)
    return write_environment(path, document)


def environment_dags(
    tmp_path: Path, monkeypatch, name: str, dag_files: tuple[str, ...], **change: Any
) -> dict:
    """The demo environment with ``change``, written as ``<tmp_path>/environments/<name>.yaml``,
    and the DAGs each of ``dag_files`` (``"release"`` for ``dags/release.py``) builds for it,
    by file: ``{"release": <DAG release_<name>>, ...}``."""
    from airflow.dag_processing.dagbag import DagBag

    document = {**demo_document(), **change}
    document["ssh"]["known_hosts"] = str(tmp_path / "known_hosts")
    write_environment(tmp_path / "environments" / f"{name}.yaml", document)
    monkeypatch.setenv("AIRLOCK_ENVIRONMENTS_DIR", str(tmp_path / "environments"))
    dags = {}
    for file in dag_files:
        bag = DagBag(dag_folder=PROJECT / "dags" / f"{file}.py")
        assert not bag.import_errors, bag.import_errors
        dags[file] = bag.dags[f"{file}_{name}"]
    return dags


def load_dag(dag_id: str):
    """Parse the DAG's file as the dag-processor would and return the DAG.

    ``release_<env>`` lives in ``dags/release.py``, ``airflow_housekeeping`` in
    ``dags/airflow_housekeeping.py``; the whole folder is parsed only when neither file exists.
    The integrity tests in ``tests/dags`` parse the whole folder.
    """
    from airflow.dag_processing.dagbag import DagBag

    dags = PROJECT / "dags"
    files = [dags / f"{dag_id}.py", dags / f"{dag_id.rsplit('_', 1)[0]}.py"]
    bag = DagBag(dag_folder=next((f for f in files if f.exists()), dags))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def task_states(dag_id: str, run_id: str) -> dict[str, str]:
    """``task_id`` (``task_id[map_index]`` for mapped ones) -> state, from the metadata DB."""
    from airflow.models import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(TaskInstance.task_id, TaskInstance.map_index, TaskInstance.state).where(
                TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id
            )
        ).all()
    return {(task if index < 0 else f"{task}[{index}]"): str(state) for task, index, state in rows}


def pending_approval(dag_id: str):
    """The unanswered human-in-the-loop request of ``dag_id``, as soon as it is listed, if any.

    Listed means what ``GET .../hitlDetails?response_received=false`` shows: the request exists,
    whether or not the task has parked yet. An answer at that moment must count. Requests of
    tasks that ended unanswered (an approval refused, or marked success by hand) are not pending.
    """
    from airflow.models import TaskInstance
    from airflow.models.hitl import HITLDetail
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    waiting = (TaskInstanceState.RUNNING, TaskInstanceState.AWAITING_INPUT)
    with create_session() as session:
        return session.execute(
            select(TaskInstance.run_id, TaskInstance.task_id, TaskInstance.map_index)
            .join(HITLDetail, HITLDetail.ti_id == TaskInstance.id)
            .where(
                TaskInstance.dag_id == dag_id,
                TaskInstance.state.in_(waiting),
                HITLDetail.responded_at.is_(None),
            )
        ).first()


def respond_to_approval(dag_id: str, run_id: str, task_id: str, option: str, user: str) -> None:
    """Answer a human-in-the-loop request exactly as the REST API's PATCH .../hitlDetails does."""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
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
            user=SimpleAuthManagerUser(username=user, role="user"),
            session=session,
            map_index=-1,
        )


def run_dag(dag, conf: dict, *, answer=None, as_user: str = "admin", timeout: float = 300):
    """``dag.test()`` with ``conf``; answer the approval request (``Approve``/``Reject``) if asked.

    ``answer`` may also be a callable ``(dag_id, run_id, task_id)`` that answers some other way.

    Returns the finished run's id and its task states.
    """
    import threading
    import time

    answered: dict[str, object] = {}

    def approver() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not stop.is_set():
            pending = pending_approval(dag.dag_id)
            if pending is not None:
                try:
                    if callable(answer):
                        answered["result"] = answer(dag.dag_id, pending[0], pending[1])
                    else:
                        respond_to_approval(dag.dag_id, pending[0], pending[1], answer, as_user)
                    answered["ok"] = True
                except Exception as error:  # surfaced by the test through `answered`
                    answered["error"] = error
                    fail_when_parked(dag.dag_id, pending[0], pending[1], deadline)
                    return
                play_the_scheduler_guard(deadline)
                return
            time.sleep(0.05)

    def play_the_scheduler_guard(deadline: float) -> None:
        """What the scheduler's Airlock thread does every second, for as long as the run goes on.

        ``dag.test()`` has no scheduler. It also records a task's state from the task process
        after the park, so an answer given before the park (which Airflow resumes at once) is
        parked again by ``dag.test()`` itself; the guard resumes it, as it would in production.
        """
        from airflow.utils.session import create_session

        from airlock.listeners.stranded_approvals import resume_stranded_approvals

        while time.monotonic() < deadline and not stop.is_set():
            with create_session() as session:
                answered.setdefault("resumed", []).extend(resume_stranded_approvals(session))
            time.sleep(0.1)

    def fail_when_parked(dag_id: str, run_id: str, task_id: str, deadline: float) -> None:
        """Unblock ``dag.test()`` after a refused answer, which leaves the request pending forever."""
        from airflow.models import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import update

        this_task = (
            TaskInstance.dag_id == dag_id,
            TaskInstance.run_id == run_id,
            TaskInstance.task_id == task_id,
            TaskInstance.state == TaskInstanceState.AWAITING_INPUT,
        )
        # Until the run ends: dag.test() itself may park the task again after its process ends.
        while time.monotonic() < deadline and not stop.is_set():
            with create_session() as session:
                session.execute(update(TaskInstance).where(*this_task).values(state=TaskInstanceState.FAILED))
            time.sleep(0.05)

    # Import in this thread what either thread will need: two threads importing Airflow's
    # models at once deadlock on the import lock and SQLAlchemy's mapper configuration.
    import airflow.api.common.trigger_dag
    import airflow.api_fastapi.core_api.routes.public.hitl
    import airflow.models.dagbag  # noqa: F401
    from airflow.models import import_all_models

    import_all_models()
    pending_approval(dag.dag_id)

    stop = threading.Event()
    thread = threading.Thread(target=approver, daemon=True)
    if answer is not None:
        thread.start()
    try:
        dag_run = dag.test(run_conf=conf)
    finally:
        stop.set()
    if answer is not None:
        thread.join(timeout=5)
    return dag_run.run_id, task_states(dag.dag_id, dag_run.run_id), answered


def wait_until(condition, *, limit: float = 30.0) -> None:
    """Wait for ``condition()`` (a state change, not a duration), failing after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.02)


def serve_memory_urls(monkeypatch, filesystem) -> None:
    """``memory://`` URLs reach ``filesystem`` (and no store attached by an earlier test)."""
    from airflow.sdk.io import fs, store

    monkeypatch.setitem(fs._register_filesystems(), "memory", lambda conn_id, options: filesystem)
    monkeypatch.delitem(store._STORE_CACHE, "memory", raising=False)
