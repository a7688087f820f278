"""What the Airlock board shows, computed from rows already read: no Airflow, no database.

The board's sources are the audit trail (releases and rollbacks), the health history (one row
per check, target and run) and the backup manifests. This module turns them into what a person
reads: the version each host serves, each host's health, the checks failing now (open alerts),
and per check a strip of its recent statuses and the trend of its values.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: Worst first: a host's health is the worst latest status of the checks aimed at it.
SEVERITY = {"critical": 3, "warn": 2, "ok": 1, "skipped": 0}
#: The app check's message names the version it saw: "healthy in 12 ms, version 1.2.0".
_SERVED = re.compile(r"\bversion (?!unknown\b)(\S+?),?(?:\s|$)")
#: How many of a check's latest results the board's strip shows.
STRIP_LENGTH = 24
#: A trend smaller than this share of the values' mean is steady.
STEADY = 0.05


@dataclass(frozen=True)
class HealthRow:
    """One row of the health history, the columns the board reads."""

    checked_at: datetime
    check: str
    target: str
    status: str
    value: float | None
    message: str
    run_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked_at": self.checked_at.isoformat(),
            "check": self.check,
            "target": self.target,
            "status": self.status,
            "value": self.value,
            "message": self.message,
            "run_id": self.run_id,
        }


@dataclass(frozen=True)
class HostChange:
    """A succeeded release or rollback as the audit trail has it: what it left on which hosts."""

    version: str
    hosts: frozenset[str]
    finished_at: datetime


def latest_per_check(rows: Iterable[HealthRow]) -> dict[tuple[str, str], HealthRow]:
    """Each (check, target)'s newest row."""
    latest: dict[tuple[str, str], HealthRow] = {}
    for row in rows:
        key = (row.check, row.target)
        if key not in latest or row.checked_at > latest[key].checked_at:
            latest[key] = row
    return latest


def aimed_at(target: str, host: str) -> bool:
    """Whether a check's target is the host itself or a part of it (``web-1:/``)."""
    return target == host or target.startswith(f"{host}:")


def host_health(host: str, latest: Mapping[tuple[str, str], HealthRow]) -> dict[str, Any] | None:
    """The host's worst latest status, and the checks that have it; None if never checked."""
    rows = [row for (_, target), row in latest.items() if aimed_at(target, host)]
    if not rows:
        return None
    worst = max(rows, key=lambda row: SEVERITY.get(row.status, 0)).status
    return {
        "status": worst,
        "checked_at": max(row.checked_at for row in rows).isoformat(),
        "checks": sorted(f"{row.check} ({row.target})" for row in rows if row.status == worst),
    }


def served_version(message: str) -> str | None:
    """The version an app check's message names, or None ("version unknown", or no version)."""
    match = _SERVED.search(message)
    return match.group(1) if match else None


def host_version(
    host: str, latest: Mapping[tuple[str, str], HealthRow], changes: Sequence[HostChange]
) -> dict[str, Any] | None:
    """The version a host serves, from whichever is newer: the health check that last saw it
    answer, or the last succeeded release or rollback that switched it (the audit trail)."""
    candidates = []
    app = latest.get(("app", host))
    if app is not None and (seen := served_version(app.message)):
        candidates.append({"version": seen, "since": app.checked_at, "source": "health"})
    switched = [change for change in changes if host in change.hosts and "," not in change.version]
    if switched:
        change = max(switched, key=lambda change: change.finished_at)
        candidates.append({"version": change.version, "since": change.finished_at, "source": "audit"})
    if not candidates:
        return None
    newest = max(candidates, key=lambda candidate: candidate["since"])
    return {**newest, "since": newest["since"].isoformat()}


def open_alerts(latest: Mapping[tuple[str, str], HealthRow]) -> list[dict[str, Any]]:
    """Checks whose newest result is warn or critical, worst first."""
    failing = [row for row in latest.values() if row.status in ("warn", "critical")]
    failing.sort(key=lambda row: (-SEVERITY[row.status], row.check, row.target))
    return [row.to_dict() for row in failing]


def check_strips(rows: Iterable[HealthRow], length: int = STRIP_LENGTH) -> list[dict[str, Any]]:
    """Per check and target: its last ``length`` statuses (oldest first), latest value and trend."""
    series: dict[tuple[str, str], list[HealthRow]] = defaultdict(list)
    for row in rows:
        series[(row.check, row.target)].append(row)
    strips = []
    for (check, target), history in sorted(series.items()):
        history.sort(key=lambda row: row.checked_at)
        recent = history[-length:]
        values = [row.value for row in recent if row.value is not None]
        strips.append(
            {
                "check": check,
                "target": target,
                "status": recent[-1].status,
                "value": recent[-1].value,
                "message": recent[-1].message,
                "strip": [row.status for row in recent],
                "values": values,
                "trend": trend(values),
            }
        )
    return strips


def trend(values: Sequence[float]) -> str:
    """``rising``, ``falling`` or ``steady``: the least-squares slope over the series, compared
    with its mean (a change under 5 % of the mean over the series is steady); ``unknown`` with
    fewer than three values."""
    if len(values) < 3:
        return "unknown"
    n = len(values)
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    spread = sum((x - mean_x) ** 2 for x in range(n))
    slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(values)) / spread
    change = slope * (n - 1)
    scale = abs(mean_y) or max(abs(v) for v in values) or 1.0
    if abs(change) < STEADY * scale:
        return "steady"
    return "rising" if change > 0 else "falling"


def status_value(status: str) -> int | None:
    """The number Prometheus gets for a status: 0 ok, 1 warn, 2 critical; None for skipped."""
    return {"ok": 0, "warn": 1, "critical": 2}.get(status)
