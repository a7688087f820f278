"""One release per environment at a time: a Redis lock with an owner token, a TTL and a live holder.

Taken with ``SET key value NX PX ttl`` so exactly one run wins; the value records who holds it
(DAG and run id, what for, who triggered, since when, and the Airflow installation the run
belongs to) so the loser can say whom to wait for. Released with compare-and-delete (a Lua
script), so a run can only free its own lock, never one that expired and was taken by somebody
else.

A held lock is only as good as its holder. Before refusing, the taker asks whether the holder is
still alive (:func:`stale_reason`):

- a run of this installation: its state, from Airflow (a run that ended, or that this Airflow
  never heard of, is dead; queued or running, however long it waits for approval, is alive);
- a run of another installation sharing this Redis: that installation's sign of life
  (:class:`InstallationPresence`, kept up by its scheduler every 15 s; silent for
  :data:`PRESENCE_TIMEOUT`, or stopped cleanly, is dead).

A dead holder's lock is broken with compare-and-delete on its exact value, so a lock that a
live run took meanwhile is never broken; of two takers racing for one stale lock exactly one
wins. ``unlock_<env>`` breaks a lock by hand, behind approval, with a reason in the audit trail.

A release whose environment sets ``rollout.on_lock_busy: wait`` queues for a held lock instead
of failing (:class:`LockQueue`): first come, first served, only the first in line may take it,
and a run that died in line is dropped by the next one to look.

A held lock is kept while a long step works (:class:`LockKeeper`): a background thread renews it
every third of its TTL, and the step asks the keeper before each change (:meth:`LockKeeper.check`),
which confirms with Redis that this run still holds it. A lock that was lost, or that cannot be
confirmed (Redis unreachable), stops the step before its next change: the keeper fails closed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

from redis.exceptions import RedisError

from airlock.hooks.redis import redis_client

log = logging.getLogger(__name__)

#: How long an installation may stay silent before another one may break its runs' locks.
PRESENCE_TIMEOUT = timedelta(seconds=90)
#: How often a scheduler renews its installation's sign of life.
PRESENCE_INTERVAL = timedelta(seconds=15)
#: Run states in which a run will never release a lock again.
ENDED = ("success", "failed")

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


_TAKE_IF_FIRST = """
local first = redis.call('ZRANGE', KEYS[2], 0, 0)
if first[1] ~= ARGV[3] then
    return 0
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    redis.call('ZREM', KEYS[2], ARGV[3])
    return 1
end
return 0
"""


class LockLostError(RuntimeError):
    """This run no longer holds the lock it took (it expired, or someone broke it)."""


class LockHeldError(RuntimeError):
    """Another run holds the environment's lock."""


class NotYourTurnError(LockHeldError):
    """The lock is free, but runs that queued for it earlier take it first."""


class LockUnavailableError(RuntimeError):
    """Redis cannot be reached, so the lock can be neither taken nor confirmed: fail closed."""


