"""The parts of a release plan read from preflight results: its Backup and Preflight sections."""

from __future__ import annotations

from airlock.core.release import describe_backups, preflight_checks, takes_pre_release_backup
from tests.support import demo_document, write_environment


def environment(tmp_path, **backup):
    document = demo_document()
    document["backup"] = {**document["backup"], **backup}
    return write_environment(tmp_path / "staging.yaml", {**document, "name": "staging"})


def test_the_plan_names_the_pre_release_backup_and_the_newest_verified_one(tmp_path):
    staging = environment(tmp_path, required_for_release=True)

    described = describe_backups(staging, {"name": "staging-1", "finished_at": "2026-01-01T00:00:00+00:00"})

    assert takes_pre_release_backup(staging)
    assert described.startswith("A pre-release backup (`staging-<time>-pre-release`) is taken after approval")
    assert "Newest verified backup: `staging-1`, taken 2026-01-01T00:00:00+00:00." in described


def test_an_environment_without_pre_release_backups_says_so(tmp_path):
    staging = environment(tmp_path, required_for_release=False)

    assert not takes_pre_release_backup(staging)
    assert describe_backups(staging, None).startswith("None: this environment does not take pre-release")


def test_preflight_lists_every_check_and_the_backup_only_when_one_was_checked():
    found = {
        "artifact": {"size": 1234},
        "host_states": [{"host": "web-1", "free_disk_mb": 900}],
        "database": {"database": "demo", "server_version": "16.4"},
        "migrations": [{"file": "V2__x.sql", "sql": "SELECT 1"}],
    }

    assert preflight_checks(**found, backup=None) == [
        "Artifact verified (1234 bytes)",
        "web-1: reachable, host key verified, 900 MB free",
        "Database demo reachable (PostgreSQL 16.4)",
        "Migrations validated against the database: 1 pending",
    ]
    assert preflight_checks(**found, backup={"name": "demo-1"})[-1] == (
        "Newest verified backup demo-1 is younger than backup.max_age"
    )
