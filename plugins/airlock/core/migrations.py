"""Versioned SQL migration files: names, order, fingerprints, statements and the plan's Markdown.

A release artifact ships ``migrations/`` holding ``V<version>__<description>.sql`` files and,
optionally, ``U<version>__<description>.sql`` undo scripts. Versions are dotted (or underscored)
numbers compared part by part as numbers, so ``V2 < V10`` and ``V1.1 < V1.10``; trailing zeros
drop, as in Flyway (``V1.0`` is ``V1``). A file containing the line ``-- airlock:no-transaction``
runs outside a transaction (see :mod:`airlock.hooks.migrations`, which applies them).

Everything here reads files and text only: no database, no Airflow.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

NO_TRANSACTION_MARKER = "-- airlock:no-transaction"

_MIGRATION_NAME = re.compile(r"^(?P<kind>[VU])(?P<version>\d+(?:[._]\d+)*)__(?P<description>[^.].*)\.sql$")
_NO_TRANSACTION_LINE = re.compile(r"^[ \t]*--[ \t]*airlock:no-transaction[ \t]*$", re.MULTILINE)
_ADVISORY_LOCK_NAMESPACE = "airlock.migrations"

Version = tuple[int, ...]


class MigrationError(RuntimeError):
    """Migrations cannot be read, validated or applied; the message names the file and what to do."""


@dataclass(frozen=True)
class Migration:
    """One ``V<version>__<description>.sql`` file, read and fingerprinted.

    ``version_text`` is the canonical dotted form (``V2_1`` gives ``"2.1"``, ``V3.0`` gives ``"3"``);
    it is what the history table stores. ``checksum`` is the SHA-256 of the file's bytes.
    """

    version: Version
    version_text: str
    description: str
    path: Path
    sql: str
    checksum: str
    transactional: bool = True
    undo_sql: str | None = None
    undo_path: Path | None = None

    @property
    def filename(self) -> str:
        return self.path.name


def parse_version(text: str) -> Version:
    """``"1.10"`` or ``"1_10"`` -> ``(1, 10)``; trailing zeros drop, as in Flyway (``1.0`` is ``1``)."""
    parts = [int(part) for part in re.split(r"[._]", text)]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def version_label(version: Version) -> str:
    return ".".join(str(part) for part in version)


def is_transactional(sql_text: str) -> bool:
    """False when the script has a line ``-- airlock:no-transaction``."""
    return _NO_TRANSACTION_LINE.search(sql_text) is None


def read_migration(path: Path) -> Migration:
    """Read one ``V...`` file; raise :class:`MigrationError` naming it when its name or text is bad."""
    match = _MIGRATION_NAME.match(path.name)
    if match is None or match.group("kind") != "V":
        raise MigrationError(
            f"{path.name}: not a migration file name; use V<version>__<description>.sql, "
            "e.g. V1.2__add_orders_status.sql"
        )
    content = path.read_bytes()
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MigrationError(f"{path.name}: not valid UTF-8 ({error}); save the file as UTF-8") from None
    version = parse_version(match.group("version"))
    return Migration(
        version=version,
        version_text=version_label(version),
        description=match.group("description").replace("_", " "),
        path=path,
        sql=text,
        checksum=hashlib.sha256(content).hexdigest(),
        transactional=is_transactional(text),
    )


def discover_migrations(directory: Path) -> list[Migration]:
    """Every migration in ``directory`` (not subdirectories), sorted by version, undo scripts attached.

    Every ``*.sql`` file must be a ``V`` or ``U`` script; two files of one version (``V1.1`` and
    ``V1_1`` count as one) or an undo script without its migration are refused.
    """
    if not directory.is_dir():
        raise MigrationError(f"{directory}: migrations directory does not exist")
    migrations: dict[Version, Migration] = {}
    undo_paths: dict[Version, Path] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is not None and match.group("kind") == "U":
            version = parse_version(match.group("version"))
            if version in undo_paths:
                raise MigrationError(
                    f"{path.name}: undo script for version {version_label(version)} already given by "
                    f"{undo_paths[version].name}; keep one"
                )
            undo_paths[version] = path
            continue
        migration = read_migration(path)
        if migration.version in migrations:
            raise MigrationError(
                f"{path.name}: version {migration.version_text} already used by "
                f"{migrations[migration.version].filename}; give one of them a new version"
            )
        migrations[migration.version] = migration
    for version, path in undo_paths.items():
        if version not in migrations:
            raise MigrationError(
                f"{path.name}: undo script without a migration V{version_label(version)}__*.sql"
            )
        migrations[version] = _with_undo(migrations[version], path)
    return [migrations[version] for version in sorted(migrations)]


def _with_undo(migration: Migration, path: Path) -> Migration:
    try:
        undo_sql = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise MigrationError(f"{path.name}: not valid UTF-8 ({error}); save the file as UTF-8") from None
    return replace(migration, undo_sql=undo_sql, undo_path=path)


def split_statements(script: str) -> list[str]:
    """Split a script on top-level ``;`` (ignoring quotes, comments and dollar quotes).

    Used for ``-- airlock:no-transaction`` files only: PostgreSQL runs a multi-statement query
    in one implicit transaction, which ``CREATE INDEX CONCURRENTLY`` refuses. Pieces holding
    only comments and whitespace are dropped.
    """
    statements: list[str] = []
    start = 0
    has_code = False
    index = 0
    length = len(script)
    while index < length:
        char = script[index]
        if script.startswith("--", index):
            newline = script.find("\n", index)
            index = length if newline == -1 else newline + 1
            continue
        if script.startswith("/*", index):
            end = script.find("*/", index + 2)
            index = length if end == -1 else end + 2
            continue
        if char in ("'", '"'):
            index = _end_of_quoted(script, index, char)
            has_code = True
            continue
        if char == "$" and (tag := re.match(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$", script[index:])):
            end = script.find(tag.group(0), index + len(tag.group(0)))
            index = length if end == -1 else end + len(tag.group(0))
            has_code = True
            continue
        if char == ";":
            if has_code:
                statements.append(script[start : index + 1].strip())
            start, has_code = index + 1, False
        elif not char.isspace():
            has_code = True
        index += 1
    if has_code:
        statements.append(script[start:].strip())
    return statements


def _end_of_quoted(script: str, index: int, quote: str) -> int:
    """Index just past the quoted literal starting at ``index`` (a doubled quote stays inside)."""
    position = index + 1
    while True:
        end = script.find(quote, position)
        if end == -1:
            return len(script)
        if script.startswith(quote * 2, end):
            position = end + 2
            continue
        return end + 1


def expected_filename(version_text: str, description: str) -> str:
    """The file name an applied history row came from (descriptions keep ``_`` as spaces)."""
    return f"V{version_text}__{description.replace(' ', '_')}.sql"


def advisory_lock_key(schema: str, table: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock``, the same for every run against one history table."""
    digest = hashlib.sha256(f"{_ADVISORY_LOCK_NAMESPACE}:{schema}.{table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass(frozen=True)
class AppliedMigration:
    """One row of the history table."""

    version: Version
    version_text: str
    description: str
    checksum: str


def plan_entry(migration: Migration) -> dict[str, str]:
    """A pending migration as plans and XCom carry it: file name, version and SQL."""
    return {"file": migration.filename, "version": migration.version_text, "sql": migration.sql}


def pending_migrations_markdown(pending: Sequence[Mapping[str, str]]) -> str:
    """The pending migrations with their SQL, in order, for the approver to read.

    Each entry needs ``file`` and ``sql`` (see :func:`plan_entry`). The SQL is fenced with more
    backticks than it holds in a row, so a ```` ``` ```` in a comment or a string literal cannot
    close the block early and let the rest of the script render as Markdown. A script marked
    ``-- airlock:no-transaction`` says so, since PostgreSQL cannot roll it back.
    """
    if not pending:
        return "None pending."
    blocks = []
    for entry in pending:
        script = entry["sql"].strip()
        fence = "`" * max(3, _longest_backtick_run(script) + 1)
        mode = "" if is_transactional(entry["sql"]) else " (runs outside a transaction)"
        blocks.append(f"- {_code_span(entry['file'])}{mode}\n\n{fence}sql\n{script}\n{fence}")
    return "\n\n".join(blocks)


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall(r"`+", text)), default=0)


def _code_span(text: str) -> str:
    """``text`` as inline code, even when it contains backticks."""
    ticks = "`" * (_longest_backtick_run(text) + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{padding}{text}{padding}{ticks}"
