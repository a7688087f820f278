"""Where ``health_<env>`` keeps what Slack was last told: one Redis key per check and target.

The key is ``airlock:health:<env>:<check>:<target>``, its value an :class:`AlertState` as JSON,
and it expires after ``STATE_TTL``, so a target that disappears from the environment file leaves
its key behind that long at most. A lost key (Redis flushed or restarted without persistence) is
recovered from the health history by the caller (``airlock.tasks.health.send_alerts``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airlock.config import Environment
from airlock.core.health import STATE_TTL, AlertState
from airlock.hooks.redis import redis_client

STATE_PREFIX = "airlock:health"


def state_key(environment: Environment, check: str, target: str) -> str:
    return f"{STATE_PREFIX}:{environment.name}:{check}:{target}"


class AlertStateStore:
    """The alert states of one environment in its Redis (``redis_conn_id``).

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

    def read(self, keys: Sequence[tuple[str, str]]) -> list[AlertState | None]:
        """The stored state of each (check, target), None where there is none; raises when Redis does."""
        if not keys:
            return []
        stored = self.client.mget([state_key(self.environment, check, target) for check, target in keys])
        return [None if raw is None else AlertState.from_json(raw) for raw in stored]

    def save(self, key: tuple[str, str], state: AlertState) -> None:
        check, target = key
        self.client.set(
            state_key(self.environment, check, target), state.to_json(), ex=int(STATE_TTL.total_seconds())
        )
