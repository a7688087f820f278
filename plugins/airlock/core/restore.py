"""What a restore will do, as the approvers read it, the names of the databases it makes, and what
a dump archive says about the database itself (encoding, locale, ACL, settings).

No Airflow here: plain data and text, unit-tested without services.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from airlock.core.backups import BACKUP_NAME
from airlock.core.markdown import inline

# The ``backup`` param of ``restore_<env>``: a backup's name, or empty for the newest verified one.
BACKUP_PARAM_PATTERN = rf"^$|^{BACKUP_NAME}$"
POSTGRES_NAME_BYTES = 63  # PostgreSQL cuts longer identifiers silently


@dataclass(frozen=True)
class RestorePlan:
    """What ``restore_<env>`` is about to do; its Markdown is the approval request's body.

    :param environment: name of the environment
    :param database: name of the live database the backup replaces
    :param backup: the chosen backup's :meth:`BackupManifest.summary`
    :param triggered_by: who asked for the restore
    :param reason: why (free text from the trigger form; may be empty)
    """

    environment: str
    database: str
    backup: dict[str, Any]
    triggered_by: str
    reason: str

    def to_markdown(self) -> str:
        backup = self.backup
        verified = (
            f"verified at {backup['verified_at']}"
            if backup["verified_at"]
            else "**not verified**: its checksums and row counts are checked before the swap"
        )
        return "\n".join(
            [
                f"## Restore the {self.environment} database `{self.database}`",
                "",
                f"- Requested by **{inline(self.triggered_by)}**"
                + (f": {inline(self.reason)}" if self.reason else ""),
                f"- Backup `{backup['name']}` ({backup['kind']}), taken {backup['finished_at']}, {verified}",
                f"- {backup['tables']} tables, {backup['rows']} rows, {backup['bytes']} bytes",
                "",
                "### What happens",
                "",
                f"1. A safety backup of `{self.database}` as it is now (kind pre-restore).",
                f"2. The backup is restored into a new database next to `{self.database}`; its row counts "
                "must equal the backup's manifest. Nothing live changes until here.",
                f"3. Swap: `{self.database}` is renamed `{self.database}_before_restore_<time>` and kept; "
                "the restored database takes its name. Open connections are closed; applications reconnect.",
                "4. The environment's SQL smoke tests run; if one fails the swap is undone.",
                "",
                f"**Writes made after {backup['finished_at']} will not be in `{self.database}`** "
                "(they stay in the kept database).",
            ]
        )


def sibling_name(database: str, suffix: str) -> str:
    """``<database><suffix>`` within PostgreSQL's 63-byte limit, cutting ``database`` (never mid-letter)."""
    return database.encode()[: POSTGRES_NAME_BYTES - len(suffix.encode())].decode(errors="ignore") + suffix


STAMP_FORMAT = "%Y%m%d%H%M%S"  # 14 digits, UTC


def restore_names(database: str, when: datetime, taken: Collection[str]) -> dict[str, str]:
    """The names of a restore's databases (see :func:`names_of_restore`), stamped with ``when`` or
    the first later second none of whose names is ``taken`` (two restores in one second)."""
    while True:
        names = names_of_restore(database, when.strftime(STAMP_FORMAT))
        if not set(names.values()) & set(taken):
            return names
        when += timedelta(seconds=1)


def names_of_restore(database: str, stamp: str) -> dict[str, str]:
    """The databases of the restore stamped ``stamp``, each beside ``database``:

    - ``restored``: the copy the backup is restored into, until the swap;
    - ``unchecked``: the previous live database from the swap until the smoke tests' verdict;
    - ``kept``: the previous live database once the restored one passed them;
    - ``failed``: the restored copy once it failed them (and the swap was undone).
    """
    return {
        kind: sibling_name(database, f"_{label}_{stamp}")
        for kind, label in (
            ("restored", "restore"),
            ("unchecked", "unchecked_restore"),
            ("kept", "before_restore"),
            ("failed", "failed_restore"),
        )
    }


def _stamped(database: str, label: str) -> re.Pattern[str]:
    prefix = sibling_name(database, f"_{label}_{'0' * 14}")[:-14]
    return re.compile(rf"^{re.escape(prefix)}(?P<stamp>[0-9]{{14}})$")


def interrupted_restore_pattern(database: str) -> re.Pattern[str]:
    """Names of the restored copies (``<database>_restore_<stamp>``) that were never swapped in.

    Such a copy is only ever left by a restore that died before its swap committed: a swap renames
    the copy to the live name in the same transaction, so a name matching this is never live.
    """
    return _stamped(database, "restore")


def unchecked_swap_pattern(database: str) -> re.Pattern[str]:
    """Names of previous live databases (``<database>_unchecked_restore_<stamp>``) whose restore
    swapped in but never learnt the smoke tests' verdict: its process died after the swap."""
    return _stamped(database, "unchecked_restore")


