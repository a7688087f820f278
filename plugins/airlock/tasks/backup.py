"""Backups of an environment's PostgreSQL database: dump, manifest, verify by restore, retention.

A backup is a directory ``<destination>/<name>/`` holding the ``pg_dump`` output and a
``manifest.json`` (:class:`BackupManifest`). The manifest is written last, so a directory without
one is never a backup: a dump killed half-way leaves nothing that looks complete. On a local
(``file://``) destination the dump is written under ``.incomplete-<name>`` and renamed into place
with its manifest; on an object store the files are uploaded first and the manifest last. Every
file is 0600 and every directory 0700 on a local destination.

The row count of every table is taken from the very snapshot ``pg_dump`` saves (the dump runs on
a snapshot exported by the counting transaction, counting and dumping side by side), so
verification (a real restore into a scratch database) can compare counts exactly, even on a
busy database.

Retention (:func:`plan_retention`) keeps the newest verified backup of each of the last N hours,
days, weeks and months, never deletes the newest verified backup, keeps backups newer than it
(not yet verified, or kept for a failed verification's investigation) and keeps the safety
backups taken before releases and restores for ``retention.safety``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import psycopg
from airflow.sdk import ObjectStoragePath
from psycopg import sql

from airlock.config import PROJECT_ROOT, BackupRetention, BackupSettings, Environment
from airlock.hooks.artifacts import sha256_of

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_TEMPORARY = f".{MANIFEST}."  # a manifest being replaced: never part of the backup
INCOMPLETE_PREFIX = ".incomplete-"
ROW_COUNT_TABLES = (PROJECT_ROOT / "include" / "sql" / "backup_tables.sql").read_text()
Kind = Literal["scheduled", "manual", "pre-release", "pre-restore"]
SAFETY_KINDS = frozenset({"pre-release", "pre-restore"})
_CHUNK = 4 * 1024 * 1024


class BackupError(RuntimeError):
    """A backup could not be taken, read or verified; the message says which and why."""


class BackupVerificationError(BackupError):
    """A backup's files or contents do not match its manifest."""


@dataclass(frozen=True)
class BackupFile:
    sha256: str
    bytes: int


@dataclass(frozen=True)
class BackupManifest:
    """What a backup holds and how it was made; the JSON file next to the dump."""

    name: str
    environment: str
    kind: str
    database: str
    server_version: str
    pg_dump_version: str
    format: str
    compression: int
    started_at: datetime
    finished_at: datetime
    files: dict[str, BackupFile]
    row_counts: dict[str, int]
    dag_id: str | None = None
    run_id: str | None = None
    verified_at: datetime | None = None
    verified_by: str | None = None

    @property
    def size(self) -> int:
        return sum(f.bytes for f in self.files.values())

    @property
    def verified(self) -> bool:
        return self.verified_at is not None

    @property
    def dump_path(self) -> str:
        """The path ``pg_restore`` reads, relative to the backup directory."""
        return "dump" if self.format == "directory" else "database.dump"

    def to_json(self) -> str:
        data = asdict(self)
        for key in ("started_at", "finished_at", "verified_at"):
            data[key] = data[key].isoformat() if data[key] else None
        data["bytes"] = self.size
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BackupManifest:
        data = json.loads(text)
        data.pop("bytes", None)
        for key in ("started_at", "finished_at", "verified_at"):
            data[key] = datetime.fromisoformat(data[key]) if data.get(key) else None
        data["files"] = {path: BackupFile(**digest) for path, digest in data["files"].items()}
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """The plain-JSON facts a task returns (XCom) and a plan shows."""
        return {
            "name": self.name,
            "kind": self.kind,
            "finished_at": self.finished_at.isoformat(),
            "bytes": self.size,
            "tables": len(self.row_counts),
            "rows": sum(self.row_counts.values()),
            "verified_at": self.verified_at.isoformat() if self.verified_at else None,
        }


def backup_name(environment: str, moment: datetime, kind: str) -> str:
    stamp = moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{environment}-{stamp}" if kind in ("scheduled", "manual") else f"{environment}-{stamp}-{kind}"


# -- where backups live ---------------------------------------------------------------------------


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
            _fsync_directory(local)
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


def _write_private(path: Path, text: str) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
    _fsync_directory(root)


