"""``release_<env>`` end to end on real sshd hosts, the real demo app, PostgreSQL, Redis and Slack.

Each test starts from every sandbox host serving 1.0.0, runs the DAG with ``dag.test()`` (the
approval answered the way the REST API answers it) and checks what a user would check: which
version each host serves, the audit trail, the lock, and what Slack received.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import psycopg
import pytest
from airflow.exceptions import ParamValidationError
from airflow.sdk.exceptions import AirflowFailException

from airlock.hooks.backup_store import BackupStore
from airlock.hooks.hosts import HISTORY_FILE, PREVIOUS_MARKER, RELEASE_MARKER, host_hook, host_session
from airlock.hooks.lock import EnvironmentLock
from airlock.tasks import release as release_steps
from airlock.tasks.environment import environment_lock, require_host_ready
from airlock.tasks.migrate import check_migrations
from tests.integration import releases
from tests.integration.releases import (
    BAD_MIGRATION,
    BROKEN,
    GOOD_MIGRATION,
    NEW,
    OLD,
    on_every_host,
    served_versions,
    task_times,
)
from tests.support import load_dag, run_dag


@pytest.fixture
def release(environment, sandbox):
    """A freshly parsed DAG per test: ``dag.test()`` keeps a run's param values on the DAG object."""
    return load_dag(f"release_{environment.name}")


def migration_history(postgres_url: str) -> list[str]:
    """The versions applied so far, oldest first; none before the first migration ran."""
    with psycopg.connect(postgres_url) as connection:
        if connection.execute("SELECT to_regclass('public.airlock_schema_history')").fetchone()[0] is None:
            return []
        rows = connection.execute(
            "SELECT version FROM public.airlock_schema_history ORDER BY applied_at"
        ).fetchall()
    return [version for (version,) in rows]


RELEASE_COLUMNS = ("version", "result", "previous", "triggered_by", "approved_by", "reason")


def audit_rows(ops_url: str, run_id: str) -> list[tuple]:
    return releases.audit_rows(ops_url, run_id, *RELEASE_COLUMNS)


def test_an_approved_release_switches_every_host_in_waves(
    release, hosts_on_old, slack_messages, postgres_url, ops_url
):
    environment = hosts_on_old
    # Earlier tests of the session (the fault suite runs first) may have applied some already.
    history_before = migration_history(postgres_url)

    run_id, states, answered = run_dag(
        release, {"version": NEW, "reason": "ship it"}, answer="Approve", as_user="admin"
    )

    assert answered["ok"] is True
    assert states["conclude"] == "success", states
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], NEW)
    [(version, result, previous, _who, approver, reason)] = audit_rows(ops_url, run_id)
    assert (version, result, approver, reason) == (NEW, "succeeded", "admin", "ship it")
    assert previous == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    texts = slack_messages.texts()
    assert any("needs approval from admin" in text and "required_actions" in text for text in texts)
    assert any(f"release {NEW} started" in text for text in texts)
    assert any(f"release {NEW} is live on web-1, web-2, web-3" in text for text in texts)
    assert (
        EnvironmentLock(environment=environment.name, redis_conn_id="airlock_redis", ttl=None).holder()
        is None
    )
    history = migration_history(postgres_url)
    assert history[: len(history_before)] == history_before
    assert {"1", "2"} <= set(history)  # 2.0.0 ships V1 and V2
    [pre_release] = [b for b in BackupStore.of(environment).backups() if b.run_id == run_id]
    assert pre_release.kind == "pre-release"
    # Taken before migrations: the backup holds the history as it was before this run.
    assert pre_release.row_counts.get("public.airlock_schema_history", 0) == len(history_before)


def test_the_waves_run_in_order_first_one_host_then_the_rest(release, hosts_on_old):
    environment = hosts_on_old

    run_id, states, _ = run_dag(release, {"version": NEW}, answer="Approve")

    assert [h.name for h in environment.waves[0].hosts] == ["web-1"]
    wave_1, wave_2 = ["wave_1.deploy[0]"], ["wave_2.deploy[0]"]  # one deploy task per wave
    assert {states[task] for task in [*wave_1, *wave_2, "wave_1.verify", "wave_2.verify"]} == {"success"}
    times = task_times(release.dag_id, run_id)
    # Each wave is deployed, then verified, and only then does the next wave start.
    assert all(times[task][1] <= times["wave_1.verify"][0] for task in wave_1), times
    assert all(times["wave_1.verify"][1] <= times[task][0] for task in wave_2), times
    assert all(times[task][1] <= times["wave_2.verify"][0] for task in wave_2), times


