"""``rollback_<env>``, ``migrate_<env>`` and ``restore_<env>`` change something only on this run's
approval of this plan, as a release does.

The grid's "Mark success" on a waiting approval leaves the gate green with no answer: the run must
then change nothing and say what to do, while an approver's answer still goes ahead.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import psycopg
import pytest

from include.demo_app.build import artifact_files, tarball_bytes
from tests.faults.test_approval_and_artifact import mark_success_by_hand, migration_history
from tests.integration import releases
from tests.integration.releases import NEW, OLD, on_every_host, served_versions
from tests.support import load_dag, respond_to_approval, run_dag

HOSTS = ("web-1", "web-2", "web-3")


@pytest.fixture
def hosts_on_new(hosts_on_old):
    """Every host on NEW, with OLD recorded as the release before it."""
    on_every_host(hosts_on_old, NEW)
    return hosts_on_old


def test_a_rollback_whose_approval_was_marked_success_by_hand_switches_no_host(hosts_on_new, ops_url, capfd):
    environment = hosts_on_new
    rollback = load_dag(f"rollback_{environment.name}")

    run_id, states, answered = run_dag(rollback, {"reason": "bad build"}, answer=mark_success_by_hand)

    assert answered.get("ok") is True, answered
    assert states["approve"] == "success"
    assert states["conclude"] == "failed", states
    assert served_versions(environment) == dict.fromkeys(HOSTS, NEW)
    out, err = capfd.readouterr()
    assert "roll_back_host (web-1) refused: this run has no recorded approval" in out + err
    assert f"Trigger rollback_{environment.name} again" in out + err
    [(result, approved_by)] = releases.audit_rows(ops_url, run_id, "result", "approved_by")
    assert (result, approved_by) == ("failed", None)

    run_id, states, answered = run_dag(rollback, {"reason": "bad build"}, answer="Approve")

    assert states["conclude"] == "success", states
    assert served_versions(environment) == dict.fromkeys(HOSTS, OLD)


UNAPPROVED = "2.8.0"


def publish(artifacts: Path, migration: bytes) -> None:
    """Publish version UNAPPROVED (tarball and ``.sha256``) shipping ``migration`` as its V9."""
    files = artifact_files(UNAPPROVED)
    files["migrations/V9__unapproved.sql"] = migration
    tarball = artifacts / f"demo-app-{UNAPPROVED}.tar.gz"
    tarball.write_bytes(tarball_bytes(files))
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    Path(f"{tarball}.sha256").write_text(f"{digest}  {tarball.name}\n")


@pytest.fixture
def unapproved_migration(artifacts):
    """A version shipping a migration no other test applies: something is always pending."""
    publish(artifacts, b"CREATE TABLE unapproved (id int);\n")
    return UNAPPROVED


def tables(postgres_url: str, *names: str) -> list[str]:
    with psycopg.connect(postgres_url) as connection:
        return [name for name in names if connection.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0]]


def test_a_migration_whose_approval_was_marked_success_by_hand_applies_nothing(
    hosts_on_old, unapproved_migration, postgres_url, ops_url, capfd
):
    environment = hosts_on_old
    before = migration_history(postgres_url)

    run_id, states, answered = run_dag(
        load_dag(f"migrate_{environment.name}"),
        {"version": unapproved_migration},
        answer=mark_success_by_hand,
    )

    assert answered.get("ok") is True, answered
    assert (states["approve"], states["apply"]) == ("success", "failed"), states
    assert migration_history(postgres_url) == before
    assert tables(postgres_url, "public.unapproved") == []
    out, err = capfd.readouterr()
    assert "apply refused: this run has no recorded approval" in out + err
    assert f"Trigger migrate_{environment.name} again" in out + err
    [(result,)] = releases.audit_rows(ops_url, run_id, "result")
    assert result == "failed"


def test_a_migration_artifact_republished_during_the_approval_applies_nothing(
    hosts_on_old, artifacts, unapproved_migration, postgres_url, ops_url, capfd
):
    environment = hosts_on_old
    before = migration_history(postgres_url)

    def republish_then_approve(dag_id: str, run_id: str, task_id: str) -> None:
        publish(artifacts, b"CREATE TABLE republished (id int);\n")
        respond_to_approval(dag_id, run_id, task_id, "Approve", "admin")

    run_id, states, answered = run_dag(
        load_dag(f"migrate_{environment.name}"),
        {"version": unapproved_migration},
        answer=republish_then_approve,
    )

    assert answered.get("ok") is True, answered
    assert (states["approve"], states["apply"]) == ("success", "failed"), states
    assert migration_history(postgres_url) == before
    assert tables(postgres_url, "public.unapproved", "public.republished") == []
    out, err = capfd.readouterr()
    assert "republished after the plan. No migration was applied" in out + err
    [(result,)] = releases.audit_rows(ops_url, run_id, "result")
    assert result == "failed"


def test_a_restore_whose_approval_was_marked_success_by_hand_restores_nothing(
    hosts_on_old, verified_backup, postgres_url, ops_url, capfd
):
    environment = hosts_on_old
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS written_after_the_backup (id int)")
        connection.execute("INSERT INTO written_after_the_backup VALUES (1)")

    run_id, states, answered = run_dag(
        load_dag(f"restore_{environment.name}"),
        {"backup": verified_backup, "reason": "marked by hand"},
        answer=mark_success_by_hand,
    )

    assert answered.get("ok") is True, answered
    assert (states["approve"], states["restore"]) == ("success", "failed"), states
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute("SELECT count(*) FROM written_after_the_backup").fetchone() == (1,)
    out, err = capfd.readouterr()
    assert "restore refused: this run has no recorded approval" in out + err
    [(result,)] = releases.audit_rows(ops_url, run_id, "result")
    assert result == "failed"
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("DROP TABLE written_after_the_backup")
