"""``GET /airlock/metrics``: the board's facts in the Prometheus text format.

A collector built per scrape from the environments the scraping user may read, so a scrape
shows exactly what that user's board shows. Names and labels (stable: dashboards and alert
rules use them):

- ``airlock_health_status{environment, target, check}``: the latest result, 0 ok, 1 warn,
  2 critical (skipped checks are left out);
- ``airlock_backup_age_seconds{environment}``: age of the newest verified backup;
- ``airlock_releases_total{environment, outcome}``: release runs by how they ended;
- ``airlock_last_release_duration_seconds{environment}``: the last release run, start to end;
- ``airlock_lock_held{environment}``: 1 while a run holds the environment's lock;
- ``airlock_dora_*{environment}`` over the last :data:`DORA_DAYS` days: deployments per day,
  change failure rate, and lead time and recovery time in seconds (left out while unknown).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from airlock.config import Environment
from airlock.core.board import latest_per_check, status_value
from airlock.hooks.ops_history import OpsHistory
from airlock.web import overview

DORA_DAYS = 30


class AirlockCollector(Collector):
    """Reads each environment once per scrape, through the same functions as the board."""

    def __init__(self, environments: Sequence[Environment], now: datetime | None = None) -> None:
        self.environments = environments
        self.now = now or datetime.now(UTC)

    def collect(self) -> Iterator[Metric]:
        health = GaugeMetricFamily(
            "airlock_health_status",
            "Latest health check result: 0 ok, 1 warn, 2 critical",
            labels=["environment", "target", "check"],
        )
        backup_age = GaugeMetricFamily(
            "airlock_backup_age_seconds", "Age of the newest verified backup", labels=["environment"]
        )
        releases = CounterMetricFamily(
            "airlock_releases", "Release runs by outcome", labels=["environment", "outcome"]
        )
        duration = GaugeMetricFamily(
            "airlock_last_release_duration_seconds",
            "Duration of the last release run, start to end",
            labels=["environment"],
        )
        lock = GaugeMetricFamily(
            "airlock_lock_held", "1 while a run holds the environment's lock", labels=["environment"]
        )
        frequency = GaugeMetricFamily(
            "airlock_dora_deployments_per_day",
            f"Succeeded deployments per day over {DORA_DAYS} days",
            labels=["environment"],
        )
        failure_rate = GaugeMetricFamily(
            "airlock_dora_change_failure_rate",
            f"Failed deployments over deployments, {DORA_DAYS} days",
            labels=["environment"],
        )
        lead_time = GaugeMetricFamily(
            "airlock_dora_lead_time_seconds",
            f"Median commit-to-release time, {DORA_DAYS} days",
            labels=["environment"],
        )
        recovery = GaugeMetricFamily(
            "airlock_dora_recovery_time_seconds",
            f"Median failed-deployment recovery time, {DORA_DAYS} days",
            labels=["environment"],
        )
        for environment in self.environments:
            name = environment.name
            with OpsHistory.open(environment) as history:
                latest = latest_per_check(history.latest_health(since=self.now - overview.CURRENT))
                counts = history.release_counts()
                last = overview.last_release(history)
                report = overview.dora_figures(history, DORA_DAYS, self.now)
            for (check, target), row in sorted(latest.items()):
                value = status_value(row.status)
                if value is not None:
                    health.add_metric([name, target, check], value)
            backup = overview.newest_verified_backup(environment)
            if backup is not None:
                backup_age.add_metric([name], (self.now - backup.finished_at).total_seconds())
            for outcome, count in sorted(counts.items()):
                releases.add_metric([name, outcome], count)
            if last is not None and last["duration_seconds"] is not None:
                duration.add_metric([name], last["duration_seconds"])
            lock.add_metric([name], 1 if overview.lock_state(environment).holder else 0)
            frequency.add_metric([name], report.deployments_per_day)
            if report.change_failure_rate is not None:
                failure_rate.add_metric([name], report.change_failure_rate)
            if report.lead_time is not None:
                lead_time.add_metric([name], report.lead_time.total_seconds())
            if report.recovery_time is not None:
                recovery.add_metric([name], report.recovery_time.total_seconds())
        yield from (health, backup_age, releases, duration, lock)
        yield from (frequency, failure_rate, lead_time, recovery)


def exposition(environments: Sequence[Environment]) -> bytes:
    """The text a scrape gets."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AirlockCollector(environments))
    return generate_latest(registry)
