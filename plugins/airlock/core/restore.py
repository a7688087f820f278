"""What a restore will do, as the approvers read it, and the names of the databases it makes.

No Airflow here: plain data and text, unit-tested without services.
"""

from __future__ import annotations

from dataclasses import dataclass
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
