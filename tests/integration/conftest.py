"""Fixtures of the release-shaped integration tests: artifacts, a verified backup, hosts on 1.0.0."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from airlock.tasks.backup import take_backup, verify_backup
from include.demo_app.build import artifact_files, build_artifact, tarball_bytes
from tests.integration.releases import (
    BAD_MIGRATION,
    BROKEN,
    GOOD_MIGRATION,
    NEW,
    OLD,
    on_every_host,
    served_versions,
)


@pytest.fixture(scope="module")
def artifacts(environment) -> Path:
    directory = Path(urlsplit(environment.deploy.artifact_url).path).parent
    for version in (OLD, NEW, BROKEN):
        build_artifact(version, directory)
    # A version whose new migration fails half-way: the release must stop before any host.
    files = artifact_files(BAD_MIGRATION)
    files["migrations/V3__add_broken_index.sql"] = (
        b"CREATE TABLE release_marker (id int);\nCREATE INDEX ON items (no_such_column);\n"
    )
    tarball = directory / f"demo-app-{BAD_MIGRATION}.tar.gz"
    tarball.write_bytes(tarball_bytes(files))
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    Path(f"{tarball}.sha256").write_text(f"{digest}  {tarball.name}\n")
    files = artifact_files(GOOD_MIGRATION)
    files["migrations/V4__add_release_notes.sql"] = b"CREATE TABLE release_notes (id int, note text);\n"
    tarball = directory / f"demo-app-{GOOD_MIGRATION}.tar.gz"
    tarball.write_bytes(tarball_bytes(files))
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    Path(f"{tarball}.sha256").write_text(f"{digest}  {tarball.name}\n")
    return directory


@pytest.fixture(scope="module")
def verified_backup(environment, postgres_url) -> str:
    """A fresh verified backup: release preflight refuses to go on without one."""
    backup = take_backup(environment, kind="manual")
    verify_backup(environment, backup.name)
    return backup.name


@pytest.fixture
def hosts_on_old(sandbox, environment, artifacts, redis_client, slack_messages, verified_backup):
    """Every host serving 1.0.0, the lock free and a fresh verified backup, as before a release."""
    on_every_host(environment, OLD)
    redis_client.delete(f"airlock:lock:{environment.name}")
    slack_messages.clear()
    assert served_versions(environment) == dict.fromkeys(["web-1", "web-2", "web-3"], OLD)
    return environment