# -- talking to PostgreSQL ------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseAddress:
    """How libpq reaches one database of an Airflow Postgres connection; the password stays in env."""

    host: str
    port: int
    user: str
    password: str | None = field(repr=False)
    dbname: str
    sslmode: str | None = None

    @classmethod
    def of(cls, conn_id: str) -> DatabaseAddress:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        connection = PostgresHook.get_connection(conn_id)
        if not connection.schema:
            raise BackupError(f"Connection {conn_id} names no database (its schema field is empty)")
        return cls(
            host=connection.host or "localhost",
            port=connection.port or 5432,
            user=connection.login or "postgres",
            password=connection.password or None,
            dbname=connection.schema,
            sslmode=(connection.extra_dejson or {}).get("sslmode"),
        )

    def on(self, dbname: str) -> DatabaseAddress:
        return replace(self, dbname=dbname)

    def libpq_env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": self.dbname,
            "PGAPPNAME": "airlock-backup",
            "PGCONNECT_TIMEOUT": "10",
        }
        env.pop("PGPASSWORD", None)
        if self.password:
            env["PGPASSWORD"] = self.password
        if self.sslmode:
            env["PGSSLMODE"] = self.sslmode
        return env

    def connect(self, **options: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.dbname,
            sslmode=self.sslmode or "prefer",
            application_name="airlock-backup",
            connect_timeout=10,
            **options,
        )


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(
            f"{name} is not installed on this worker: install the PostgreSQL client tools "
            "(package postgresql-client) of the server's major version or newer"
        )
    return path


def _run_tool(argv: Sequence[str], env: dict[str, str], timeout: timedelta) -> None:
    """Run pg_dump/pg_restore; on failure raise with the tail of its error output (never the env)."""
    log.info("Running %s", " ".join(argv))
    result = subprocess.run(
        list(argv), env=env, capture_output=True, text=True, timeout=timeout.total_seconds(), check=False
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise BackupError(f"{Path(argv[0]).name} failed (exit {result.returncode}): {tail}")


def row_counts(connection: psycopg.Connection[Any]) -> dict[str, int]:
    """Exact row count of every user table, in the connection's current transaction."""
    tables = connection.execute(ROW_COUNT_TABLES).fetchall()
    counts = {}
    for schema, table in tables:
        query = sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, table))
        counts[f"{schema}.{table}"] = connection.execute(query).fetchone()[0]
    return counts


def backup_settings(environment: Environment) -> BackupSettings:
    if environment.backup is None:
        raise BackupError(
            f"Environment {environment.name} has no backup section: add one to its environment file"
        )
    return environment.backup


# -- taking a backup ------------------------------------------------------------------------------


