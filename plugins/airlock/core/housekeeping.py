"""Housekeeping rules, without Airflow: which retention a run gets, which tables hold approval
evidence, and what ``airflow db clean`` reports (rows purged per table)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: The tables approval evidence lives in: HITL detail rows (and their history) are deleted with
#: their task instance (ON DELETE CASCADE), the plan an approver saw travelled in XComs, and
#: ``log`` is Airflow's audit log (who approved, triggered, cleared). A table whose purge reaches
#: one of these through ``airflow db clean``'s dependencies (dag_run, dag_version, trigger, dag)
#: counts as evidence too.
EVIDENCE_TABLES = frozenset({"task_instance", "task_instance_history", "xcom", "log"})


class RetentionError(ValueError):
    """A run asked to keep less than ``include/housekeeping.yaml`` keeps."""


def run_retention_days(field: str, configured: int, asked: int | None) -> int:
    """The retention a run uses: its param, which may keep more than the file but never less."""
    if asked is None:
        return configured
    if asked < configured:
        raise RetentionError(
            f"{field}={asked} asks to keep less than include/housekeeping.yaml's {field}: "
            f"{configured}. A run may keep more, never less: shortening a retention is a reviewed "
            "change to that file"
        )
    return asked


def split_evidence_tables(
    dependents: Mapping[str, Iterable[str]], selected: Iterable[str]
) -> tuple[list[str], list[str]]:
    """``selected`` as (tables whose purge cannot reach approval evidence, the others).

    :param dependents: ``airflow db clean``'s table -> the tables it purges along with it.
    """

    def reaches_evidence(table: str, seen: set[str]) -> bool:
        if table in EVIDENCE_TABLES:
            return True
        seen.add(table)
        return any(reaches_evidence(d, seen) for d in dependents.get(table, ()) if d not in seen)

    plain, evidence = [], []
    for table in selected:
        (evidence if reaches_evidence(table, set()) else plain).append(table)
    return plain, evidence


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