def installation_id() -> str:
    """The stable id of this Airflow installation, the same in every component and worker.

    ``AIRLOCK_INSTALLATION_ID`` when set (the demo sets it); otherwise derived from
    ``[api_auth] jwt_secret``, which every component of one installation must share and two
    installations do not (a one-way hash: the secret is not recoverable from it).
    """
    configured = os.environ.get("AIRLOCK_INSTALLATION_ID", "").strip()
    if configured:
        return configured
    from airflow.configuration import conf

    secret = conf.get("api_auth", "jwt_secret", fallback="") or ""
    return "jwt-" + hashlib.sha256(b"airlock-installation:" + secret.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LockHolder:
    token: str
    run_id: str
    purpose: str
    triggered_by: str
    since: str
    dag_id: str | None = None
    installation: str | None = None

    def describe(self) -> str:
        return f"{self.purpose} (run {self.run_id}, by {self.triggered_by}, since {self.since})"


@dataclass(frozen=True)
class Presence:
    """An installation's last sign of life."""

    seen: datetime
    stopped: bool


class InstallationPresence:
    """Each installation's sign of life in Redis: ``airlock:installation:<id>`` (kept 7 days)."""

    KEEP = timedelta(days=7)

    def __init__(self, client) -> None:
        self.client = client

    @staticmethod
    def key(installation: str) -> str:
        return f"airlock:installation:{installation}"

    def beat(self, installation: str, *, stopped: bool = False, now: datetime | None = None) -> None:
        seen = (now or datetime.now(UTC)).isoformat(timespec="seconds")
        value = json.dumps({"seen": seen, "stopped": stopped})
        self.client.set(self.key(installation), value, ex=int(self.KEEP.total_seconds()))

    def last(self, installation: str) -> Presence | None:
        raw = self.client.get(self.key(installation))
        if raw is None:
            return None
        value = json.loads(raw)
        return Presence(seen=datetime.fromisoformat(value["seen"]), stopped=bool(value["stopped"]))


def stale_reason(
    holder: LockHolder,
    *,
    installation: str,
    run_state: Callable[[str, str], str | None],
    presence: Callable[[str], Presence | None],
    now: datetime,
) -> str | None:
    """Why ``holder`` is dead, or None while it may be alive (then its lock stays).

    :param installation: the taker's installation id.
    :param run_state: this installation's state of a run (``dag_id``, ``run_id``); None when it
        does not know the run.
    :param presence: another installation's last sign of life, None when it has none.
    """
    if holder.dag_id is None or holder.installation is None:
        return None  # written by an Airlock that did not record its holder: cannot tell
    if holder.installation == installation:
        state = run_state(holder.dag_id, holder.run_id)
        if state is None:
            return f"run {holder.run_id} of {holder.dag_id} is unknown to this Airflow installation"
        if state in ENDED:
            return f"run {holder.run_id} of {holder.dag_id} ended {state}"
        return None
    last = presence(holder.installation)
    if last is None:
        days = InstallationPresence.KEEP.days
        return f"its installation {holder.installation} has left no sign of life for {days} days"
    if last.stopped:
        return f"its installation {holder.installation} stopped at {last.seen.isoformat()}"
    if now - last.seen > PRESENCE_TIMEOUT:
        return f"its installation {holder.installation} has been silent since {last.seen.isoformat()}"
    return None


@dataclass(frozen=True)
class Acquired:
    """The lock this run now holds, and the stale one it broke to get it (if any)."""

    holder: LockHolder
    broke: LockHolder | None = None
    broke_because: str | None = None


@dataclass(frozen=True)
class QueuedRun:
    """A run waiting in line for an environment's lock (``rollout.on_lock_busy: wait``).

    Every field is the same on each look of the same run, so a rescheduled or retried wait finds
    its own place in the queue instead of joining at the back again.
    """

    installation: str
    dag_id: str
    run_id: str
    purpose: str
    triggered_by: str

    @property
    def member(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def describe(self) -> str:
        return f"{self.purpose} (run {self.run_id}, by {self.triggered_by})"

    def as_holder(self, since: datetime) -> LockHolder:
        """The lock holder this run would be, for judging whether it is still alive."""
        return LockHolder(
            token="",
            run_id=self.run_id,
            purpose=self.purpose,
            triggered_by=self.triggered_by,
            since=since.isoformat(timespec="seconds"),
            dag_id=self.dag_id,
            installation=self.installation,
        )


class LockQueue:
    """
    The runs waiting for one environment's lock, first come, first served: the sorted set
    ``airlock:lock:<environment>:queue``, each run scored by when it first joined.

    Only the first run in line may take a free lock (:meth:`EnvironmentLock.acquire` with
    ``queued=``, atomically in Redis), and taking it leaves the line. Runs that do not wait
    (a release with ``on_lock_busy: fail``, ``rollback_<env>``, ``migrate_<env>``) take a free
    lock without queueing: a rollback never waits behind queued releases. A run that died while
    waiting is dropped by the next one to look (:meth:`prune`); the key expires a day after the
    last look, so a line nobody watches anymore does not outlive it.
    """

    KEEP = timedelta(days=1)

    def __init__(self, lock: EnvironmentLock) -> None:
        self.lock = lock
        self.key = f"{lock.key}:queue"
        #: Each waiting run's last look (a hash: member -> epoch seconds).
        self.seen_key = f"{lock.key}:queue:seen"

    @property
    def client(self):
        return self.lock.client

    def join(self, run: QueuedRun, now: datetime | None = None) -> datetime:
        """Take a place at the back of the line, or keep the one ``run`` has; returns when it joined."""
        joined = (now or datetime.now(UTC)).timestamp()
        keep = int(self.KEEP.total_seconds() * 1000)
        pipe = self.client.pipeline()
        pipe.zadd(self.key, {run.member: joined}, nx=True)
        pipe.zscore(self.key, run.member)
        pipe.hset(self.seen_key, run.member, joined)
        pipe.pexpire(self.key, keep)
        pipe.pexpire(self.seen_key, keep)
        _, score, *_ = pipe.execute()
        return datetime.fromtimestamp(float(score), UTC)

    def leave(self, run: QueuedRun) -> None:
        pipe = self.client.pipeline()
        pipe.zrem(self.key, run.member)
        pipe.hdel(self.seen_key, run.member)
        pipe.execute()

    def last_look(self, run: QueuedRun) -> datetime | None:
        seen = self.client.hget(self.seen_key, run.member)
        return datetime.fromtimestamp(float(seen), UTC) if seen is not None else None

    def waiting(self) -> list[tuple[QueuedRun, datetime]]:
        """The runs in line, first first, with when each joined."""
        return [
            (QueuedRun(**json.loads(member)), datetime.fromtimestamp(float(score), UTC))
            for member, score in self.client.zrange(self.key, 0, -1, withscores=True)
        ]

    def ahead_of(self, run: QueuedRun) -> list[QueuedRun]:
        line = [queued for queued, _ in self.waiting()]
        return line[: line.index(run)] if run in line else line

    def prune(self, dead: Callable[[QueuedRun, datetime], str | None]) -> list[tuple[QueuedRun, str]]:
        """Drop the runs for which ``dead`` gives a reason (see :func:`stale_reason`); returns them."""
        dropped = []
        for run, joined in self.waiting():
            reason = dead(run, joined)
            if reason is not None and self.client.zrem(self.key, run.member):
                self.client.hdel(self.seen_key, run.member)
                dropped.append((run, reason))
        return dropped


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
        return redis_client(self.redis_conn_id)

    def holder(self) -> LockHolder | None:
        raw = self.client.get(self.key)
        if raw is None:
            return None
        return LockHolder(**json.loads(raw))

    def acquire(
        self,
        *,
        run_id: str,
        purpose: str,
        triggered_by: str,
        dag_id: str | None = None,
        installation: str | None = None,
        run_state: Callable[[str, str], str | None] | None = None,
        queued: QueuedRun | None = None,
    ) -> Acquired:
        """Take the lock, breaking a dead holder's; raise :class:`LockHeldError` naming a live one.

        Idempotent for the same run: a retried setup task finds its own lock and keeps it.

        :param run_state: this installation's state of a run, to judge a holder of this
            installation; without it (and ``installation``) no lock is ever broken.
        :param queued: this run's place in the :class:`LockQueue`: the lock is taken only if
            the run is first in line (else :class:`NotYourTurnError`), and taking it leaves the line.

        Redis unreachable: :class:`LockUnavailableError` (fail closed: no lock, no release).
        """
        try:
            return self._acquire(
                run_id=run_id,
                purpose=purpose,
                triggered_by=triggered_by,
                dag_id=dag_id,
                installation=installation,
                run_state=run_state,
                queued=queued,
            )
        except RedisError as error:
            raise LockUnavailableError(
                f"Cannot take the lock of {self.environment}: Redis ({self.redis_conn_id}) did not "
                f"answer ({error}). Nothing was changed. Once Redis answers (redis-cli PING), trigger "
                "the run again; see the troubleshooting runbook, 'Redis is down'."
            ) from error

    def _acquire(
        self,
        *,
        run_id: str,
        purpose: str,
        triggered_by: str,
        dag_id: str | None,
        installation: str | None,
        run_state: Callable[[str, str], str | None] | None,
        queued: QueuedRun | None,
    ) -> Acquired:
        current = self.holder()
        if current is not None and current.run_id == run_id and current.dag_id in (None, dag_id):
            if queued is not None:
                LockQueue(self).leave(queued)
            return Acquired(current)
        holder = LockHolder(
            token=secrets.token_hex(16),
            run_id=run_id,
            purpose=purpose,
            triggered_by=triggered_by,
            since=datetime.now(UTC).isoformat(timespec="seconds"),
            dag_id=dag_id,
            installation=installation,
        )
        if self._take(holder, queued):
            return Acquired(holder)
        raw = self.client.get(self.key)
        current = LockHolder(**json.loads(raw)) if raw else None
        judged = installation is not None and run_state is not None and current is not None
        judged = judged and current.installation is not None
        first_in_line = queued is None or not LockQueue(self).ahead_of(queued)
        if current is not None and installation is not None and run_state is not None and first_in_line:
            reason = stale_reason(
                current,
                installation=installation,
                run_state=run_state,
                presence=InstallationPresence(self.client).last,
                now=datetime.now(UTC),
            )
            if (
                reason is not None
                and self.client.eval(_RELEASE_IF_OWNER, 1, self.key, raw)
                and self._take(holder, queued)
            ):
                return Acquired(holder, broke=current, broke_because=reason)
            current = self.holder()
        if current is None and queued is not None:
            ahead = LockQueue(self).ahead_of(queued)
            raise NotYourTurnError(
                f"Environment {self.environment} is free, but {len(ahead)} run(s) queued for it "
                f"earlier go first: {'; '.join(run.describe() for run in ahead) or 'none any more'}"
            )
        described = current.describe() if current else "another run (it just finished; retry)"
        alive = (
            "It is still alive"
            if judged
            else "Airlock cannot tell whether it is alive (no installation recorded)"
        )
        raise LockHeldError(
            f"Environment {self.environment} is locked by {described}. {alive}: wait for it to "
            f"finish, or stop that run; if it is stuck for good, trigger unlock_{self.environment} "
            f"with a reason (see the deployment runbook)."
        )

    def _take(self, holder: LockHolder, queued: QueuedRun | None = None) -> bool:
        ttl = int(self.ttl.total_seconds() * 1000)
        value = json.dumps(asdict(holder))
        if queued is None:
            return bool(self.client.set(self.key, value, nx=True, px=ttl))
        queue = LockQueue(self)
        return bool(self.client.eval(_TAKE_IF_FIRST, 2, self.key, queue.key, value, ttl, queued.member))

    def break_holder(self, token: str) -> LockHolder | None:
        """Break the lock if it is still held with ``token`` (what ``unlock_<env>`` planned to
        break); returns the holder broken, or None when the lock has changed hands or is free."""
        raw = self.client.get(self.key)
        if raw is None:
            return None
        current = LockHolder(**json.loads(raw))
        if current.token != token or not self.client.eval(_RELEASE_IF_OWNER, 1, self.key, raw):
            return None
        return current

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


@dataclass(frozen=True)
class Attention:
    """Why an environment needs a person before its next release, and how to resolve it."""

    since: str
    dag_id: str
    run_id: str
    what: str
    resolve: str

    def describe(self) -> str:
        return f"since {self.since}, set by run {self.run_id} of {self.dag_id}: {self.what}"


class AttentionMark:
    """
    An environment left in a state no release may start from (a rollback that could not finish),
    kept next to its lock as ``airlock:attention:<environment>``, without a TTL: it stays until
    a successful ``rollback_<env>`` clears it (or an operator deletes the key by hand).

    :param environment: environment name.
    :param redis_conn_id: Airflow connection to Redis.
    """

    def __init__(self, *, environment: str, redis_conn_id: str) -> None:
        self.environment = environment
        self.redis_conn_id = redis_conn_id
        self.key = f"airlock:attention:{environment}"

    @cached_property
    def client(self):
        return redis_client(self.redis_conn_id)

    def set(self, *, dag_id: str, run_id: str, what: str, resolve: str) -> Attention:
        """Mark the environment (replacing an earlier mark: the newest finding is what counts)."""
        attention = Attention(
            since=datetime.now(UTC).isoformat(timespec="seconds"),
            dag_id=dag_id,
            run_id=run_id,
            what=what,
            resolve=resolve,
        )
        self.client.set(self.key, json.dumps(asdict(attention)))
        return attention

    def get(self) -> Attention | None:
        raw = self.client.get(self.key)
        return Attention(**json.loads(raw)) if raw else None

    def clear(self) -> Attention | None:
        """Remove the mark; returns what it said, or None when there was none."""
        raw = self.client.get(self.key)
        if raw is None or not self.client.eval(_RELEASE_IF_OWNER, 1, self.key, raw):
            return None
        return Attention(**json.loads(raw))

    def clear_if_set_by(self, run_id: str) -> bool:
        """Remove the mark only if ``run_id`` set it (a rollback that finished on its retry)."""
        raw = self.client.get(self.key)
        if raw is None or json.loads(raw)["run_id"] != run_id:
            return False
        return bool(self.client.eval(_RELEASE_IF_OWNER, 1, self.key, raw))


class SwitchedHosts:
    """
    The hosts a run is about to switch, recorded in Redis before each switch
    (``airlock:switching:<environment>:<run_id>``, kept 7 days) so that its rollback knows which
    hosts it may have changed, across retries and whatever the deploy's own state says.

    XCom cannot hold this: Airflow clears a task's XComs when it is retried, and a host switched
    by a first try whose retry failed at connect would be forgotten.
    """

    KEEP = timedelta(days=7)

    def __init__(self, *, environment: str, redis_conn_id: str, run_id: str) -> None:
        self.redis_conn_id = redis_conn_id
        self.key = f"airlock:switching:{environment}:{run_id}"

    @cached_property
    def client(self):
        return redis_client(self.redis_conn_id)

    def add(self, host: str) -> None:
        pipeline = self.client.pipeline()
        pipeline.sadd(self.key, host)
        pipeline.expire(self.key, int(self.KEEP.total_seconds()))
        pipeline.execute()

    def hosts(self) -> set[str]:
        return {h.decode() if isinstance(h, bytes) else h for h in self.client.smembers(self.key)}


class LockKeeper:
    """
    Keep ``run_id``'s lock while a long step works: renewed every ``interval`` in a thread.

    Use as a context manager around the step; entering renews the lock once (and raises
    :class:`LockLostError` if this run does not hold it). Before each change, the step calls
    :meth:`check`: it raises :class:`LockLostError` when the background renewal found the lock
    lost, and otherwise confirms with Redis that the run still holds it, so a step never makes a
    change it cannot prove it holds the lock for (Redis unreachable: it stops, fail closed).

    :param lock: the environment's lock.
    :param run_id: the run holding it.
    :param interval: how often to renew; a third of the lock's TTL by default.
    """

    def __init__(self, lock: EnvironmentLock, run_id: str, *, interval: timedelta | None = None) -> None:
        self.lock = lock
        self.run_id = run_id
        self.interval = interval or lock.ttl / 3
        self.renewals = 0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LockKeeper:
        self.renew()
        self._thread = threading.Thread(
            target=self._keep, name=f"airlock-lock-keeper-{self.lock.environment}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def renew(self) -> None:
        """Restart the TTL now; :class:`LockLostError` if lost, :class:`LockUnavailableError` if
        Redis does not answer."""
        try:
            self.lock.extend_for_run(self.run_id)
        except LockLostError:
            raise
        except Exception as error:
            raise LockUnavailableError(
                f"Cannot confirm that run {self.run_id} still holds the lock of {self.lock.environment}: "
                f"Redis ({self.lock.redis_conn_id}) did not answer ({error}); stopping before the next "
                "change"
            ) from error
        self.renewals += 1

    def check(self) -> None:
        """Before a change: raise :class:`LockLostError` unless this run provably holds the lock."""
        if self._lost is not None:
            raise LockLostError(self._lost)
        try:
            self.renew()
        except (LockLostError, LockUnavailableError) as error:
            self._lost = str(error)
            raise LockLostError(self._lost) from error

    @property
    def lost(self) -> str | None:
        """Why the lock was found lost, or None while it is held."""
        return self._lost

    def _keep(self) -> None:
        last_renewed = time.monotonic()
        while not self._stop.wait(self.interval.total_seconds()):
            try:
                self.renew()
                last_renewed = time.monotonic()
            except LockLostError as error:
                self._lost = str(error)
                log.error("%s", error)
                return
            except LockUnavailableError as error:
                # Redis may come back before the TTL runs out: keep trying until the lock may have
                # expired, then give it up (the next check() stops the step either way).
                log.warning("%s", error)
                if (
                    time.monotonic() - last_renewed + self.interval.total_seconds()
                    >= self.lock.ttl.total_seconds()
                ):
                    self._lost = f"{error}; the lock may have expired (lock_ttl {self.lock.ttl})"
                    return


# -- the shared mode: backups and maintenance against the database --------------------------------

#: How long a shared hold (or a closed gate) outlives a holder that stopped renewing it.
SHARED_TTL = timedelta(minutes=2)

# Join the shared holders unless a migration closed the gate; returns the gate's value if closed.
_JOIN_UNLESS_MIGRATING = """
local gate = redis.call('GET', KEYS[2])
if gate then
    return gate
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return false
"""

# Restart a shared hold's TTL if it is still registered (and not expired); returns 1 if it was.
_RENEW_SHARED = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
    return 0
end
redis.call('ZADD', KEYS[1], 'XX', now_ms + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""

# The live shared holders (expired ones are dropped first).
_LIVE_SHARED = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


@dataclass(frozen=True)
class SharedHolder:
    """A backup or maintenance step working on the environment's database."""

    token: str
    dag_id: str
    run_id: str
    purpose: str
    since: str

    def describe(self) -> str:
        return f"{self.purpose} (run {self.run_id} of {self.dag_id}, since {self.since})"


class MigrationRunningError(RuntimeError):
    """A migration has closed the gate: no backup or maintenance step may start until it ends."""


class MaintenanceRunningError(RuntimeError):
    """Backups or maintenance still work on the database after the wait: no migration ran."""


class SharedLock:
    """
    The shared mode of an environment's lock: what backups and maintenance hold, and the gate a
    migration closes (docs/architecture.md, "Backups, maintenance and migrations").

    Each backup dump and maintenance step registers as a shared holder while it works on the
    database (``airlock:lock:<env>:shared``, a sorted set of holders scored by expiry), renewed by
    a keeper thread (:class:`SharedHold`); a holder that dies drops out after :data:`SHARED_TTL`.
    A migration first closes the gate (``airlock:lock:<env>:migrating``, with the same TTL, kept
    by its own keeper), so no new holder joins, then waits until no holder remains; joining and
    the gate check are one Lua script, so a holder never slips in after the migration counted.

    :param environment: environment name.
    :param redis_conn_id: Airflow connection to Redis.
    :param ttl: how long a silent holder (or gate) stays registered.
    """

    def __init__(self, *, environment: str, redis_conn_id: str, ttl: timedelta = SHARED_TTL) -> None:
        self.environment = environment
        self.redis_conn_id = redis_conn_id
        self.ttl = ttl
        self.holders_key = f"airlock:lock:{environment}:shared"
        self.gate_key = f"airlock:lock:{environment}:migrating"

    @cached_property
    def client(self):
        return redis_client(self.redis_conn_id)

    @property
    def _ttl_ms(self) -> int:
        return int(self.ttl.total_seconds() * 1000)

    def _redis(self, what: str, call: Callable[[], object]) -> object:
        try:
            return call()
        except RedisError as error:
            raise LockUnavailableError(
                f"Cannot {what} of {self.environment}: Redis ({self.redis_conn_id}) did not answer "
                f"({error}); stopping before touching the database (see the troubleshooting runbook, "
                "'Redis is down')"
            ) from error

    # the holders' side

    def join(self, holder: SharedHolder) -> LockHolder | None:
        """Register ``holder``; returns the migrating run instead (and registers nothing) while the
        gate is closed."""
        gate = self._redis(
            "register a shared hold",
            lambda: self.client.eval(
                _JOIN_UNLESS_MIGRATING,
                2,
                self.holders_key,
                self.gate_key,
                json.dumps(asdict(holder)),
                self._ttl_ms,
            ),
        )
        return LockHolder(**json.loads(gate)) if gate else None

    def renew(self, holder: SharedHolder) -> bool:
        """Restart ``holder``'s TTL; False when it is no longer registered (it expired)."""
        member = json.dumps(asdict(holder))
        return bool(
            self._redis(
                "renew a shared hold",
                lambda: self.client.eval(_RENEW_SHARED, 1, self.holders_key, member, self._ttl_ms),
            )
        )

    def leave(self, holder: SharedHolder) -> None:
        self._redis(
            "end a shared hold", lambda: self.client.zrem(self.holders_key, json.dumps(asdict(holder)))
        )

    def holders(self) -> list[SharedHolder]:
        """The live shared holders, oldest first."""
        members = self._redis(
            "read the shared holders", lambda: self.client.eval(_LIVE_SHARED, 1, self.holders_key)
        )
        holders = [SharedHolder(**json.loads(member)) for member in members]
        return sorted(holders, key=lambda holder: holder.since)

    # the migration's side

    def gate(self) -> LockHolder | None:
        """The run migrating now (the gate is closed), or None."""
        raw = self._redis("read the migration gate", lambda: self.client.get(self.gate_key))
        return LockHolder(**json.loads(raw)) if raw else None

    def close_gate(self, migrating: LockHolder) -> None:
        """Stop new holders from joining (only the environment lock's holder migrates)."""
        value = json.dumps(asdict(migrating))
        self._redis(
            "close the migration gate", lambda: self.client.set(self.gate_key, value, px=self._ttl_ms)
        )

    def renew_gate(self, migrating: LockHolder) -> bool:
        value = json.dumps(asdict(migrating))
        return bool(
            self._redis(
                "renew the migration gate",
                lambda: self.client.eval(_EXTEND_IF_OWNER, 1, self.gate_key, value, self._ttl_ms),
            )
        )

    def open_gate(self, migrating: LockHolder) -> None:
        value = json.dumps(asdict(migrating))
        self._redis(
            "open the migration gate", lambda: self.client.eval(_RELEASE_IF_OWNER, 1, self.gate_key, value)
        )


class _Renewer:
    """Call ``renew`` every ``interval`` in a daemon thread until stopped; remember why it failed."""

    def __init__(self, name: str, renew: Callable[[], bool], interval: timedelta, lost: str) -> None:
        self._renew = renew
        self._interval = interval
        self._lost_message = lost
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _keep(self) -> None:
        while not self._stop.wait(self._interval.total_seconds()):
            try:
                if not self._renew():
                    self.lost = self._lost_message
                    log.error("%s", self.lost)
                    return
            except LockUnavailableError as error:
                log.warning("%s", error)  # Redis may answer again before the TTL runs out


def _wait(
    until: Callable[[], bool], *, limit: timedelta, poll: timedelta, waiting: Callable[[], str]
) -> bool:
    """Poll ``until`` every ``poll`` for at most ``limit``, logging what is waited for when it
    changes (and every minute); returns whether it came true."""
    deadline = time.monotonic() + limit.total_seconds()
    said, said_at = "", 0.0
    while not until():
        if time.monotonic() >= deadline:
            return False
        what = waiting()
        if what != said or time.monotonic() - said_at >= 60:
            log.info("%s", what)
            said, said_at = what, time.monotonic()
        time.sleep(poll.total_seconds())
    return True


class SharedHold:
    """
    Hold the shared mode of the lock while a backup or maintenance step works (a context manager).

    Entering waits (for at most ``wait``) while a migration has the gate closed, then registers;
    Redis unreachable stops the step (:class:`LockUnavailableError`: fail closed). A keeper thread
    renews the registration every third of its TTL; leaving unregisters.

    :param lock: the environment's shared lock.
    :param dag_id: the DAG of the step's run.
    :param run_id: the step's run.
    :param purpose: what the step does, for the migration's log (``backup dump``...).
    :param wait: how long to wait for a migration to finish.
    :param poll: how often to look again.
    """

    def __init__(
        self,
        lock: SharedLock,
        *,
        dag_id: str,
        run_id: str,
        purpose: str,
        wait: timedelta,
        poll: timedelta = timedelta(seconds=1),
    ) -> None:
        self.lock = lock
        self.holder = SharedHolder(
            token=secrets.token_hex(16),
            dag_id=dag_id,
            run_id=run_id,
            purpose=purpose,
            since=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self.wait = wait
        self.poll = poll
        self._keeper: _Renewer | None = None

    def __enter__(self) -> SharedHold:
        migrating: list[LockHolder | None] = [None]

        def joined() -> bool:
            migrating[0] = self.lock.join(self.holder)
            return migrating[0] is None

        if not _wait(
            joined,
            limit=self.wait,
            poll=self.poll,
            waiting=lambda: (
                f"{self.holder.purpose} of {self.lock.environment} waits for "
                f"the migration of {migrating[0].describe()}"
            ),
        ):
            raise MigrationRunningError(
                f"{self.holder.purpose} of {self.lock.environment} did not start: the migration of "
                f"{migrating[0].describe()} was still running after {self.wait} (migrations.maintenance_wait)"
            )
        self._keeper = _Renewer(
            f"airlock-shared-hold-{self.lock.environment}",
            lambda: self.lock.renew(self.holder),
            self.lock.ttl / 3,
            lost=f"The shared hold of {self.holder.describe()} on {self.lock.environment} expired "
            "(Redis did not answer for longer than its TTL): a migration may run alongside it",
        )
        self._keeper.start()
        log.info("Holding the shared lock of %s for %s", self.lock.environment, self.holder.describe())
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._keeper is not None:
            self._keeper.stop()
        try:
            self.lock.leave(self.holder)
        except LockUnavailableError as error:  # the work is done; the registration expires by itself
            log.warning("%s; the shared hold ends with its TTL (%s)", error, self.lock.ttl)

    def check(self) -> None:
        """Before the next change: :class:`LockLostError` if the registration expired meanwhile."""
        if self._keeper is not None and self._keeper.lost:
            raise LockLostError(self._keeper.lost)


class MigrationGate:
    """
    Close the gate for a migration and wait until no backup or maintenance step holds the shared
    lock (a context manager; the gate opens again on exit).

    The wait is bounded by ``wait``; when a holder is still there after it,
    :class:`MaintenanceRunningError` names it and nothing is migrated. While waiting, ``check``
    (the environment lock's keeper) confirms the run still holds the environment lock.

    :param lock: the environment's shared lock.
    :param migrating: the environment lock's holder (the run about to migrate).
    :param wait: how long to wait for holders.
    :param poll: how often to look again.
    :param check: called while waiting; raises when the run lost its environment lock.
    """

    def __init__(
        self,
        lock: SharedLock,
        migrating: LockHolder,
        *,
        wait: timedelta,
        poll: timedelta = timedelta(seconds=1),
        check: Callable[[], None] = lambda: None,
    ) -> None:
        self.lock = lock
        self.migrating = migrating
        self.wait = wait
        self.poll = poll
        self.check = check
        self.waited_for: list[SharedHolder] = []
        self._keeper: _Renewer | None = None

    def __enter__(self) -> MigrationGate:
        self.lock.close_gate(self.migrating)
        self._keeper = _Renewer(
            f"airlock-migration-gate-{self.lock.environment}",
            lambda: self.lock.renew_gate(self.migrating),
            self.lock.ttl / 3,
            lost=f"The migration gate of {self.lock.environment} expired (Redis did not answer)",
        )
        self._keeper.start()
        try:
            self._wait_for_holders()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_for_holders(self) -> None:
        holders: list[SharedHolder] = []

        def none_left() -> bool:
            self.check()
            holders[:] = self.lock.holders()
            self.waited_for += [h for h in holders if h not in self.waited_for]
            return not holders

        def waiting() -> str:
            return f"Migrations of {self.lock.environment} wait for " + "; ".join(
                h.describe() for h in holders
            )

        if not _wait(none_left, limit=self.wait, poll=self.poll, waiting=waiting):
            raise MaintenanceRunningError(
                f"No migration was applied: {'; '.join(h.describe() for h in holders)} still worked on "
                f"the database of {self.lock.environment} after {self.wait} (migrations.maintenance_wait). "
                "Retry once it has finished, or stop it; see the database migration runbook"
            )
        if self.waited_for:
            log.info(
                "Migrations of %s go on: no backup or maintenance step holds the database",
                self.lock.environment,
            )

    def __exit__(self, *exc_info: object) -> None:
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
        try:
            self.lock.open_gate(self.migrating)
        except LockUnavailableError as error:  # the migrations are over; the gate expires by itself
            log.warning("%s; the gate opens with its TTL (%s)", error, self.lock.ttl)

    def still_closed(self) -> None:
        """Before each migration: :class:`LockLostError` if the gate expired (holders may be back)."""
        if self._keeper is not None and self._keeper.lost:
            raise LockLostError(self._keeper.lost)
