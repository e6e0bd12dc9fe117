"""The Redis limiter backend: one shared state for every gateway replica.

Each check-and-record is one Lua script, which Redis runs atomically, and all times come from
Redis's own clock (`TIME`), so N replicas sharing a Redis admit exactly N requests for a limit
of N whatever their clocks say. In-flight requests are leases with an expiry, renewed while
they run, so a replica that dies cannot hold slots for ever.

Every call touches the keys of one client key only, and those share one hash tag (`{name}`),
so each call stays in one hash slot: the backend works on a single Redis, on Redis Cluster
(`cluster=True`) and behind proxies that refuse multi-slot scripts (CROSSSLOT).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from .limiter import LimiterUnavailableError
from .rules import BUCKET, WINDOW, Decision, Limits, Snapshot, Spent, decide, period_bounds

logger = logging.getLogger(__name__)

LEASE_TTL = 30.0  # seconds; renewed every third of it while the request runs
# Budget counters outlive their period a little, for requests that straddle its end.
BUDGET_GRACE = 86_400

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local budget, maxc = tonumber(ARGV[3]), tonumber(ARGV[4])
local lease_ttl, window, bucket = tonumber(ARGV[6]), tonumber(ARGV[9]), tonumber(ARGV[10])
local budget_usd = tonumber(ARGV[11])
local admit = true

local requests, oldest, newest = 0, -1, -1
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  requests = redis.call('ZCARD', KEYS[1])
  if requests > 0 then
    oldest = tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
    newest = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
  end
  if requests >= rpm then admit = false end
end

local buckets, tokens = {}, 0
if tpm > 0 then
  local flat = redis.call('HGETALL', KEYS[2])
  for i = 1, #flat, 2 do
    local start, count = tonumber(flat[i]), tonumber(flat[i + 1])
    if (start + bucket) * 1000 + window > now then
      tokens = tokens + count
      buckets[#buckets + 1] = start
      buckets[#buckets + 1] = count
    else
      redis.call('HDEL', KEYS[2], flat[i])
    end
  end
  if tokens >= tpm then admit = false end
end

-- With either budget, both the period's tokens (KEYS[3]) and cost (KEYS[5]) are counted.
local used, spent = 0, 0
if ARGV[13] == '1' then
  redis.call('SET', KEYS[3], ARGV[7], 'NX', 'EXAT', ARGV[8])
  used = tonumber(redis.call('GET', KEYS[3]))
  redis.call('SET', KEYS[5], ARGV[12], 'NX', 'EXAT', ARGV[8])
  spent = tonumber(redis.call('GET', KEYS[5]))
  if budget > 0 and used >= budget then admit = false end
  if budget_usd > 0 and spent >= budget_usd then admit = false end
end

local in_flight = 0
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  in_flight = redis.call('ZCARD', KEYS[4])
  if in_flight >= maxc then admit = false end
end

if admit then
  if rpm > 0 then
    redis.call('ZADD', KEYS[1], now, ARGV[5])
    redis.call('PEXPIRE', KEYS[1], window)
  end
  if maxc > 0 then
    redis.call('ZADD', KEYS[4], now + lease_ttl, ARGV[5])
    redis.call('PEXPIRE', KEYS[4], lease_ttl)
  end
end
local reply = {admit and 1 or 0, now, requests, oldest, newest, used, in_flight, spent}
for i = 1, #buckets do reply[#reply + 1] = buckets[i] end
return reply
"""

_ADD_USAGE = """
local t = redis.call('TIME')
local bucket = tonumber(ARGV[5])
local start = math.floor(tonumber(t[1]) / bucket) * bucket
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], start, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[6]) + bucket * 1000)
end
if ARGV[3] == '?' then
  -- The key's past usage is unknown: count only into a budget that is counted already.
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCRBY', KEYS[2], ARGV[1]) end
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('INCRBY', KEYS[3], ARGV[7]) end
elseif ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3], 'NX', 'EXAT', ARGV[4])
  redis.call('INCRBY', KEYS[2], ARGV[1])
  redis.call('SET', KEYS[3], ARGV[8], 'NX', 'EXAT', ARGV[4])
  redis.call('INCRBY', KEYS[3], ARGV[7])
end
return 1
"""

# One client key's leases (KEYS[1], its in-flight set): XX never brings back an expired one.
_RENEW = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
"""


def _keys(name: str) -> tuple[str, str, str]:
    # One hash tag per client key keeps its keys in one slot (Redis Cluster, proxies).
    base = f"typegpt-gateway:limits:{{{name}}}"
    return f"{base}:requests", f"{base}:tokens", f"{base}:in-flight"


def _budget_keys(name: str, now: float, limits: Limits) -> tuple[str, str, int]:
    """The budget period's token and cost counters, and when they expire."""
    start, end = period_bounds(now, limits.budget_period or "month")
    period = f"{limits.budget_period}:{start.isoformat()}"
    base = f"typegpt-gateway:limits:{{{name}}}"
    return f"{base}:budget:{period}", f"{base}:budget-usd:{period}", int(end) + BUDGET_GRACE


