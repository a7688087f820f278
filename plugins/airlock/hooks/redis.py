"""Redis: the one place an Airflow Redis connection id becomes a client (health probes, alert state)."""

from __future__ import annotations

from typing import Any


def redis_client(conn_id: str) -> Any:
    """A ``redis.Redis`` client for the Airflow connection ``conn_id`` (connects on first use)."""
    from airflow.providers.redis.hooks.redis import RedisHook

    return RedisHook(redis_conn_id=conn_id).get_conn()
