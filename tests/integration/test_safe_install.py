"""Installing and pruning releases on real sshd hosts never removes what the host serves from.

The sandbox hosts' roots are local directories, so each test lays out what a host can really
hold (a release laid out before Airlock, an unreadable marker, what a killed upload left) with
plain file operations, then installs or prunes over SSH as a release does, and restores the
host's ``current`` afterwards for the other tests.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from airlock.hooks.artifacts import release_artifact
from airlock.hooks.hosts import (
    RELEASE_MARKER,
    LiveReleaseError,
    ReleaseMarkerError,
    deploy_to_host,
    host_session,
)
from tests.integration.releases import NEW, OLD


@pytest.fixture
def web_3(sandbox, environment, artifacts):
    """web-3's root; its ``current`` and releases are put back as found after the test."""
    host = environment.hosts[2]
    root = Path(environment.root_of(host))
    (root / "releases").mkdir(parents=True, exist_ok=True)
    current = root / "current"
    before = os.readlink(current) if current.is_symlink() else None
    releases = set(os.listdir(root / "releases"))
    yield host, root
    if before is not None:
        pending = root / ".current-restore"
        pending.unlink(missing_ok=True)
        pending.symlink_to(before)
        pending.replace(current)
    for name in set(os.listdir(root / "releases")) - releases:
        entry = root / "releases" / name
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def pre_airlock_release(root: Path, version: str) -> Path:
    """A release directory as a hand-made deployment leaves it: files, no Airlock marker."""
    release = root / "releases" / version
    release.mkdir()
    (release / "app.txt").write_text("installed by hand before Airlock\n")
    return release


def point_current_at(root: Path, target: str) -> None:
    pending = root / ".current-test"
    pending.symlink_to(target)
    pending.replace(root / "current")


def test_a_live_release_without_a_marker_survives_an_install_of_its_version_which_says_why(
    web_3, environment
):
    host, root = web_3
    version = f"0.9.{uuid.uuid4().hex[:6]}"
    release = pre_airlock_release(root, version)
    point_current_at(root, f"releases/{version}")
    artifact = release_artifact(environment.deploy, NEW)

    with pytest.raises(
        LiveReleaseError,
        match=rf"Host web-3: {release} is the live release \(current -> {release}\) but has no "
        rf"Airlock release marker.*write its SHA-256 \({artifact.sha256}\) into {release}/{RELEASE_MARKER}",
    ):
        deploy_to_host(environment, host, version, artifact)

    assert (release / "app.txt").read_text() == "installed by hand before Airlock\n"
    assert not (release / RELEASE_MARKER).exists()
    assert os.readlink(root / "current") == f"releases/{version}"
    assert not (root / "releases" / f".incoming-{version}.tar.gz").exists()


def test_a_release_without_a_marker_that_is_not_live_is_replaced_by_the_verified_artifact(web_3, environment):
    host, root = web_3
    version = f"0.8.{uuid.uuid4().hex[:6]}"
    release = pre_airlock_release(root, version)
    artifact = release_artifact(environment.deploy, NEW)

    with host_session(environment, host) as layout:
        assert layout.install(version, artifact) is True

    assert not (release / "app.txt").exists()
    assert (release / RELEASE_MARKER).read_text() == f"{artifact.sha256}\n"


def test_a_marker_that_cannot_be_read_fails_loudly_and_the_release_is_left_alone(web_3, environment):
    host, root = web_3
    version = f"0.7.{uuid.uuid4().hex[:6]}"
    release = pre_airlock_release(root, version)
    # Root reads any file whatever its mode; a marker that is not a file fails the read as
    # surely (EISDIR), the way a permission or I/O error does for another user.
    (release / RELEASE_MARKER).mkdir()
    artifact = release_artifact(environment.deploy, NEW)

    with (
        host_session(environment, host) as layout,
        pytest.raises(
            ReleaseMarkerError,
            match=rf"Host web-3: cannot read the release marker {release}/{RELEASE_MARKER} "
            r"\(.*Is a directory\).*nothing was changed",
        ),
    ):
        layout.install(version, artifact)

    assert (release / "app.txt").read_text() == "installed by hand before Airlock\n"
    assert not (root / "releases" / f".incoming-{version}.tar.gz").exists()


def test_leftovers_of_killed_installs_are_pruned_but_not_those_of_the_release_in_progress(web_3, environment):
    host, root = web_3
    deploy_to_host(environment, host, OLD, release_artifact(environment.deploy, OLD))
    releases = root / "releases"
    dead = f"0.6.{uuid.uuid4().hex[:6]}"
    (releases / f".incoming-{dead}.tar.gz").write_bytes(b"half an upload")
    (releases / f".staging-{dead}" / "bin").mkdir(parents=True)
    (releases / f".incoming-{NEW}.tar.gz").write_bytes(b"being uploaded right now")
    (releases / f".staging-{NEW}").mkdir()

    kept = {name for name in os.listdir(releases) if not name.startswith(".")}  # other tests' releases

    with host_session(environment, host) as layout:
        pruned = layout.prune(environment.deploy.keep_releases, protect=kept | {NEW})

    assert {f".incoming-{dead}.tar.gz", f".staging-{dead}"} <= set(pruned)
    assert not (releases / f".incoming-{dead}.tar.gz").exists()
    assert not (releases / f".staging-{dead}").exists()
    assert (releases / f".incoming-{NEW}.tar.gz").read_bytes() == b"being uploaded right now"
    assert (releases / f".staging-{NEW}").is_dir()
    assert (releases / OLD / RELEASE_MARKER).exists()


def test_pruning_keeps_the_directory_current_resolves_to_whatever_name_current_uses(web_3, environment):
    host, root = web_3
    releases = root / "releases"
    kept = set(os.listdir(releases))  # other tests' releases
    live = f"0.5.{uuid.uuid4().hex[:6]}"
    release = pre_airlock_release(root, live)
    # current -> releases/alias -> <live>: the name current shows is not the directory's.
    (releases / f"alias-{live}").symlink_to(live)
    point_current_at(root, f"releases/alias-{live}")
    for index in range(environment.deploy.keep_releases + 1):
        newer = releases / f"0.5.{index}-newer-{live}"
        newer.mkdir()
        os.utime(newer, (os.stat(release).st_mtime + 10 + index,) * 2)

    with host_session(environment, host) as layout:
        pruned = layout.prune(environment.deploy.keep_releases, protect=kept | {f"alias-{live}"})

    assert live not in pruned
    assert (release / "app.txt").read_text() == "installed by hand before Airlock\n"