def test_a_broken_version_is_rolled_back_on_every_switched_host(
    release, hosts_on_old, slack_messages, redis_client, postgres_url, ops_url
):
    environment = hosts_on_old

    run_id, states, _ = run_dag(release, {"version": BROKEN}, answer="Approve")

    assert states["wave_1.deploy[0]"] == "failed"
    assert states["rollback"] == "success"
    assert states["conclude"] == "failed"
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    with host_session(environment, environment.hosts[0]) as layout:
        assert layout.current_version() == OLD
    assert redis_client.get(f"airlock:lock:{environment.name}") is None
    [(version, result, *_)] = audit_rows(ops_url, run_id)
    assert (version, result) == (BROKEN, "rolled_back")
    rolled_back = [t for t in slack_messages.texts() if "failed at wave_1.deploy (web-1)" in t]
    assert rolled_back, slack_messages.texts()
    assert "web-1 (back on 1.0.0)" in rolled_back[0]
    [pre_release] = [b for b in BackupStore.of(environment).backups() if b.run_id == run_id]
    assert f"Database not rolled back; pre-release backup: {pre_release.name}." in rolled_back[0]
    assert any(
        "wave_1.deploy [web-1] failed" in t and "not healthy on 2.1.0-broken" in t
        for t in slack_messages.texts()
    )


def test_a_rejected_release_changes_nothing_and_says_who_rejected(
    release, hosts_on_old, slack_messages, postgres_url, ops_url
):
    environment = hosts_on_old

    run_id, states, _ = run_dag(release, {"version": NEW}, answer="Reject", as_user="admin")

    assert states["approve"] == "failed"
    assert not [task for task, state in states.items() if task.startswith("wave_") and state == "success"]
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    assert any(f"release {NEW} was rejected by admin" in t for t in slack_messages.texts())
    [(version, result, *_)] = audit_rows(ops_url, run_id)
    assert (version, result) == (NEW, "rejected")


def test_only_an_assigned_approver_can_answer(release, hosts_on_old):
    environment = hosts_on_old

    run_id, _, answered = run_dag(release, {"version": NEW}, answer="Approve", as_user="mallory")

    assert "is not a respondent" in str(answered.get("error")), answered
    # The refused answer was not recorded: the request still waits for an approver's answer
    # (the harness then fails the parked task so that the run ends).
    assert releases.approval_response(release.dag_id, run_id) == (None, None)
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    assert not [b for b in BackupStore.of(environment).backups() if b.run_id == run_id]


def test_a_dry_run_plans_and_changes_nothing(release, hosts_on_old, slack_messages):
    environment = hosts_on_old

    _run_id, states, _ = run_dag(release, {"version": NEW, "dry_run": True})

    assert states["plan"] == "success"
    assert states["proceed"] == "success"
    assert states["conclude"] == "success"
    assert states.get("approve") == "skipped"
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    assert any("dry run of release 2.0.0 planned" in t for t in slack_messages.texts())


def test_the_plan_shows_hosts_per_wave_current_and_new_version(
    environment, hosts_on_old, artifacts, verified_backup
):
    artifact = release_steps.check_artifact(environment, NEW)
    host_states = [require_host_ready(environment, h.name) for h in environment.hosts]
    database = release_steps.require_database_reachable(environment)
    migrations = check_migrations(environment, NEW)
    backup = release_steps.require_recent_backup(environment)

    planned = release_steps.plan_release(
        environment,
        request={"version": NEW, "dry_run": False, "reason": "weekly"},
        artifact=artifact,
        host_states=host_states,
        database=database,
        migrations=migrations,
        backup=backup,
        triggered_by="alice",
    )

    markdown = planned["markdown"]
    assert "A pre-release backup (`sandbox-<time>-pre-release`) is taken after approval" in markdown
    assert f"Newest verified backup: `{backup['name']}`" in markdown
    assert "| 1 | web-1 | 1.0.0 | 2.0.0 |" in markdown
    assert "| 2 | web-3 | 1.0.0 | 2.0.0 |" in markdown
    assert "Requested by **alice**: weekly" in markdown
    assert "web-1 → 1.0.0" in markdown
    if migrations:  # the first release of this session applies them; later plans list none
        assert "V2__add_item_category.sql" in markdown
        assert "ADD COLUMN category" in markdown


