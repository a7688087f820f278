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
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from airflow.sdk import ObjectStoragePath

from airlock.config import DeploySettings

CACHE_VARIABLE = "AIRLOCK_ARTIFACT_CACHE"
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
    directory = Path(os.environ.get(CACHE_VARIABLE) or Path(tempfile.gettempdir()) / "airlock-artifacts")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


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
    cached = cache_dir() / f"{expected}.artifact"
    if cached.exists() and sha256_of(cached) == expected:
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
    return Artifact(url=url, sha256=expected, size=cached.stat().st_size, path=cached)


def sha256_of(path: Path) -> str:
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
