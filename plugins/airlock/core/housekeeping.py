"""What ``airflow db clean`` reports, read without Airflow: rows purged per table."""

from __future__ import annotations

import re

_CHECKING = re.compile(r"^Checking table (\S+)")
_FOUND = re.compile(r"^Found (\d+) rows meeting deletion criteria")


def purged_rows(output: str) -> dict[str, int]:
    """Rows per table from ``airflow db clean`` output (``Checking table x`` / ``Found n rows``)."""
    rows: dict[str, int] = {}
    table = None
    for line in output.splitlines():
        if match := _CHECKING.match(line.strip()):
            table = match.group(1)
        elif (match := _FOUND.match(line.strip())) and table is not None:
            rows[table] = int(match.group(1))
            table = None
    return rows