def test_a_second_release_fails_fast_naming_the_lock_holder(
    release, hosts_on_old, slack_messages, redis_client
):
    environment = hosts_on_old
    holder = EnvironmentLock(
        environment=environment.name,
        redis_conn_id="airlock_redis",
        ttl=__import__("datetime").timedelta(minutes=5),
    )
    holder.acquire(run_id="manual__other-run", purpose="release 9.9.9", triggered_by="alice")
    held = redis_client.get(f"airlock:lock:{environment.name}")

    _, states, _ = run_dag(release, {"version": NEW})

    assert states["lock"] == "failed"
    assert states["plan"] == "upstream_failed"
    lock_failures = [t for t in slack_messages.texts() if "task lock failed" in t]
    assert lock_failures
    assert "locked by release 9.9.9 (run manual__other-run, by alice" in lock_failures[-1]
    # The other run's lock is untouched: same holder, same token.
    assert redis_client.get(f"airlock:lock:{environment.name}") == held
    assert json.loads(held)["run_id"] == "manual__other-run"
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)


def test_a_host_with_an_unexpected_host_key_fails_preflight_and_no_host_is_touched(
    release, hosts_on_old, tmp_path
):
    environment = hosts_on_old
    known_hosts = environment.ssh.known_hosts
    original = known_hosts.read_text()
    lines = original.splitlines()
    # web-3's line now carries web-1's key: whoever answers on web-3's port is an impostor.
    web_1_key = lines[0].split(" ", 1)[1]
    known_hosts.write_text(
        "\n".join([lines[0], lines[1], lines[2].split(" ", 1)[0] + " " + web_1_key]) + "\n"
    )
    try:
        _, states, _ = run_dag(release, {"version": NEW}, answer="Approve")
    finally:
        known_hosts.write_text(original)

    assert states["check_host[2]"] == "failed"
    assert states["plan"] == "upstream_failed"
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)


@pytest.mark.parametrize(
    "version",
    [
        pytest.param("1.0; touch /tmp/airlock-pwned", id="shell-metacharacters"),
        pytest.param("../../etc", id="dot-dot"),
        pytest.param("2.0 0", id="space"),
        pytest.param("$(id)", id="command-substitution"),
        pytest.param("1" * 65, id="too-long"),
        pytest.param("", id="empty"),
    ],
)
def test_a_malicious_version_is_refused_when_the_run_is_created(release, version):
    with pytest.raises(ParamValidationError, match="version"):
        release.test(run_conf={"version": version})

    assert not Path("/tmp/airlock-pwned").exists()


def test_unknown_parameters_stop_the_run_before_anything_is_touched(release, hosts_on_old):
    environment = hosts_on_old

    _, states, _ = run_dag(release, {"version": NEW, "hosts": "web-1"})

    assert states["validate_request"] == "failed"
    assert states["lock"] == "upstream_failed"
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)


def test_re_running_a_deploy_for_a_host_already_switched_is_a_no_op(environment, hosts_on_old):
    web_1 = environment.hosts[0]
    environment_lock(environment).acquire(run_id="manual__rerun", purpose="test", triggered_by="me")
    first = release_steps.deploy_host(
        environment, version=NEW, host_name="web-1", wave_hosts=["web-1"], run_id="manual__rerun"
    )
    hook = host_hook(environment, web_1)
    stamp = ["stat", "-c", "%Y %i", f"{environment.root_of(web_1)}/releases/{NEW}"]
    before = hook.run(stamp).stdout

    again = release_steps.deploy_host(
        environment, version=NEW, host_name="web-1", wave_hosts=["web-1"], run_id="manual__rerun"
    )

    assert first["changed"] is True
    assert again == {"host": "web-1", "previous_version": NEW, "version": NEW, "changed": False}
    assert hook.run(stamp).stdout == before
    hook.close()


