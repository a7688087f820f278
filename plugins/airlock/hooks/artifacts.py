"""Fetch a release artifact and prove it is the one that was published.

Artifacts are read through Airflow's ``ObjectStoragePath``, so ``file://``, ``s3://``, ``gs://``
and the other stores of installed providers all work the same way. The SHA-256 published next
to the artifact is read first; the download is hashed while it streams and only a matching file
enters the local cache (``$AIRLOCK_ARTIFACT_CACHE``, else ``airlock-artifacts`` in the temporary
directory), keyed by that hash. Tasks may run on different workers, so each task calls
:func:`release_artifact` itself (the environment's ``deploy.artifact_url`` and
``deploy.checksum_url``, by default ``artifact_url`` + ``.sha256``, filled with the version) and
never relies on a file another task left behind.

A step that works from an approved plan passes the plan's SHA-256 as ``expected_sha256``: when
the published checksum is another one (the artifact was republished since the plan), it fails
before downloading anything, naming both digests.

The cache is the worker user's own: created 0700; an existing one that is a symbolic link or
belongs to another user is refused (another user could swap what a release uploads), and one
that is group- or world-accessible is set back to 0700 with every entry that is not one of our
regular files removed (every hit is re-hashed anyway). It holds at most
``$AIRLOCK_ARTIFACT_CACHE_MAX_MB`` (default 2048): after each fetch the least recently used
artifacts are evicted until it fits, never the one just fetched, and ``.partial-*`` downloads a
dead worker left are removed once an hour old.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from airflow.sdk import ObjectStoragePath

from airlock.config import DeploySettings

log = logging.getLogger(__name__)

CACHE_VARIABLE = "AIRLOCK_ARTIFACT_CACHE"
CACHE_LIMIT_VARIABLE = "AIRLOCK_ARTIFACT_CACHE_MAX_MB"
DEFAULT_CACHE_LIMIT_MB = 2048
#: A download older than this is one a dead worker left behind.
STALE_PARTIAL_SECONDS = 3600
#: A pin (:func:`pinned`) older than this belongs to a task that died without removing it.
STALE_PIN_SECONDS = 24 * 3600
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024


class ArtifactError(RuntimeError):
    """The artifact or its checksum is missing, unreadable or does not match."""


@dataclass(frozen=True)
class Artifact:
    url: str
    sha256: str
    size: int
    path: Path


def cache_dir() -> Path:
    """The artifact cache, created 0700; refused when it is not this user's own directory."""
    directory = Path(os.environ.get(CACHE_VARIABLE) or Path(tempfile.gettempdir()) / "airlock-artifacts")
    directory.parent.mkdir(parents=True, exist_ok=True)
    directory.mkdir(mode=0o700, exist_ok=True)
    try:
        handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as error:
        raise ArtifactError(
            f"artifact cache {directory} is not a directory of its own ({error.strerror}): remove it, "
            f"or set {CACHE_VARIABLE} to a directory only this worker's user can write"
        ) from None
    try:
        info = os.fstat(handle)
        if info.st_uid != os.geteuid():
            raise ArtifactError(
                f"artifact cache {directory} belongs to uid {info.st_uid}, not to this worker's user "
                f"(uid {os.geteuid()}), who could then swap the artifacts a release uploads: remove it, "
                f"or set {CACHE_VARIABLE} to a directory of this user's"
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.fchmod(handle, 0o700)
            removed = _remove_foreign_entries(directory)
            log.warning(
                "Artifact cache %s was open to other users (mode %o): set to 0700, %d entries "
                "not this user's regular files removed",
                directory,
                stat.S_IMODE(info.st_mode),
                removed,
            )
    finally:
        os.close(handle)
    return directory


def _is_own_file(path: Path) -> bool:
    info = path.lstat()
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()


def _remove_foreign_entries(directory: Path) -> int:
    """Remove what another user may have planted while the cache was open to them."""
    removed = 0
    for entry in directory.iterdir():
        if _is_own_file(entry):
            continue
        try:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError as error:
            raise ArtifactError(
                f"artifact cache {directory} holds {entry.name}, which is not this user's and cannot "
                f"be removed ({error.strerror}): remove it by hand"
            ) from None
        removed += 1
    return removed


def cache_limit_bytes() -> int:
    """``$AIRLOCK_ARTIFACT_CACHE_MAX_MB`` in bytes (a positive whole number of MB)."""
    value = os.environ.get(CACHE_LIMIT_VARIABLE) or str(DEFAULT_CACHE_LIMIT_MB)
    if not value.isdigit() or int(value) < 1:
        raise ArtifactError(f"{CACHE_LIMIT_VARIABLE}={value!r} must be a positive whole number of MB")
    return int(value) * 1024 * 1024


def evict(directory: Path, keep: Path, limit: int) -> list[str]:
    """Remove the least recently used artifacts until the cache holds ``limit`` bytes; never ``keep``.

    Returns the names removed. Downloads a dead worker left (``.partial-*`` older than
    :data:`STALE_PARTIAL_SECONDS`) go too; fresh ones may be another task's, in progress.
    """
    now = time.time()
    removed = []
    artifacts = []
    for entry in directory.iterdir():
        try:
            info = entry.lstat()
        except FileNotFoundError:  # another task's download, renamed into place since the listing
            continue
        if entry.name.startswith((".partial-", ".pin-")):
            if entry.name.startswith(".partial-"):
                stale = now - info.st_mtime > STALE_PARTIAL_SECONDS
            else:  # a pin shares its inode with the cached file: its ctime is the last link or unlink
                stale = now - info.st_ctime > STALE_PIN_SECONDS
            if stale:
                entry.unlink(missing_ok=True)
                removed.append(entry.name)
        elif entry.name.endswith(".artifact") and stat.S_ISREG(info.st_mode):
            artifacts.append((info.st_mtime, info.st_size, entry))
    total = sum(size for _, size, _ in artifacts)
    for _, size, entry in sorted(artifacts, key=lambda item: item[0]):
        if total <= limit:
            break
        if entry == keep:
            continue
        entry.unlink(missing_ok=True)
        total -= size
        removed.append(entry.name)
    if total > limit:
        log.warning(
            "Artifact cache %s holds %d bytes, above %s (%d MB): %s alone is larger",
            directory,
            total,
            CACHE_LIMIT_VARIABLE,
            limit // (1024 * 1024),
            keep.name,
        )
    if removed:
        log.info("Evicted from the artifact cache %s: %s", directory, ", ".join(removed))
    return removed


def read_published_sha256(checksum_url: str, conn_id: str | None = None) -> str:
    """The hex digest from a ``sha256sum``-style file (``<hex>  <name>``)."""
    location = ObjectStoragePath(checksum_url, conn_id=conn_id)
    try:
        text = location.read_text()
    except FileNotFoundError:
        raise ArtifactError(
            f"checksum file {checksum_url} does not exist: was this version published?"
        ) from None
    except OSError as error:
        raise ArtifactError(f"cannot read checksum file {checksum_url}: {error}") from None
    digest = text.split()[0].lower() if text.split() else ""
    if not _SHA256.match(digest):
        raise ArtifactError(f"checksum file {checksum_url} does not start with a SHA-256 hex digest")
    return digest


class ArtifactChangedError(ArtifactError):
    """The published artifact is not the one the plan (or the trigger) expects."""

    def __init__(self, url: str, *, published: str, expected: str) -> None:
        super().__init__(f"artifact {url} is published with SHA-256 {published}, not the expected {expected}")
        self.url, self.published, self.expected = url, published, expected

    def since_approval(self, untouched: str) -> str:
        """The refusal of a step working from an approved plan; ``untouched`` says what it left alone."""
        return (
            f"{self} (the approved plan's): it was republished after the plan. {untouched}; trigger a "
            "new release so that the new artifact is checked and approved"
        )


def fetch_artifact(
    url: str, checksum_url: str, *, conn_id: str | None = None, expected_sha256: str | None = None
) -> Artifact:
    """Return a verified local copy of the artifact at ``url`` (from the cache when present).

    :param expected_sha256: the digest the caller requires (the approved plan's); a published
        checksum that differs raises :class:`ArtifactChangedError` before any download.
    """
    expected = read_published_sha256(checksum_url, conn_id)
    if expected_sha256 and expected != expected_sha256.lower():
        raise ArtifactChangedError(url, published=expected, expected=expected_sha256.lower())
    limit = cache_limit_bytes()
    cached = cache_dir() / f"{expected}.artifact"
    if cached.exists() and _is_own_file(cached) and sha256_of(cached) == expected:
        os.utime(cached)  # recently used: evicted last
        evict(cached.parent, keep=cached, limit=limit)
        return Artifact(url=url, sha256=expected, size=cached.stat().st_size, path=cached)

    source = ObjectStoragePath(url, conn_id=conn_id)
    digest = hashlib.sha256()
    handle, partial_name = tempfile.mkstemp(dir=cached.parent, prefix=".partial-")
    partial = Path(partial_name)
    try:
        with os.fdopen(handle, "wb") as target:
            try:
                with source.open("rb") as stream:
                    while chunk := stream.read(_CHUNK):
                        digest.update(chunk)
                        target.write(chunk)
            except FileNotFoundError:
                raise ArtifactError(f"artifact {url} does not exist: was this version published?") from None
        actual = digest.hexdigest()
        if actual != expected:
            raise ArtifactError(
                f"artifact {url} has SHA-256 {actual} but {checksum_url} says {expected}: "
                "refusing to deploy a file that is not the published one"
            )
        partial.replace(cached)
    finally:
        partial.unlink(missing_ok=True)
    evict(cached.parent, keep=cached, limit=limit)
    return Artifact(url=url, sha256=expected, size=cached.stat().st_size, path=cached)


@contextlib.contextmanager
def pinned(artifact: Artifact) -> Iterator[Artifact]:
    """``artifact`` at a path of its own for the block: another task's eviction (the cache at
    its bound, another version fetched) cannot remove it from under a wave's uploads.

    A hard link beside the cached file (same file system, no copy), removed at the end; one a
    killed task left behind is removed by :func:`evict` after :data:`STALE_PIN_SECONDS`.
    """
    pin = artifact.path.parent / f".pin-{artifact.sha256[:12]}-{secrets.token_hex(8)}"
    try:
        os.link(artifact.path, pin)
    except FileNotFoundError:
        raise ArtifactError(
            f"artifact {artifact.url} was evicted from the cache {artifact.path.parent} as it was "
            "verified: retry the step"
        ) from None
    try:
        yield dataclasses.replace(artifact, path=pin)
    finally:
        pin.unlink(missing_ok=True)


def sha256_of(path: Path | ObjectStoragePath) -> str:
    """SHA-256 of a local file or of an object in a store, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def release_artifact(deploy: DeploySettings, version: str, *, expected_sha256: str | None = None) -> Artifact:
    """The verified artifact of ``version``, from the environment's ``deploy`` settings; with
    ``expected_sha256``, only that artifact (see :func:`fetch_artifact`)."""
    return fetch_artifact(
        deploy.artifact_url_for(version), deploy.checksum_url_for(version), expected_sha256=expected_sha256
    )
