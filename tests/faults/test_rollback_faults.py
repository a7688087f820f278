"""Faults during a release's waves and its rollback, on real sshd hosts, PostgreSQL and Redis.

Each scenario injects a real fault at a chosen point of a real ``release_sandbox`` run (an
``sshd`` killed or stopped with SIGSTOP, a host's app stopped, a migration that fails) and then
checks what an operator would: what every host serves, the lock, the needs-attention mark, the
audit row and the Slack text.

The point of injection is exact: the approval answer (after the plan, before any host changes)
or right after a wave's verification (wrapping the step the DAG calls, in the ``dag.test()``
process). Retries keep their counts but not their delays (``retry_delay`` 0), so a scenario
takes seconds; the hang scenario runs its deploys without retries, since what it proves is that
one try is bounded by ``ssh.connect_timeout``.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from airlock.hooks.hosts import host_hook, host_session
from airlock.hooks.lock import AttentionMark
from airlock.tasks import release as release_steps
from airlock.tasks.environment import environment_lock
from airlock.tasks.migrate import artifact_migrations, migration_runner
from airlock_dev.hosts import SSHD, wait_for_port
from include.demo_app.build import artifact_files, tarball_bytes
from tests.integration import releases
from tests.integration.releases import NEW, OLD, served_versions
from tests.support import load_dag, run_dag

AUDIT = ("version", "result", "detail")
MIGRATION_FAULT = "2.5.0-migration-fault"


def sandbox_host(sandbox, name: str):
    return next(host for host in sandbox.hosts if host.host.name == name)


def start_sshd(host) -> None:
    """Start one sandbox host's sshd again, exactly as the sandbox started it."""
    with (host.home / "sshd.log").open("ab") as log:
        host.process = subprocess.Popen(
            [str(SSHD), "-f", str(host.home / "sshd_config"), "-D", "-e"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    assert wait_for_port(host.host.address, host.host.ssh_port), f"sshd of {host.host.name} did not restart"


@pytest.fixture
def sshd(sandbox) -> Iterator[dict]:
    """``kill(name)`` / ``stop(name)`` (SIGSTOP) one host's sshd; every host's is back afterwards."""
    killed, stopped = [], []

    def kill(name: str) -> None:
        host = sandbox_host(sandbox, name)
        host.process.kill()
        host.process.wait()
        killed.append(host)

    def stop(name: str) -> None:
        host = sandbox_host(sandbox, name)
        os.kill(host.process.pid, signal.SIGSTOP)
        stopped.append(host)

    def restart(name: str) -> None:
        host = sandbox_host(sandbox, name)
        killed.remove(host)
        start_sshd(host)

    try:
        yield {"kill": kill, "stop": stop, "restart": restart}
    finally:
        for host in stopped:
            os.kill(host.process.pid, signal.SIGCONT)
        for host in killed:
            start_sshd(host)


@pytest.fixture
def attention(environment, redis_client) -> Iterator[AttentionMark]:
    mark = AttentionMark(environment=environment.name, redis_conn_id=environment.redis_conn_id)
    mark.clear()
    yield mark
    mark.clear()


def release_dag(environment, *, retries: int | None = None):
    """``release_sandbox`` freshly parsed, retries without delay (``retries`` to override their count)."""
    dag = load_dag(f"release_{environment.name}")
    for task in dag.tasks:
        task.retry_delay = timedelta(0)
        task.retry_exponential_backoff = 0
        if retries is not None and task.task_id.endswith(".deploy"):
            task.retries = retries
    return dag


def approve_after(fault):
    """An approval answer that first injects ``fault`` (after the plan, before any change)."""

    def answer(dag_id: str, run_id: str, task_id: str) -> None:
        fault()
        from tests.support import respond_to_approval

        respond_to_approval(dag_id, run_id, task_id, "Approve", "admin")

    return answer


def after_verify_of(monkeypatch, wave_hosts: list[str], fault) -> None:
    """Inject ``fault`` right after the verification of the wave of ``wave_hosts`` passed."""
    verify = release_steps.verify

    def verify_then_fault(environment, **kwargs):
        result = verify(environment, **kwargs)
        if kwargs["wave_hosts"] == wave_hosts:
            fault()
        return result

    monkeypatch.setattr(release_steps, "verify", verify_then_fault)


def lock_is_free(redis_client, environment) -> bool:
    return redis_client.get(f"airlock:lock:{environment.name}") is None


def test_a_host_unreachable_before_its_switch_is_left_alone_and_the_switched_ones_go_back(
    hosts_on_old, sshd, attention, slack_messages, redis_client, postgres_url, host_load, ops_url
):
    environment = hosts_on_old
    release = release_dag(environment)

    kill_web_2 = approve_after(lambda: sshd["kill"]("web-2"))

    traffic = host_load(environment)
    run_id, states, _ = run_dag(release, {"version": NEW}, answer=kill_web_2)
    traffic.stop()

    assert states["wave_2.deploy[0]"] == "failed"  # web-2: its sshd is gone
    assert states["rollback"] == "success"
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    [(version, result, detail)] = releases.audit_rows(ops_url, run_id, *AUDIT)
    assert (version, result) == (NEW, "rolled_back")
    assert "web-1 (back on 1.0.0)" in detail
    assert "web-2 (never switched by this run; left alone)" in detail
    assert any(f"release {NEW} {detail}" in text for text in slack_messages.texts())
    assert lock_is_free(redis_client, environment)
    assert attention.get() is None
    # web-1 went to 2.0.0 and back by reloads, web-2's app never noticed its sshd was gone.
    traffic.assert_every_request_answered()
    assert traffic.versions_served("web-1") == {OLD, NEW}


def test_a_deploy_that_starts_after_another_host_failed_switches_nothing(environment, hosts_on_old):
    environment_lock(environment).acquire(run_id="manual__fail-fast", purpose="test", triggered_by="me")
    recorded: list[str] = []
    fail_fast = release_steps.FailFast(
        failed_hosts=lambda: ["web-2"], record_switch=lambda: recorded.append("web-3")
    )

    with pytest.raises(AirflowSkipException, match="the deploy of web-2 failed in this run"):
        release_steps.deploy_host(
            environment,
            version=NEW,
            host_name="web-3",
            wave_hosts=["web-2", "web-3"],
            run_id="manual__fail-fast",
            fail_fast=fail_fast,
        )

    assert served_versions(environment)["web-3"] == OLD
    assert recorded == []


def test_a_deploy_whose_wave_mate_fails_during_its_install_stops_before_the_switch(environment, hosts_on_old):
    environment_lock(environment).acquire(run_id="manual__fail-fast-2", purpose="test", triggered_by="me")
    answers = iter([[], ["web-2"]])  # at the start nobody failed; by the switch web-2 had
    fail_fast = release_steps.FailFast(failed_hosts=lambda: next(answers), record_switch=lambda: None)

    with pytest.raises(AirflowSkipException, match="fail-fast"):
        release_steps.deploy_host(
            environment,
            version=NEW,
            host_name="web-3",
            wave_hosts=["web-2", "web-3"],
            run_id="manual__fail-fast-2",
            fail_fast=fail_fast,
        )

    with host_session(environment, environment.hosts[2]) as layout:
        assert layout.current_version() == OLD
        assert layout.installed_sha256(NEW) is not None  # installed, never switched to
    assert served_versions(environment)["web-3"] == OLD


def test_a_switched_host_lost_before_a_later_wave_fails_makes_the_rollback_incomplete_and_blocks_releases(
    hosts_on_old, sshd, attention, slack_messages, redis_client, postgres_url, monkeypatch, host_load, ops_url
):
    environment = hosts_on_old

    def lose_web_1_and_web_2() -> None:
        sshd["kill"]("web-1")  # switched in wave 1: the rollback cannot reach it
        sshd["kill"]("web-2")  # wave 2 fails on it

    after_verify_of(monkeypatch, ["web-1"], lose_web_1_and_web_2)
    traffic = host_load(environment)
    run_id, states, _ = run_dag(release_dag(environment), {"version": NEW}, answer="Approve")

    assert states["wave_1.verify"] == "success"
    assert states["wave_2.deploy[0]"] == "failed"
    assert states["rollback"] == "failed"
    assert states["conclude"] == "failed"
    served = served_versions(environment)
    assert (served["web-1"], served["web-2"], served["web-3"]) == (NEW, OLD, OLD)
    [(version, result, detail)] = releases.audit_rows(ops_url, run_id, *AUDIT)
    assert (version, result) == (NEW, "rollback_incomplete")
    assert f"Rollback INCOMPLETE: web-1 may still serve {NEW} (not put back on {OLD}" in detail
    assert "web-2 (never switched by this run; left alone)" in detail
    [alert] = [text for text in slack_messages.texts() if "needs attention" in text]
    assert f"release {NEW} {detail}" in alert
    assert f"trigger rollback_{environment.name} with to_version={OLD}" in alert
    assert "No host was switched" not in " ".join(slack_messages.texts())
    assert lock_is_free(redis_client, environment)  # freed, but the mark blocks the next release
    assert attention.get().run_id == run_id

    # The next release is refused, saying how to resolve it.
    _, refused, _ = run_dag(release_dag(environment), {"version": NEW})
    assert refused["lock"] == "failed"
    assert refused["check_artifact"] == "upstream_failed"  # nothing else ran
    assert lock_is_free(redis_client, environment)  # the refusal freed it (a failed setup gets no teardown)
    refusal = [t for t in slack_messages.texts() if "task lock failed" in t][-1]
    assert f"Release refused: {environment.name} needs attention." in refusal
    assert f"trigger rollback_{environment.name} with to_version={OLD}" in refusal
    with pytest.raises(AirflowFailException, match=f"Why: since .*, set by run {re.escape(run_id)}"):
        release_steps.refuse_while_attention_needed(environment)

    # The operator brings web-1 back and runs rollback_<env> as told: every host on 1.0.0, mark gone.
    sshd["restart"]("web-1")
    sshd["restart"]("web-2")
    rollback = load_dag(f"rollback_{environment.name}")
    _, rolled_back, _ = run_dag(rollback, {"to_version": OLD, "reason": "finish it"}, answer="Approve")
    assert rolled_back["conclude"] == "success", rolled_back
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    assert attention.get() is None
    assert any("Cleared the needs-attention mark" in t for t in slack_messages.texts())
    # Losing sshd never stops an app: through the release, the refusal and the operator's
    # rollback, every request to every host was answered (web-1 by 2.0.0, then by 1.0.0 again).
    traffic.stop().assert_every_request_answered()
    assert traffic.versions_served("web-1") == {OLD, NEW}


def stop_app(environment, host) -> None:
    """The host's app dies after its switch (stopped by its own control script, a shell script)."""
    root = environment.root_of(host)
    stopped = subprocess.run(
        [f"{root}/current/bin/demo-app", "--root", root, "stop"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert stopped.returncode == 0, f"demo-app stop failed: {stopped.stdout} {stopped.stderr}"


def test_a_host_whose_app_breaks_after_the_switch_is_rolled_back_and_its_history_stays_true(
    hosts_on_old, attention, slack_messages, postgres_url, monkeypatch, host_load, ops_url
):
    environment = hosts_on_old
    web_1 = environment.hosts[0]
    stopped: list[datetime] = []
    monkeypatch.setattr(release_steps, "run_smoke_tests", _stop_then_smoke(environment, web_1, stopped))

    traffic = host_load(environment)
    run_id, states, _ = run_dag(release_dag(environment), {"version": NEW}, answer="Approve")
    traffic.stop()

    assert states["wave_1.deploy[0]"] == "success"
    assert states["wave_1.verify"] == "failed"
    assert states["wave_2.deploy[0]"] == "upstream_failed"
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    [(_, result, detail)] = releases.audit_rows(ops_url, run_id, *AUDIT)
    assert (result, "web-1 (back on 1.0.0)" in detail) == ("rolled_back", True)
    with host_session(environment, web_1) as layout:
        assert layout.previous_version() != NEW  # the broken build is never "previous"
        assert NEW not in layout.history()
    assert attention.get() is None
    # The scenario cannot allow zero failures: web-1's app is down from its stop until the
    # rollback starts it again. What holds instead: web-2 and web-3 (never switched) answered
    # every request, web-1 failed only after its stop, and answered again (on 1.0.0) at the end.
    assert traffic.failed("web-2") == traffic.failed("web-3") == []
    [stopped_at] = stopped
    assert traffic.failed("web-1"), "the app was stopped: some request to web-1 must have failed"
    assert all(failure.at >= stopped_at for failure in traffic.failed("web-1"))
    last_answer = traffic.answered("web-1")[-1]
    assert last_answer.at > traffic.failed("web-1")[-1].at
    assert last_answer.version == OLD


def _stop_then_smoke(environment, host, stopped: list[datetime]):
    smoke = release_steps.run_smoke_tests

    def stop_then_smoke(env, hosts):
        if [h.name for h in hosts] == [host.name] and not stopped:  # the first try only
            stopped.append(datetime.now(UTC))
            stop_app(environment, host)
        return smoke(env, hosts)

    return stop_then_smoke


def test_a_hung_host_is_bounded_by_the_ssh_timeouts_and_never_switched(
    hosts_on_old, sshd, attention, postgres_url, host_load, ops_url
):
    environment = hosts_on_old

    hang_web_2 = approve_after(lambda: sshd["stop"]("web-2"))

    traffic = host_load(environment)
    run_id, states, _ = run_dag(release_dag(environment, retries=0), {"version": NEW}, answer=hang_web_2)
    traffic.stop()

    assert states["wave_2.deploy[0]"] == "failed"
    assert states["conclude"] == "failed"
    # What bounds the wait for a host that accepts the connection and never speaks: the banner
    # and authentication timeouts are ssh.connect_timeout, not SSHHook's own 30 s defaults.
    hook = host_hook(environment, environment.hosts[1])
    connect_timeout = environment.ssh.connect_timeout.total_seconds()
    assert (hook.conn_timeout, hook.banner_timeout, hook.auth_timeout) == (connect_timeout,) * 3
    [(_, result, detail)] = releases.audit_rows(ops_url, run_id, *AUDIT)
    assert result == "rolled_back"
    assert "web-2 (never switched by this run; left alone)" in detail
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    assert attention.get() is None
    traffic.assert_every_request_answered()  # a hung sshd is not a hung app


@pytest.fixture
def migration_fault(environment, artifacts, postgres_url) -> Iterator[str]:
    """A version with three new migrations, the second failing; the database put back afterwards."""
    files = artifact_files(MIGRATION_FAULT)
    files["migrations/V5__add_fault_a.sql"] = b"CREATE TABLE fault_a (id int);\n"
    files["migrations/V6__add_fault_b.sql"] = (
        b"CREATE TABLE fault_b (id int);\nSELECT no_such_column FROM fault_a;\n"
    )
    files["migrations/V7__add_fault_c.sql"] = b"CREATE TABLE fault_c (id int);\n"
    directory = Path(urlsplit(environment.deploy.artifact_url).path).parent
    tarball = directory / f"demo-app-{MIGRATION_FAULT}.tar.gz"
    tarball.write_bytes(tarball_bytes(files))
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    Path(f"{tarball}.sha256").write_text(f"{digest}  {tarball.name}\n")
    # The demo's own V1 and V2 first, so that exactly three are pending.
    with tempfile.TemporaryDirectory() as workdir:
        shipped = artifact_migrations(environment, NEW, Path(workdir))
        migration_runner(environment).apply(shipped, "setup")
    yield MIGRATION_FAULT
    with psycopg.connect(postgres_url) as connection:
        connection.execute("DELETE FROM public.airlock_schema_history WHERE version IN ('5', '6', '7')")
        for table in ("fault_a", "fault_b", "fault_c"):
            connection.execute(f"DROP TABLE IF EXISTS {table}")


def test_a_migration_failing_in_the_second_of_three_files_reports_the_one_applied(
    hosts_on_old, migration_fault, slack_messages, postgres_url, host_load, ops_url
):
    environment = hosts_on_old

    traffic = host_load(environment)
    run_id, states, _ = run_dag(release_dag(environment), {"version": migration_fault}, answer="Approve")
    traffic.stop()

    assert states["migrate"] == "failed"
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    traffic.assert_every_request_answered()  # the app kept serving on the half-migrated database
    with psycopg.connect(postgres_url) as connection:
        history = [v for (v,) in connection.execute("SELECT version FROM public.airlock_schema_history")]
        tables = connection.execute(
            "SELECT to_regclass('fault_a') IS NOT NULL, to_regclass('fault_b') IS NOT NULL"
        ).fetchone()
    assert sorted(v for v in history if v in ("5", "6", "7")) == ["5"]
    assert tables == (True, False)
    [(_, result, detail)] = releases.audit_rows(ops_url, run_id, *AUDIT)
    assert result == "failed"
    applied = "Migrations applied by this run (not rolled back): V5__add_fault_a.sql."
    assert f"No host was switched. {applied}" in detail
    texts = slack_messages.texts()
    assert any(f"release {migration_fault} {detail}" in text for text in texts)
    assert any(
        "task migrate failed" in t
        and "Applied by this run before it (kept): V5__add_fault_a.sql; "
        "not applied: V6__add_fault_b.sql, V7__add_fault_c.sql"
        in t
        for t in texts
    )
