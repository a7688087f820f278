"""One release per environment at a time: a Redis lock with an owner token and a TTL.

Taken with ``SET key value NX PX ttl`` so exactly one run wins; the value records who holds it
(run id, version, who triggered, since when) so the loser can say whom to wait for. Released
with compare-and-delete (a Lua script), so a run can only free its own lock, never one that
expired and was taken by somebody else. A run that crashed without releasing leaves a lock that
expires after ``lock_ttl``; to break it sooner see the deployment runbook
(``redis-cli DEL airlock:lock:<env>``).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

from airflow.providers.redis.hooks.redis import RedisHook

_RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


_EXTEND_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class LockLostError(RuntimeError):
    """This run no longer holds the lock it took (it expired, or someone broke it)."""


class LockHeldError(RuntimeError):
    """Another run holds the environment's lock."""


@dataclass(frozen=True)
class LockHolder:
    token: str
    run_id: str
    purpose: str
    triggered_by: str
    since: str

    def describe(self) -> str:
        return f"{self.purpose} (run {self.run_id}, by {self.triggered_by}, since {self.since})"


class EnvironmentLock:
    """
    The lock of one environment, on the Redis connection ``redis_conn_id``.

    :param environment: environment name; the key is ``airlock:lock:<environment>``.
    :param redis_conn_id: Airflow connection to Redis.
    :param ttl: how long an abandoned lock survives.
    """

    def __init__(self, *, environment: str, redis_conn_id: str, ttl: timedelta) -> None:
        self.environment = environment
        self.redis_conn_id = redis_conn_id
        self.ttl = ttl
        self.key = f"airlock:lock:{environment}"

    @cached_property
    def client(self):
        return RedisHook(redis_conn_id=self.redis_conn_id).get_conn()

    def holder(self) -> LockHolder | None:
        raw = self.client.get(self.key)
        if raw is None:
            return None
        return LockHolder(**json.loads(raw))

    def acquire(self, *, run_id: str, purpose: str, triggered_by: str) -> LockHolder:
        """Take the lock or raise :class:`LockHeldError` naming the holder.

        Idempotent for the same run: a retried setup task finds its own lock and keeps it.
        """
        current = self.holder()
        if current is not None and current.run_id == run_id:
            return current
        holder = LockHolder(
            token=secrets.token_hex(16),
            run_id=run_id,
            purpose=purpose,
            triggered_by=triggered_by,
            since=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        taken = self.client.set(
            self.key, json.dumps(asdict(holder)), nx=True, px=int(self.ttl.total_seconds() * 1000)
        )
        if not taken:
            current = self.holder()
            described = current.describe() if current else "another run (it just finished; retry)"
            raise LockHeldError(
                f"Environment {self.environment} is locked by {described}. Wait for it to finish; "
                f"if that run is dead, the lock expires by itself or can be broken with "
                f"`redis-cli DEL {self.key}` (see the deployment runbook)."
            )
        return holder

    def extend_for_run(self, run_id: str) -> None:
        """Restart the TTL of the lock held by ``run_id``; raise :class:`LockLostError` if it is not.

        Every step that changes hosts calls this first, so a long approval wait cannot let the
        lock expire under a rollout, and a run whose lock was broken stops before touching a host.
        """
        current_raw = self.client.get(self.key)
        current = LockHolder(**json.loads(current_raw)) if current_raw else None
        ttl = int(self.ttl.total_seconds() * 1000)
        if (
            current is None
            or current.run_id != run_id
            or not self.client.eval(_EXTEND_IF_OWNER, 1, self.key, current_raw, ttl)
        ):
            held = f"it is held by {current.describe()}" if current else "nobody holds it"
            raise LockLostError(
                f"Run {run_id} no longer holds the lock of {self.environment} ({held}): "
                "it expired (lock_ttl) or was broken; stopping before touching any host"
            )

    def release_for_run(self, run_id: str) -> bool:
        """Free the lock if ``run_id`` holds it (what the teardown task does); returns whether it did.

        The delete compares the whole stored value, token included, atomically in Redis: a lock
        that expired and was taken by another run in between is left alone.
        """
        current_raw = self.client.get(self.key)
        if current_raw is None:
            return False
        current = LockHolder(**json.loads(current_raw))
        if current.run_id != run_id:
            return False
        return bool(self.client.eval(_RELEASE_IF_OWNER, 1, self.key, current_raw))