def test_a_wave_is_deployed_together_and_a_rerun_touches_only_the_hosts_not_on_it_yet(
    environment, hosts_on_old
):
    environment_lock(environment).acquire(run_id="manual__wave", purpose="test", triggered_by="me")
    release_steps.deploy_host(
        environment, version=NEW, host_name="web-3", wave_hosts=["web-2", "web-3"], run_id="manual__wave"
    )
    switched: list[str] = []

    def deploy_wave() -> list:
        return release_steps.deploy_hosts(
            environment,
            version=NEW,
            hosts=["web-2", "web-3"],
            wave_hosts=["web-2", "web-3"],
            run_id="manual__wave",
            record_switch=switched.append,
        )

    first = deploy_wave()
    assert [(line.host, line.result, line.before, line.after) for line in first] == [
        ("web-2", "switched", OLD, NEW),
        ("web-3", "already there", NEW, NEW),
    ]
    assert switched == ["web-2"]  # recorded before its switch; web-3 needed none
    assert served_versions(environment) == {"web-1": OLD, "web-2": NEW, "web-3": NEW}

    again = deploy_wave()  # a retry of the wave's task
    assert [(line.host, line.result) for line in again] == [
        ("web-2", "already there"),
        ("web-3", "already there"),
    ]
    assert switched == ["web-2"]


def test_a_host_that_fails_stops_the_switch_of_its_wave_mates_and_says_why(environment, hosts_on_old):
    one_at_a_time = environment.model_copy(
        update={"rollout": environment.rollout.model_copy(update={"max_parallel_per_wave": 1})}
    )
    release_artifact = release_steps.release_artifact(environment.deploy, NEW)
    on_every_host(environment, NEW)  # NEW installed everywhere, then back on OLD
    on_every_host(environment, OLD)
    marker = Path(environment.root_of(environment.hosts[1])) / "releases" / NEW / RELEASE_MARKER
    marker.unlink()
    marker.mkdir()  # unreadable (EISDIR): what web-2 has installed is unknown
    environment_lock(environment).acquire(run_id="manual__wave-fails", purpose="test", triggered_by="me")
    try:
        lines = release_steps.deploy_hosts(
            one_at_a_time,
            version=NEW,
            hosts=["web-2", "web-3"],
            wave_hosts=["web-2", "web-3"],
            run_id="manual__wave-fails",
        )
    finally:
        marker.rmdir()
        marker.write_text(f"{release_artifact.sha256}\n")

    web_2, web_3 = lines
    assert (web_2.result, web_2.retry) == ("failed", False)
    assert "cannot read the release marker" in web_2.why
    assert web_3.result == "not switched"
    assert "the deploy of web-2 failed in this run" in web_3.why
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)


@pytest.fixture
def rollback(environment, sandbox):
    return load_dag(f"rollback_{environment.name}")


def test_rollback_puts_every_host_back_on_its_previous_release(
    rollback, hosts_on_old, slack_messages, postgres_url, ops_url
):
    environment = hosts_on_old
    on_every_host(environment, NEW)

    run_id, states, _ = run_dag(rollback, {"reason": "errors up"}, answer="Approve")

    assert states["conclude"] == "success", states
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    [(version, result, previous, *_)] = audit_rows(ops_url, run_id)
    assert (version, result) == (OLD, "succeeded")
    assert previous == dict.fromkeys(["web-1", "web-2", "web-3"], NEW)
    assert any(
        "rolled back to web-1 → 1.0.0, web-2 → 1.0.0, web-3 → 1.0.0" in t for t in slack_messages.texts()
    )


def test_rollback_to_a_release_missing_on_a_host_is_refused_before_any_switch(rollback, hosts_on_old):
    environment = hosts_on_old
    on_every_host(environment, NEW)

    _, states, _ = run_dag(rollback, {"to_version": "0.9.0"})

    assert states["plan"] == "failed"
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], NEW)


