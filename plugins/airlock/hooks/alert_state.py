"""Redis's copy of ``health_<env>``'s alert state: a cache of the ops store, and its stand-in while
PostgreSQL is unreachable.

The durable copy is in the ops store (``airlock.hooks.ops_store``: ``health_alerts``,
``health_notifications``, ``health_silences``). Every run of ``alert`` writes both; it reads both
and keeps, per check, the copy written last (:meth:`AlertState.newer`), so a run that could write
only one of them is not undone by the other.

Keys: ``airlock:health:<env>:<check>:<target>`` (one :class:`AlertState` as JSON, expiring after
``STATE_TTL``); ``airlock:health-deliveries:<env>`` (the messages tried in the last hour, for the
rate limit) and ``airlock:health-silences:<env>`` (the current silences), both JSON lists.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from airlock.config import Environment
from airlock.core.health import STATE_TTL, AlertState, Silence
from airlock.hooks.redis import redis_client

STATE_PREFIX = "airlock:health"
#: How long the copy of the deliveries lives: the rate limit looks back one hour.
DELIVERIES_TTL = timedelta(hours=2)


def state_key(environment: Environment, check: str, target: str) -> str:
    return f"{STATE_PREFIX}:{environment.name}:{check}:{target}"


class AlertStateCache:
    """The alert states, deliveries and silences of one environment in its Redis (``redis_conn_id``).

    Every method raises when Redis does; the caller decides what that means.

    :param environment: whose states these are
    :param client: a Redis client to use instead of the environment's connection (tests)
    """

    def __init__(self, environment: Environment, client: Any = None) -> None:
        self.environment = environment
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = redis_client(self.environment.redis_conn_id)
        return self._client

    @property
    def _deliveries_key(self) -> str:
        return f"{STATE_PREFIX}-deliveries:{self.environment.name}"

    @property
    def _silences_key(self) -> str:
        return f"{STATE_PREFIX}-silences:{self.environment.name}"

    def read(self) -> dict[tuple[str, str], AlertState]:
        """Every state of the environment, by (check, target)."""
        prefix = f"{STATE_PREFIX}:{self.environment.name}:"
        keys = list(self.client.scan_iter(f"{prefix}*"))
        if not keys:
            return {}
        states = {}
        for key, raw in zip(keys, self.client.mget(keys), strict=True):
            if raw is None:
                continue
            name = key.decode() if isinstance(key, bytes) else key
            check, _, target = name.removeprefix(prefix).partition(":")
            states[check, target] = AlertState.from_json(raw)
        return states

    def save(self, states: Mapping[tuple[str, str], AlertState]) -> None:
        pipeline = self.client.pipeline()
        for (check, target), state in states.items():
            pipeline.set(
                state_key(self.environment, check, target), state.to_json(), ex=int(STATE_TTL.total_seconds())
            )
        pipeline.execute()

    def deliveries(self) -> list[tuple[datetime, str]]:
        raw = self.client.get(self._deliveries_key)
        return [(datetime.fromisoformat(at), outcome) for at, outcome in json.loads(raw or "[]")]

    def save_deliveries(self, deliveries: Sequence[tuple[datetime, str]], now: datetime) -> None:
        recent = [(at.isoformat(), outcome) for at, outcome in deliveries if now - at < DELIVERIES_TTL]
        self.client.set(self._deliveries_key, json.dumps(recent), ex=int(DELIVERIES_TTL.total_seconds()))

    def silences(self) -> list[Silence]:
        raw = self.client.get(self._silences_key)
        return [Silence.from_dict(item) for item in json.loads(raw or "[]")]

    def save_silences(self, silences: Sequence[Silence]) -> None:
        self.client.set(self._silences_key, json.dumps([s.to_dict() for s in silences]))
