"""The four DORA figures of an environment, from its audit trail (``<ops_schema>.releases``).

What counts, in Airlock's terms:

- a *deployment* is a ``release`` run that switched hosts: it ``succeeded``, ``rolled_back`` or
  ended ``rollback_incomplete``. A run that ``failed`` before any host was switched, was
  ``rejected`` or only ``planned`` changed nothing in the environment and is not one;
- a *failed deployment* is one that did not stay out: ``rolled_back`` or ``rollback_incomplete``;
- *deployment frequency*: succeeded deployments per day over the window;
- *lead time for changes*: from the commit (``committed_at``, which the CI trigger may pass) to
  the end of the release that shipped it, the median over the window's succeeded deployments
  that carry one; ``None`` ("unknown") when none does;
- *change failure rate*: failed deployments over deployments;
- *failed-deployment recovery time*: from the end of a failed deployment to the end of the next
  run (release or rollback) that succeeded, i.e. until a good release was out again; the median
  over the window's failed deployments that have recovered, the others counted as unrecovered.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import median
from typing import Any

from airlock.core.health import duration_text

DEPLOYED = frozenset({"succeeded", "rolled_back", "rollback_incomplete"})
FAILED_DEPLOYMENT = frozenset({"rolled_back", "rollback_incomplete"})
#: Actions whose success puts the environment on a good release again.
RECOVERING_ACTIONS = frozenset({"release", "rollback"})


@dataclass(frozen=True)
class AuditedRun:
    """One row of the audit trail, as far as the DORA figures need it."""

    action: str
    version: str
    result: str
    finished_at: datetime
    started_at: datetime | None = None
    committed_at: datetime | None = None

    @property
    def deployed(self) -> bool:
        return self.action == "release" and self.result in DEPLOYED

    @property
    def failed_deployment(self) -> bool:
        return self.action == "release" and self.result in FAILED_DEPLOYMENT

    @property
    def recovers(self) -> bool:
        return self.action in RECOVERING_ACTIONS and self.result == "succeeded"


@dataclass(frozen=True)
class DoraReport:
    days: int
    deployments: int
    succeeded: int
    failed: int
    deployments_per_day: float
    lead_time: timedelta | None
    lead_time_samples: int
    change_failure_rate: float | None
    recovery_time: timedelta | None
    recovered: int
    unrecovered: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON the API answers: durations in seconds, and "unknown" where there is no figure."""
        return {
            "days": self.days,
            "deployment_frequency": {
                "deployments": self.deployments,
                "succeeded": self.succeeded,
                "per_day": round(self.deployments_per_day, 4),
            },
            "lead_time": {
                "seconds": _seconds(self.lead_time),
                "samples": self.lead_time_samples,
                "text": figure_text(self.lead_time),
            },
            "change_failure_rate": {
                "rate": None if self.change_failure_rate is None else round(self.change_failure_rate, 4),
                "failed": self.failed,
                "deployments": self.deployments,
                "text": "unknown" if self.change_failure_rate is None else f"{self.change_failure_rate:.0%}",
            },
            "recovery_time": {
                "seconds": _seconds(self.recovery_time),
                "recovered": self.recovered,
                "unrecovered": self.unrecovered,
                "text": figure_text(self.recovery_time),
            },
        }


def dora_report(runs: Iterable[AuditedRun], *, days: int, now: datetime) -> DoraReport:
    """The figures of the ``days`` before ``now``; ``runs`` may also hold later recoveries' rows."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    ordered = sorted(runs, key=lambda run: run.finished_at)
    start = now - timedelta(days=days)
    window = [run for run in ordered if start <= run.finished_at <= now]
    deployments = [run for run in window if run.deployed]
    succeeded = [run for run in deployments if not run.failed_deployment]
    failed = [run for run in deployments if run.failed_deployment]
    lead_times = [
        run.finished_at - run.committed_at
        for run in succeeded
        if run.committed_at is not None and run.committed_at <= run.finished_at
    ]
    recoveries = [_recovery(failure, ordered) for failure in failed]
    recovered = [delta for delta in recoveries if delta is not None]
    return DoraReport(
        days=days,
        deployments=len(deployments),
        succeeded=len(succeeded),
        failed=len(failed),
        deployments_per_day=len(succeeded) / days,
        lead_time=_median(lead_times),
        lead_time_samples=len(lead_times),
        change_failure_rate=len(failed) / len(deployments) if deployments else None,
        recovery_time=_median(recovered),
        recovered=len(recovered),
        unrecovered=len(recoveries) - len(recovered),
    )


def _recovery(failure: AuditedRun, ordered: Sequence[AuditedRun]) -> timedelta | None:
    for later in ordered:
        if later.finished_at > failure.finished_at and later.recovers:
            return later.finished_at - failure.finished_at
    return None


def _median(deltas: Sequence[timedelta]) -> timedelta | None:
    if not deltas:
        return None
    return timedelta(seconds=median(delta.total_seconds() for delta in deltas))


def _seconds(delta: timedelta | None) -> float | None:
    return None if delta is None else round(delta.total_seconds(), 3)


def figure_text(delta: timedelta | None) -> str:
    """A duration as messages say it (``1 h 35 min``), or "unknown" where there is no figure."""
    return "unknown" if delta is None else duration_text(delta)