def take_backup(
    environment: Environment,
    *,
    kind: Kind = "scheduled",
    dag_id: str | None = None,
    run_id: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BackupManifest:
    """Dump the environment's database from one snapshot and publish it with its manifest."""
    settings = backup_settings(environment)
    store = BackupStore.of(environment)
    address = DatabaseAddress.of(environment.database.conn_id)
    pg_dump = _tool("pg_dump")
    started = clock()
    name = backup_name(environment.name, started, kind)
    while (store.root / name).exists():  # names have one-second resolution: never reuse one
        time.sleep(0.2)
        started = clock()
        name = backup_name(environment.name, started, kind)
    with store.staging(name) as staged:
        output = staged / ("dump" if settings.format == "directory" else "database.dump")
        argv = [
            pg_dump,
            "--no-password",
            f"--format={settings.format}",
            f"--compress={settings.compression}",
            f"--file={output}",
        ]
        if settings.format == "directory":
            argv.append(f"--jobs={settings.jobs}")
        with address.connect(autocommit=True) as connection:
            connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot, database, server_version = connection.execute(
                "SELECT pg_export_snapshot(), current_database(), current_setting('server_version')"
            ).fetchone()
            argv.append(f"--snapshot={snapshot}")
            log.info("Dumping %s (PostgreSQL %s) from snapshot %s", database, server_version, snapshot)
            dump = subprocess.Popen(
                argv,
                env=address.libpq_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                counts = row_counts(connection)  # side by side with the dump, same snapshot
                _, errors = dump.communicate(timeout=settings.timeout.total_seconds())
            except BaseException:
                dump.kill()
                dump.wait()
                raise
            connection.execute("COMMIT")
        if dump.returncode != 0:
            tail = "\n".join(errors.strip().splitlines()[-5:])
            raise BackupError(f"pg_dump of {database} failed (exit {dump.returncode}): {tail}")
        files = {
            path.relative_to(staged).as_posix(): BackupFile(sha256_of(path), path.stat().st_size)
            for path in sorted(staged.rglob("*"))
            if path.is_file()
        }
        manifest = BackupManifest(
            name=name,
            environment=environment.name,
            kind=kind,
            database=database,
            server_version=server_version,
            pg_dump_version=_version_of(pg_dump),
            format=settings.format,
            compression=settings.compression,
            started_at=started,
            finished_at=clock(),
            files=files,
            row_counts=counts,
            dag_id=dag_id,
            run_id=run_id,
        )
        store.publish(staged, manifest)
    log.info(
        "Backup %s published: %d bytes, %d tables, %d rows",
        name,
        manifest.size,
        len(counts),
        sum(counts.values()),
    )
    return manifest


def _version_of(tool: str) -> str:
    result = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


# -- verifying ------------------------------------------------------------------------------------


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


@contextmanager
def scratch_database(server: DatabaseAddress, label: str) -> Iterator[DatabaseAddress]:
    """A new empty database on ``server``, dropped afterwards whatever happened."""
    name = f"airlock_scratch_{label}_{uuid.uuid4().hex[:8]}"[:63]
    admin = server.on("postgres")
    with admin.connect(autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield server.on(name)
    finally:
        with admin.connect(autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def restore_into(
    directory: Path,
    manifest: BackupManifest,
    target: DatabaseAddress,
    *,
    jobs: int,
    timeout: timedelta,
    keep_ownership: bool,
) -> None:
    """``pg_restore`` the backup into the (empty) database ``target``, stopping at the first error.

    ``keep_ownership``: restore owners and grants as dumped (a real restore); without it every
    object belongs to the restoring role (a scratch copy for verification).
    """
    privileges = [] if keep_ownership else ["--no-owner", "--no-acl"]
    _run_tool(
        [
            _tool("pg_restore"),
            "--no-password",
            "--exit-on-error",
            *privileges,
            f"--jobs={jobs}",
            f"--dbname={target.dbname}",
            str(directory / manifest.dump_path),
        ],
        env=target.libpq_env(),
        timeout=timeout,
    )


def compare_row_counts(manifest: BackupManifest, restored: dict[str, int]) -> None:
    differences = [
        f"{table}: {manifest.row_counts.get(table, 'absent')} in the backup, "
        f"{restored.get(table, 'absent')} restored"
        for table in sorted(set(manifest.row_counts) | set(restored))
        if manifest.row_counts.get(table) != restored.get(table)
    ]
    if differences:
        raise BackupVerificationError(
            f"Backup {manifest.name} restored with different row counts: " + "; ".join(differences[:20])
        )


def count_rows(database: DatabaseAddress, jobs: int) -> dict[str, int]:
    """Exact row count of every user table, counted over ``jobs`` connections side by side."""
    with database.connect() as connection:
        tables = connection.execute(ROW_COUNT_TABLES).fetchall()

    def count(chunk: list[tuple[str, str]]) -> dict[str, int]:
        with database.connect() as connection:
            return {
                f"{schema}.{table}": connection.execute(
                    sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, table))
                ).fetchone()[0]
                for schema, table in chunk
            }

    chunks = [tables[index::jobs] for index in range(jobs) if tables[index::jobs]]
    with ThreadPoolExecutor(max_workers=max(len(chunks), 1)) as pool:
        return {table: n for counted in pool.map(count, chunks) for table, n in counted.items()}


def verify_backup(environment: Environment, name: str, *, verified_by: str | None = None) -> BackupManifest:
    """Check the files' SHA-256, restore into a scratch database, compare row counts, mark verified.

    The checksums are computed while ``pg_restore`` runs (both only read the files); a damaged
    file is reported as such even when it also made the restore fail.
    """
    settings = backup_settings(environment)
    store = BackupStore.of(environment)
    manifest = store.manifest(name)
    server = DatabaseAddress.of(settings.verify_conn_id or environment.database.conn_id)
    with store.local_copy(name) as directory, ThreadPoolExecutor(max_workers=1) as checksums:
        files_checked = checksums.submit(check_files, directory, manifest)
        with scratch_database(server, "verify") as scratch:
            try:
                restore_into(
                    directory,
                    manifest,
                    scratch,
                    jobs=settings.jobs,
                    timeout=settings.timeout,
                    keep_ownership=False,
                )
            except BackupError:
                files_checked.result()  # a damaged file explains the failure better
                raise
            files_checked.result()
            restored = count_rows(scratch, settings.jobs)
    compare_row_counts(manifest, restored)
    verified = replace(manifest, verified_at=datetime.now(UTC), verified_by=verified_by)
    store.write_manifest(verified)
    log.info("Backup %s verified: %d tables, row counts equal", name, len(restored))
    return verified


def newest_verified(environment: Environment) -> BackupManifest | None:
    """The environment's newest verified backup, or None (also when it has no backup section)."""
    if environment.backup is None:
        return None
    verified = [m for m in BackupStore.of(environment).backups() if m.verified]
    return verified[-1] if verified else None


def require_fresh_backup(environment: Environment, now: datetime | None = None) -> BackupManifest | None:
    """Release preflight: the newest verified backup must be younger than ``backup.max_age``."""
    settings = environment.backup
    if settings is None or not settings.required_for_release:
        return None
    now = now or datetime.now(UTC)
    newest = newest_verified(environment)
    if newest is None:
        raise BackupError(
            f"{environment.name} has no verified backup: run backup_{environment.name} before releasing"
        )
    age = now - newest.finished_at
    if age > settings.max_age:
        raise BackupError(
            f"The newest verified backup of {environment.name} ({newest.name}) is {_hours(age)} old, "
            f"older than backup.max_age ({_hours(settings.max_age)}): run backup_{environment.name} first"
        )
    return newest


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:.1f} h"


# -- retention ------------------------------------------------------------------------------------

PERIODS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
}