@dataclass(frozen=True)
class AdminRights:
    """What the role of a restore's admin connection may do on its server."""

    role: str
    superuser: bool
    createdb: bool
    member_of_owner: bool
    signal_backend: bool

    def missing(self, owner: str) -> list[str]:
        """What the role lacks for a restore's create and swap, each as the fix an operator applies."""
        if self.superuser:
            return []
        needs = []
        if not self.createdb:
            needs.append(f"ALTER ROLE {self.role} CREATEDB")
        if not self.member_of_owner:
            needs.append(f"GRANT {owner} TO {self.role} (the database's owner)")
        if not self.signal_backend:
            needs.append(f"GRANT pg_signal_backend TO {self.role} (to end the database's sessions)")
        return needs


# -- what the archive says about the database itself ----------------------------------------------

# The entries of ``pg_restore --create --list`` about the database itself, not its objects:
# its CREATE DATABASE, ALTER DATABASE ... SET (and ALTER ROLE ... IN DATABASE ... SET), its ACL,
# comment and security labels. pg_dump (11 and newer) archives them always; pg_restore applies
# them only with --create, which would recreate the database under its dumped (live) name.
_DATABASE_ENTRY = re.compile(
    r"^\d+; \d+ \d+ (?:DATABASE(?: PROPERTIES)? - |(?:COMMENT|ACL|SECURITY LABEL) - DATABASE )"
)
# Options of pg_dump's CREATE DATABASE that fix how text is stored and sorted (TEMPLATE is always
# template0 here; TABLESPACE and OWNER follow the live database instead).
CREATE_OPTIONS = (
    "ENCODING",
    "LOCALE_PROVIDER",
    "LOCALE",
    "LC_COLLATE",
    "LC_CTYPE",
    "ICU_LOCALE",
    "ICU_RULES",
)
_CREATE = re.compile(rb"^CREATE DATABASE .* WITH TEMPLATE = template0 (?P<options>.*);$")
_OPTION = re.compile(r"(?P<name>[A-Z_]+) = (?:'(?P<quoted>(?:[^']|'')*)'|(?P<bare>[^\s']+))")
_ENCODING_NAME = re.compile(r"^[A-Za-z0-9_]+$")
# The session header pg_restore writes after each \connect; this session sets its own.
_HEADER = re.compile(rb"^(?:SET [a-z_]+ = .*;|SELECT pg_catalog\.set_config\('search_path', '', false\);)$")
_OWNER = re.compile(rb"^ALTER DATABASE .* OWNER TO .*;$")


def database_entries(listing: str) -> list[str]:
    """The lines of ``pg_restore --create --list`` that describe the database itself."""
    return [line for line in listing.splitlines() if _DATABASE_ENTRY.match(line)]


@dataclass(frozen=True)
class DatabaseProperties:
    """What a dump archive records about the dumped database itself, to give its restored copy.

    :param create_options: CREATE DATABASE options among :data:`CREATE_OPTIONS`, e.g.
        ``{"ENCODING": "LATIN1", "LOCALE_PROVIDER": "libc", "LOCALE": "C"}``
    :param statements: pg_dump's SQL for the database's ACL, settings, comment and security
        labels, in the archive's encoding; it names the database by its dumped name, so it runs in
        the swap's transaction, right after the restored copy takes that name
    """

    create_options: dict[str, str]
    statements: bytes

    @property
    def encoding(self) -> str:
        return self.create_options.get("ENCODING", "UTF8")


def database_properties(script: bytes) -> DatabaseProperties:
    """Parse what ``pg_restore --create`` prints for the :func:`database_entries` of an archive.

    A :class:`ValueError` when the script has no ``CREATE DATABASE`` of the shape pg_dump writes.
    """
    options: dict[str, str] | None = None
    statements: list[bytes] = []
    for line in script.splitlines():
        create = _CREATE.match(line)
        if create and options is None:
            options = _create_options(create["options"].decode("ascii", errors="strict"))
        elif line.startswith(b"\\") or _HEADER.match(line) or _OWNER.match(line):
            continue  # psql meta-commands, the session header, the owner (the live database's)
        elif options is not None:
            statements.append(line)
    if options is None:
        raise ValueError(
            "the archive's database entries hold no CREATE DATABASE ... WITH TEMPLATE = template0"
        )
    encoding = options.get("ENCODING", "UTF8")
    if not _ENCODING_NAME.match(encoding):
        raise ValueError(f"the archive names an unusable encoding {encoding!r}")
    return DatabaseProperties(create_options=options, statements=b"\n".join(statements).strip())


def _create_options(text: str) -> dict[str, str]:
    found = {}
    for option in _OPTION.finditer(text):
        if option["name"] in CREATE_OPTIONS:
            quoted = option["quoted"]
            found[option["name"]] = quoted.replace("''", "'") if quoted is not None else option["bare"]
    return found
