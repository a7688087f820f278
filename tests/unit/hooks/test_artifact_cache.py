"""The worker's artifact cache: this user's own, 0700, and bounded by size, least recently used first.

Real files through ``file://`` URLs (the same ``ObjectStoragePath`` code reads s3:// and the
rest); ownership is tested with a directory really owned by another user (nobody).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from airlock.hooks import artifacts as artifacts_module
from airlock.hooks.artifacts import (
    CACHE_LIMIT_VARIABLE,
    CACHE_VARIABLE,
    STALE_PARTIAL_SECONDS,
    STALE_PIN_SECONDS,
    ArtifactError,
    fetch_artifact,
    pinned,
)

MB = 1024 * 1024


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "cache" / "artifacts"
    monkeypatch.setenv(CACHE_VARIABLE, str(directory))
    monkeypatch.setenv(CACHE_LIMIT_VARIABLE, "1")
    return directory


@pytest.fixture
def publish(tmp_path):
    """Publish an artifact of ``size`` random bytes with its .sha256 file; returns its fetch()."""
    published = tmp_path / "published"
    published.mkdir()

    def artifact(name: str, size: int):
        path = published / f"{name}.tar.gz"
        path.write_bytes(os.urandom(size))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        Path(f"{path}.sha256").write_text(f"{digest}  {path.name}\n")
        return lambda: fetch_artifact(f"file://{path}", f"file://{path}.sha256")

    return artifact


def cached(cache: Path) -> set[str]:
    return {entry.name for entry in cache.iterdir()}


def test_a_new_cache_is_created_0700_and_owned_by_the_workers_user(cache, publish):
    artifact = publish("a", 1000)()

    info = cache.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.geteuid()
    assert artifact.path.parent == cache


def test_a_cache_owned_by_another_user_is_refused_before_anything_is_downloaded(cache, publish):
    cache.mkdir(parents=True, mode=0o700)
    os.chown(cache, 65534, 65534)
    fetch = publish("a", 1000)

    with pytest.raises(
        ArtifactError, match=rf"artifact cache {cache} belongs to uid 65534, not to this worker"
    ):
        fetch()

    assert cached(cache) == set()


def test_a_cache_that_is_a_symbolic_link_is_refused(cache, publish, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    cache.parent.mkdir(parents=True)
    cache.symlink_to(elsewhere)

    with pytest.raises(ArtifactError, match=rf"artifact cache {cache} is not a directory of its own"):
        publish("a", 1000)()

    assert list(elsewhere.iterdir()) == []


def test_a_cache_open_to_other_users_is_repaired_and_what_they_could_plant_is_removed(
    cache, publish, tmp_path
):
    cache.mkdir(parents=True)
    cache.chmod(0o777)
    (cache / "planted.artifact").symlink_to(tmp_path)
    (cache / "theirs.artifact").write_bytes(b"x")
    os.chown(cache / "theirs.artifact", 65534, 65534)

    artifact = publish("a", 1000)()

    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert cached(cache) == {artifact.path.name}


def test_the_cache_is_evicted_oldest_first_to_its_bound_and_a_hit_counts_as_use(cache, publish):
    first, second, third = (publish(name, 400 * 1024) for name in ("first", "second", "third"))
    a = first()
    b = second()
    os.utime(a.path, (time.time() - 60,) * 2)
    os.utime(b.path, (time.time() - 30,) * 2)
    first()  # a hit: first is now the most recently used

    c = third()

    assert cached(cache) == {a.path.name, c.path.name}
    assert sum(entry.stat().st_size for entry in cache.iterdir()) <= 1 * MB


def test_the_artifact_being_fetched_is_never_evicted_even_above_the_bound(cache, publish):
    small = publish("small", 1000)()
    big = publish("big", 2 * MB)()

    assert cached(cache) == {big.path.name}
    assert small.path.name not in cached(cache)
    assert hashlib.sha256(big.path.read_bytes()).hexdigest() == big.sha256


def test_downloads_a_dead_worker_left_are_removed_and_fresh_ones_kept(cache, publish):
    cache.mkdir(parents=True, mode=0o700)
    stale, fresh = cache / ".partial-dead", cache / ".partial-in-progress"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(stale, (time.time() - STALE_PARTIAL_SECONDS - 60,) * 2)

    artifact = publish("a", 1000)()

    assert cached(cache) == {artifact.path.name, fresh.name}


@pytest.mark.parametrize("value", ["0", "-5", "lots", "1.5"])
def test_a_cache_bound_that_is_not_a_positive_number_of_mb_is_refused(cache, publish, monkeypatch, value):
    monkeypatch.setenv(CACHE_LIMIT_VARIABLE, value)

    with pytest.raises(
        ArtifactError, match=rf"{CACHE_LIMIT_VARIABLE}='{value}' must be a positive whole number"
    ):
        publish("a", 1000)()


def test_many_fetches_of_one_artifact_at_once_all_get_the_verified_copy(cache, publish):
    """A wave deploys its hosts in threads, and workers share the cache: fetches racing each
    other's downloads, renames and evictions must each get the artifact, never a vanished file."""
    for attempt in range(5):
        fetch = publish(f"wave-{attempt}", 200_000)
        with ThreadPoolExecutor(max_workers=24) as pool:
            artifacts = list(pool.map(lambda _, fetch=fetch: fetch(), range(48)))

        assert len({artifact.path for artifact in artifacts}) == 1
        assert hashlib.sha256(artifacts[0].path.read_bytes()).hexdigest() == artifacts[0].sha256
        assert not [name for name in cached(cache) if name.startswith(".partial-")]


def test_a_pinned_artifact_outlives_its_eviction_by_another_tasks_fetch(cache, publish):
    """A wave uploads the artifact it fetched once to all its hosts; meanwhile another task
    fetching another version can evict it (the cache at its bound). The wave's pin keeps it."""
    wave = publish("2.0.0", 600 * 1024)()
    with pinned(wave) as pin:
        other = publish("3.0.0", 600 * 1024)()  # evicts 2.0.0's cached file: 1 MB bound

        assert wave.path.name not in cached(cache)
        assert hashlib.sha256(pin.path.read_bytes()).hexdigest() == wave.sha256
        assert (pin.url, pin.sha256, pin.size) == (wave.url, wave.sha256, wave.size)
        assert pin.path.parent == cache
    assert cached(cache) == {other.path.name}  # the pin went with the block


def test_an_artifact_evicted_before_it_could_be_pinned_fails_saying_so(cache, publish):
    artifact = publish("a", 1000)()
    artifact.path.unlink()

    evicted = r"was evicted from the cache .* retry the step"
    with pytest.raises(ArtifactError, match=evicted), pinned(artifact):
        pass


def test_a_pin_a_killed_task_left_behind_is_removed_a_day_later(cache, publish, monkeypatch):
    artifact = publish("a", 1000)()
    left = cache / ".pin-left-by-a-killed-task"
    os.link(artifact.path, left)
    publish("b", 1000)()
    assert left.name in cached(cache)  # fresh: maybe a running wave's

    later = time.time() + STALE_PIN_SECONDS + 60
    monkeypatch.setattr(artifacts_module.time, "time", lambda: later)
    publish("c", 1000)()

    assert left.name not in cached(cache)
