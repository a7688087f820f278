"""Where an environment's backups live: a directory reached through ``ObjectStoragePath``.

On a local (``file://``) destination a dump is written under ``.incomplete-<name>`` and renamed
into place with its manifest; on an object store the files are uploaded first and the manifest
last. Every file is 0600 and every directory 0700 on a local destination, and everything written
is fsynced before it becomes visible.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import ObjectStoragePath

from airlock.config import Environment
from airlock.core.backups import (
    MANIFEST,
    MANIFEST_TEMPORARY,
    BackupError,
    BackupFile,
    BackupManifest,
    BackupVerificationError,
    backup_settings,
)
from airlock.hooks.artifacts import sha256_of

log = logging.getLogger(__name__)

INCOMPLETE_PREFIX = ".incomplete-"
_CHUNK = 4 * 1024 * 1024


class BackupStore:
    """The backup directory of one environment, reached through ``ObjectStoragePath``.

    Only the environment's own backups are listed (and so ever restored or pruned), even when
    several environments share one destination.

    :param destination: URL of the directory (``file:///...``, ``s3://bucket/prefix``, ...)
    :param environment: name of the environment whose backups these are
    :param conn_id: Airflow connection of a remote store; none for ``file://``
    """

    def __init__(self, destination: str, environment: str, conn_id: str | None = None) -> None:
        self.destination = destination
        self.environment = environment
        self.conn_id = conn_id
        self.root = ObjectStoragePath(destination, conn_id=conn_id)

    @classmethod
    def of(cls, environment: Environment) -> BackupStore:
        settings = backup_settings(environment)
        return cls(settings.destination, environment.name, settings.conn_id)

    def owns(self, directory_name: str, manifest: BackupManifest) -> bool:
        return manifest.environment == self.environment and manifest.name == directory_name

    @property
    def local_root(self) -> Path | None:
        """The destination as a local directory, or None for a remote store."""
        if self.root.protocol in ("file", "local", ""):
            return Path(self.root.path)
        return None

    def exists(self, name: str) -> bool:
        """Whether anything (a backup or an upload in progress) already has this name."""
        return (self.root / name).exists()

    def backups(self) -> list[BackupManifest]:
        """Every complete backup (one with a readable manifest), oldest first."""
        manifests = []
        if not self.root.exists():
            return []
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            manifest_path = entry / MANIFEST
            if not manifest_path.exists():
                continue
            try:
                manifest = BackupManifest.from_json(manifest_path.read_text())
            except (ValueError, TypeError, KeyError) as error:
                log.warning("Ignoring %s: unreadable manifest (%s)", manifest_path, error)
                continue
            if self.owns(entry.name, manifest):
                manifests.append(manifest)
        return sorted(manifests, key=lambda m: (m.finished_at, m.name))

    def manifest(self, name: str) -> BackupManifest:
        path = self.root / name / MANIFEST
        if not path.exists():
            known = ", ".join(m.name for m in self.backups()[-5:]) or "none"
            raise BackupError(f"No backup {name!r} in {self.destination} (newest: {known})")
        manifest = BackupManifest.from_json(path.read_text())
        if not self.owns(name, manifest):
            raise BackupError(
                f"{self.destination}/{name} is a backup of {manifest.environment} ({manifest.name}), "
                f"not of {self.environment}"
            )
        return manifest

    @contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A private local directory to dump into; removed unless :meth:`publish` moved it."""
        local = self.local_root
        if local is not None:
            local.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory = local / f"{INCOMPLETE_PREFIX}{name}"
            shutil.rmtree(directory, ignore_errors=True)  # a killed earlier try of this very backup
            directory.mkdir(mode=0o700)
        else:
            directory = Path(tempfile.mkdtemp(prefix=f"airlock-backup-{name}-"))
        try:
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def publish(self, staged: Path, manifest: BackupManifest) -> None:
        """Make a staged backup visible: the manifest is the last thing written."""
        _write_private(staged / MANIFEST, manifest.to_json())
        local = self.local_root
        if local is not None:
            for path in [staged, *staged.rglob("*")]:
                path.chmod(0o700 if path.is_dir() else 0o600)
            _fsync_tree(staged)
            os.rename(staged, local / manifest.name)
            _fsync(local)
            return
        target = self.root / manifest.name
        for relative in manifest.files:
            with (staged / relative).open("rb") as source, (target / relative).open("wb") as upload:
                shutil.copyfileobj(source, upload, _CHUNK)
        (target / MANIFEST).write_text(manifest.to_json())

    def write_manifest(self, manifest: BackupManifest) -> None:
        """Replace a published backup's manifest (e.g. to mark it verified), atomically."""
        directory = self.root / manifest.name
        local = self.local_root
        if local is not None:
            temporary = local / manifest.name / f"{MANIFEST_TEMPORARY}{uuid.uuid4().hex}"
            try:
                _write_private(temporary, manifest.to_json())
                os.replace(temporary, local / manifest.name / MANIFEST)
            finally:
                temporary.unlink(missing_ok=True)
            return
        (directory / MANIFEST).write_text(manifest.to_json())

    @contextmanager
    def local_copy(self, name: str) -> Iterator[Path]:
        """The backup's directory on local disk: itself when local, else a private download."""
        local = self.local_root
        if local is not None:
            yield local / name
            return
        directory = Path(tempfile.mkdtemp(prefix=f"airlock-restore-{name}-"))
        try:
            manifest = self.manifest(name)
            for relative in [*manifest.files, MANIFEST]:
                target = directory / relative
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                with (self.root / name / relative).open("rb") as source, target.open("wb") as copy:
                    shutil.copyfileobj(source, copy, _CHUNK)
            yield directory
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def remove(self, name: str) -> None:
        """Delete one backup, manifest first so a half-deleted backup never looks complete."""
        directory = self.root / name
        with suppress(FileNotFoundError):
            (directory / MANIFEST).unlink()
        local = self.local_root
        if local is not None:
            shutil.rmtree(local / name, ignore_errors=True)
        else:
            directory.fs.rm(directory.path, recursive=True)

    def stale_incomplete(self, older_than: timedelta, now: datetime) -> list[str]:
        """Local staging directories left by killed runs, older than ``older_than``."""
        local = self.local_root
        if local is None or not local.is_dir():
            return []
        ours = re.compile(rf"^{re.escape(INCOMPLETE_PREFIX + self.environment)}-\d{{8}}T\d{{6}}Z(-[a-z-]+)?$")
        stale = []
        for entry in local.iterdir():
            if ours.match(entry.name) and entry.is_dir():
                # A dump in progress keeps writing its files: their newest change counts.
                newest = max(path.stat().st_mtime for path in [entry, *entry.rglob("*")])
                if now - datetime.fromtimestamp(newest, UTC) > older_than:
                    stale.append(entry.name)
        return sorted(stale)


def file_digests(directory: Path) -> dict[str, BackupFile]:
    """SHA-256 and size of every file under ``directory``, by path relative to it: a manifest's files."""
    return {
        path.relative_to(directory).as_posix(): BackupFile(sha256_of(path), path.stat().st_size)
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def check_files(directory: Path, manifest: BackupManifest) -> None:
    """Every file of the manifest is there with its size and SHA-256; nothing else is."""
    problems = []
    present = {
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and not p.name.startswith(MANIFEST_TEMPORARY)
    }
    for relative, expected in manifest.files.items():
        path = directory / relative
        if relative not in present:
            problems.append(f"{relative} is missing")
        elif path.stat().st_size != expected.bytes:
            problems.append(f"{relative} has {path.stat().st_size} bytes, the manifest says {expected.bytes}")
        elif sha256_of(path) != expected.sha256:
            problems.append(f"{relative} does not match its SHA-256 in the manifest")
    extra = sorted(present - set(manifest.files) - {MANIFEST})
    problems += [f"{relative} is not in the manifest" for relative in extra]
    if problems:
        raise BackupVerificationError(f"Backup {manifest.name} is damaged: " + "; ".join(problems))


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


def _fsync(path: Path) -> None:
    """Flush a file's or a directory's (its entries') changes to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            _fsync(path)
    _fsync(root)