@dataclass(frozen=True)
class RetentionPlan:
    keep: dict[str, str] = field(default_factory=dict)  # name -> why
    remove: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"keep": self.keep, "remove": self.remove}


def plan_retention(
    backups: Sequence[BackupManifest], retention: BackupRetention, now: datetime
) -> RetentionPlan:
    """Which backups stay and which go; pure, so it can be shown before anything is deleted."""
    keep: dict[str, str] = {}
    regular = sorted((b for b in backups if b.kind not in SAFETY_KINDS), key=lambda b: b.finished_at)
    verified = [b for b in regular if b.verified]
    if verified:
        keep[verified[-1].name] = "newest verified backup"
    for period, bucket_of in PERIODS.items():
        limit = getattr(retention, period)
        seen: list[tuple[int, ...]] = []
        for backup in reversed(verified):
            bucket = bucket_of(backup.finished_at.astimezone(UTC))
            if bucket in seen:
                continue
            seen.append(bucket)
            if len(seen) > limit:
                break
            keep.setdefault(backup.name, f"newest verified of its {period.removesuffix('ly')}")
    newest_verified_at = verified[-1].finished_at if verified else None
    for backup in regular:
        if not backup.verified and (newest_verified_at is None or backup.finished_at > newest_verified_at):
            keep.setdefault(backup.name, "newer than the newest verified backup (not verified)")
    for backup in backups:
        if backup.kind in SAFETY_KINDS and now - backup.finished_at <= retention.safety:
            keep[backup.name] = f"{backup.kind} safety backup younger than {retention.safety}"
    remove = [b.name for b in sorted(backups, key=lambda b: b.finished_at) if b.name not in keep]
    return RetentionPlan(keep=keep, remove=remove)


def apply_retention(
    environment: Environment, *, dry_run: bool, now: datetime | None = None
) -> dict[str, Any]:
    """Delete what :func:`plan_retention` lets go (a dry run only lists it), plus stale staging dirs."""
    settings = backup_settings(environment)
    store = BackupStore.of(environment)
    now = now or datetime.now(UTC)
    backups = store.backups()
    if not any(b.verified for b in backups):
        raise BackupError("No verified backup exists: retention deletes nothing until one does")
    plan = plan_retention(backups, settings.retention, now)
    stale = store.stale_incomplete(older_than=settings.timeout, now=now)
    for name, why in sorted(plan.keep.items()):
        log.info("Keep %s: %s", name, why)
    for name in [*plan.remove, *stale]:
        log.info("%s %s", "Would remove" if dry_run else "Removing", name)
        if not dry_run:
            store.remove(name)
    return {**plan.to_dict(), "incomplete_removed": stale, "dry_run": dry_run}
