"""Where archived logs go: ``logs.archive_to``, reached through ``ObjectStoragePath``.

One object per compressed log, at ``<archive_to>/<environment>/<host>/<day>/<directory>/<path>``:
``<day>`` is the UTC day the log was last written (so the archive's retention counts from the
log's own age, and a rerun finds what it archived before), ``<directory>`` the configured log
directory on the host (without its leading ``/``), ``<path>`` the file's path inside it.

An upload counts only once read back: :meth:`LogArchive.store` hashes what it sends and what the
store then returns, and a copy whose SHA-256 differs is removed and reported as failed. A name
already taken by different content (a rotated ``app.log.1.gz`` of the same day) gets the new
content's short hash appended, so nothing archived is ever overwritten.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import BinaryIO

from airflow.sdk import ObjectStoragePath

from airlock.config import Environment, Host
from airlock.hooks.artifacts import sha256_of

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


class ArchiveError(RuntimeError):
    """The archive store cannot be reached, or an upload did not read back as sent."""


class LogArchive:
    """The archive prefix of one host.

    :param url: ``logs.archive_to``
    :param conn_id: ``logs.archive_conn_id`` (none for ``file://``)
    :param environment: environment name
    :param host: host name
    """

    def __init__(self, url: str, conn_id: str | None, environment: str, host: str) -> None:
        self.url = url
        self.conn_id = conn_id
        self.prefix = (environment, host)

    @cached_property
    def root(self) -> ObjectStoragePath:
        return ObjectStoragePath(self.url, conn_id=self.conn_id).joinpath(*self.prefix)

    @classmethod
    def of(cls, environment: Environment, host: Host) -> LogArchive | None:
        settings = environment.logs
        if not settings.archive_to:
            return None
        return cls(settings.archive_to, settings.archive_conn_id, environment.name, host.name)

    def check(self, where: str) -> None:
        """Fail before anything is touched when no filesystem serves the URL's scheme."""
        try:
            self.root.fs  # noqa: B018 (resolves the store: its provider and connection)
        except (ValueError, ImportError) as error:
            raise ArchiveError(
                f"logs.archive_to in {where} is {self.url!r}, which no installed filesystem serves "
                f"({error}): install the provider of that store (e.g. apache-airflow-providers-amazon "
                "for s3://) or archive to file://; nothing was touched"
            ) from None

    def __str__(self) -> str:
        return str(self.root)

    def target(self, directory: str, relative: str, mtime: float) -> ObjectStoragePath:
        day = datetime.fromtimestamp(mtime, UTC).date().isoformat()
        return self.root / day / directory.strip("/") / relative

    def store(self, source: BinaryIO, target: ObjectStoragePath) -> tuple[ObjectStoragePath, str]:
        """Upload ``source`` to ``target`` (or beside it, when taken by other content) and read it
        back; returns where it is and its SHA-256. Raises :class:`ArchiveError` on a mismatch."""
        if target.exists():
            existing = sha256_of(target)
            incoming = target.with_name(f"{target.name}.incoming")
            digest = self._upload(source, incoming)
            if digest == existing:  # archived by an earlier try of this very cleanup
                _remove(incoming)
                return target, digest
            beside = target.with_name(f"{target.name}.{digest[:12]}")
            if beside.exists() and sha256_of(beside) == digest:
                _remove(incoming)
                return beside, digest
            incoming.move(beside)
            target = beside
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = self._upload(source, target)
        if (stored := sha256_of(target)) != digest:
            _remove(target)
            raise ArchiveError(
                f"{target} read back with SHA-256 {stored}, not the {digest} sent: removed from the "
                "archive, the file stays on the host"
            )
        return target, digest

    @staticmethod
    def _upload(source: BinaryIO, target: ObjectStoragePath) -> str:
        digest = hashlib.sha256()
        with target.open("wb") as sink:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                sink.write(chunk)
        return digest.hexdigest()

    def expired_days(self, retention_days: int | None, today: date) -> list[ObjectStoragePath]:
        """The day folders of logs last written more than ``retention_days`` before ``today``."""
        if retention_days is None or not self.root.exists():
            return []
        oldest_kept = today - timedelta(days=retention_days)
        return sorted(
            (day for day in self._days() if date.fromisoformat(day.name) < oldest_kept),
            key=lambda day: day.name,
        )

    def remove(self, day: ObjectStoragePath) -> None:
        day.fs.rm(day.path, recursive=True)

    def _days(self) -> Iterator[ObjectStoragePath]:
        for entry in self.root.iterdir():
            try:
                date.fromisoformat(entry.name)
            except ValueError:
                continue  # not a day folder of Airlock's: never touched
            if entry.is_dir():
                yield entry


def _remove(path: ObjectStoragePath) -> None:
    path.fs.rm_file(path.path)  # through the store's own filesystem (and its connection)