def test_a_run_that_lost_its_lock_stops_before_touching_a_host(environment, hosts_on_old, redis_client):
    environment_lock(environment).acquire(run_id="manual__mine", purpose="test", triggered_by="me")
    redis_client.delete(f"airlock:lock:{environment.name}")  # expired, or broken by an operator
    environment_lock(environment).acquire(run_id="manual__theirs", purpose="release 9", triggered_by="bob")

    with pytest.raises(AirflowFailException, match=r"no longer holds the lock .* held by release 9"):
        release_steps.deploy_host(
            environment, version=NEW, host_name="web-1", wave_hosts=["web-1"], run_id="manual__mine"
        )

    assert served_versions(environment)["web-1"] == OLD


def test_a_failing_migration_stops_the_release_before_any_host_is_switched(
    release, hosts_on_old, postgres_url, ops_url
):
    environment = hosts_on_old

    run_id, states, _ = run_dag(release, {"version": BAD_MIGRATION}, answer="Approve")

    assert states["migrate"] == "failed"
    assert not [task for task, state in states.items() if task.startswith("wave_") and state == "success"]
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    assert "3" not in migration_history(postgres_url)
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT to_regclass('public.release_marker')").fetchone() == (None,)
    [(version, result, *_)] = audit_rows(ops_url, run_id)
    assert (version, result) == (BAD_MIGRATION, "failed")


HISTORY_AND_PREVIOUS = (HISTORY_FILE, PREVIOUS_MARKER)


def test_two_rollbacks_in_a_row_never_toggle_back_to_the_build_rolled_back_from(rollback, hosts_on_old):
    environment = hosts_on_old
    # Hosts whose history holds only 1.0.0 (earlier tests' releases stay in it otherwise, and a
    # good release from before 1.0.0 is a legitimate target of the second rollback).
    for host in environment.hosts:
        with host_session(environment, host) as layout:
            history, previous = (shlex.quote(f"{layout.root}/{name}") for name in HISTORY_AND_PREVIOUS)
            layout.hook.run_script(f"printf '%s\\n' {shlex.quote(OLD)} > {history} && rm -f {previous}")
            assert layout.history() == [OLD]
    on_every_host(environment, NEW)

    _, first, _ = run_dag(rollback, {"reason": "bad build"}, answer="Approve")
    second_dag = load_dag(f"rollback_{environment.name}")  # a fresh parse: see the `release` fixture
    _, second, _ = run_dag(second_dag, {"reason": "again"}, answer="Approve")

    assert first["conclude"] == "success", first
    # Nothing older than 1.0.0 is recorded once 2.0.0 is backed out of: the second one is refused.
    assert second["plan"] == "failed", second
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    for host in environment.hosts:
        with host_session(environment, host) as layout:
            assert layout.previous_version() != NEW
            assert NEW not in layout.history()


def test_an_automatic_rollback_does_not_record_the_broken_build_as_previous(release, hosts_on_old):
    environment = hosts_on_old

    _, states, _ = run_dag(release, {"version": BROKEN}, answer="Approve")

    assert states["rollback"] == "success"
    with host_session(environment, environment.hosts[0]) as layout:
        assert layout.current_version() == OLD
        assert layout.previous_version() != BROKEN
        assert BROKEN not in layout.history()


# Kept last in this file: it applies V4, after which 2.2.0's V3 would be out of order.
def test_migrate_plans_in_a_dry_run_and_applies_after_approval(hosts_on_old, postgres_url, slack_messages):
    migrate = load_dag(f"migrate_{hosts_on_old.name}")
    before = migration_history(postgres_url)

    _, planned, _ = run_dag(migrate, {"version": GOOD_MIGRATION, "dry_run": True})

    assert planned["plan"] == "success"
    assert planned["apply"] == "skipped"
    assert migration_history(postgres_url) == before

    migrate = load_dag(f"migrate_{hosts_on_old.name}")  # a fresh parse: see the `release` fixture
    _, applied, _ = run_dag(migrate, {"version": GOOD_MIGRATION}, answer="Approve")

    assert applied["apply"] == "success"
    assert migration_history(postgres_url)[-1] == "4"
    assert any("migrations of 2.4.0 needs approval" in t for t in slack_messages.texts())