def _snapshot(reply: Sequence[int]) -> tuple[bool, Snapshot]:
    admitted, now_ms, requests, oldest, newest, used, in_flight, spent, *flat = (
        int(x) for x in reply
    )
    buckets = sorted(zip(flat[0::2], flat[1::2], strict=True))
    return bool(admitted), Snapshot(
        now=now_ms / 1000,
        requests=requests,
        oldest_request=oldest / 1000 if oldest >= 0 else None,
        newest_request=newest / 1000 if newest >= 0 else None,
        token_buckets=tuple(buckets),
        budget_used=used,
        spent_micro_usd=spent,
        in_flight=in_flight,
    )


class RedisBackend:
    def __init__(self, url: str, *, timeout: float, cluster: bool = False) -> None:
        options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        self._redis: aioredis.Redis | aioredis.RedisCluster
        if cluster:
            # The cluster client would retry timeouts too: no retry, the limiter's probe finds
            # a failed-over node.
            self._redis = aioredis.RedisCluster.from_url(
                url, retry=Retry(NoBackoff(), 0), **options
            )
        else:
            # A refused or reset connection is retried once on a fresh one (a Redis that
            # restarted leaves the pool's connections dead); a timeout is not: it would double
            # the stall.
            retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
            self._redis = aioredis.Redis.from_url(url, retry=retry, **options)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._add_usage = self._redis.register_script(_ADD_USAGE)
        self._renew = self._redis.register_script(_RENEW)
        self._leases: dict[str, str] = {}  # lease id -> its in-flight set
        self._renewer: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return "RedisBackend()"  # the URL may hold a password

    async def acquire(self, name: str, limits: Limits, lease: str, budget_seed: Spent) -> Decision:
        requests, tokens, in_flight = _keys(name)
        budget, budget_usd, budget_expiry = _budget_keys(name, time.time(), limits)
        args = (
            limits.rpm or 0,
            limits.tpm or 0,
            limits.budget_tokens or 0,
            limits.max_concurrent or 0,
            lease,
            int(LEASE_TTL * 1000),
            budget_seed.tokens,
            budget_expiry,
            int(WINDOW * 1000),
            BUCKET,
            limits.budget_usd_micro or 0,
            budget_seed.cost_micro_usd,
            "1" if limits.budgeted else "0",
        )
        keys = [requests, tokens, budget, in_flight, budget_usd]
        try:
            reply = await self._acquire(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailableError(type(exc).__name__) from exc
        admitted, snap = _snapshot(reply)
        if admitted and limits.max_concurrent is not None:
            self._leases[lease] = in_flight
            self._start_renewer()
        decision = decide(limits, snap)
        if decision.admitted != admitted:
            # Both sides compare the same numbers: a difference is a bug, not a verdict.
            await self.release(name, lease)
            raise LimiterUnavailableError("the Lua script and the rules disagree")
        return decision

    async def add_usage(
        self, name: str, limits: Limits, used: Spent, budget_seed: Spent | None
    ) -> None:
        bucket_key = _keys(name)[1]
        budget, budget_usd, budget_expiry = _budget_keys(name, time.time(), limits)
        seed = "?" if budget_seed is None else str(budget_seed.tokens)
        args = (
            used.tokens,
            "1" if limits.tpm is not None else "0",
            seed if limits.budgeted else "",
            budget_expiry,
            BUCKET,
            int(WINDOW * 1000),
            used.cost_micro_usd,
            budget_seed.cost_micro_usd if budget_seed is not None else 0,
        )
        try:
            await self._add_usage(keys=[bucket_key, budget, budget_usd], args=args)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailableError(type(exc).__name__) from exc

    async def release(self, name: str, lease: str) -> None:
        # Also for a lease this process never saw admitted: an acquire that timed out may run
        # when Redis resumes, and removing a missing member is harmless.
        self._leases.pop(lease, None)
        try:
            await self._redis.zrem(_keys(name)[2], lease)
        except (RedisError, OSError) as exc:
            raise LimiterUnavailableError(type(exc).__name__) from exc

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise LimiterUnavailableError(type(exc).__name__) from exc

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        while self._leases:
            await asyncio.sleep(LEASE_TTL / 3)
            try:
                await self.renew()
            except LimiterUnavailableError as exc:
                logger.warning("could not renew in-flight leases in Redis: %s", exc)

    async def renew(self) -> None:
        """Extends the leases of the requests still running, one call per client key."""
        by_key: dict[str, list[str]] = {}
        for lease, in_flight in self._leases.items():
            by_key.setdefault(in_flight, []).append(lease)
        for in_flight, leases in by_key.items():
            try:
                await self._renew(keys=[in_flight], args=[int(LEASE_TTL * 1000), *leases])
            except (RedisError, OSError) as exc:
                # The others would wait as long: the next round tries again.
                raise LimiterUnavailableError(type(exc).__name__) from exc

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._redis.aclose()
