"""The limiter's added cost per request, in-process and with Redis (a throwaway redis-server
on 127.0.0.1 that this script starts and stops).

    python bench/limiter.py [--requests 3000] [--seconds 20] [--json PATH]

For each backend it times, one request after another, `Limiter.admit` for a key with rpm, tpm
and max-concurrent limits (what the request path waits for) and the settle that follows
(releasing the slot and counting tokens, done off the request path), and prints the median
and p90 in microseconds, next to the same for an unlimited key (the fast path). Every run is
bounded by both a request count and a time limit.

`--json PATH` also writes those figures, and what one request costs Redis (for a key with every
limit, and for an unlimited one): its commands, from `INFO commandstats` (a script's own
commands counted), the gateway's round trips to it, Redis's CPU, from `INFO cpu`, and the CPU
the limiter and its Redis client take in the gateway's process.
bench/capacity.py reads it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servers import RedisServer

from typegpt_gateway.keystore.records import KeyRecord
from typegpt_gateway.limits import Backend, Decision, InProcessBackend, Limiter, Limits, Spent
from typegpt_gateway.limits.redis_backend import RedisBackend

LIMITED = KeyRecord(
    name="bench",
    key_hash=b"bench",
    prefix="sk-bench",
    created_at=0,
    rpm=10**9,
    tpm=10**12,
    max_concurrent=10**6,
)
UNLIMITED = KeyRecord(name="free", key_hash=b"free", prefix="sk-free", created_at=0)
# Every limit the Redis backend keeps, for its traffic: the timed key has no budget.
EVERY_LIMIT = KeyRecord(
    name="every-limit",
    key_hash=b"every-limit",
    prefix="sk-every",
    created_at=0,
    rpm=10**9,
    tpm=10**12,
    budget_tokens=10**15,
    budget_period="month",
    max_concurrent=10**6,
)
TRAFFIC_REQUESTS = 500


def _quantiles(samples: list[float]) -> dict[str, float | int]:
    """Median and p90 in microseconds, as printed."""
    ordered = sorted(samples)
    if not ordered:
        return {"requests": 0}
    return {
        "median_us": round(statistics.median(ordered) * 1e6, 1),
        "p90_us": round(ordered[int(len(ordered) * 0.9)] * 1e6, 1),
        "requests": len(ordered),
    }


def _micros(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    ordered = sorted(samples)
    p90 = ordered[int(len(ordered) * 0.9)]
    return f"median {statistics.median(ordered) * 1e6:8.1f} µs   p90 {p90 * 1e6:8.1f} µs"


async def _measure(limiter: Limiter, key: KeyRecord, requests: int, seconds: float) -> tuple:
    admits: list[float] = []
    settles: list[float] = []
    deadline = time.monotonic() + seconds
    for _ in range(requests):
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        ticket = await limiter.admit(key)
        admitted = time.perf_counter()
        ticket.finish(42)
        # Wait for the settle here, so that its cost is measured and not overlapped.
        await limiter.settled()
        admits.append(admitted - start)
        settles.append(time.perf_counter() - admitted)
    return admits, settles


async def _bench(name: str, limiter: Limiter, requests: int, seconds: float) -> dict[str, Any]:
    await _measure(limiter, LIMITED, min(200, requests), seconds)  # warm up
    free, _ = await _measure(limiter, UNLIMITED, requests, seconds)
    admits, settles = await _measure(limiter, LIMITED, requests, seconds)
    await limiter.aclose()
    print(f"{name:<11} unlimited key, admit   {_micros(free)}   ({len(free)} requests)")
    print(f"{name:<11} limited key, admit     {_micros(admits)}   ({len(admits)} requests)")
    print(f"{name:<11} limited key, settle    {_micros(settles)}   (off the request path)")
    return {
        "unlimited_admit": _quantiles(free),
        "limited_admit": _quantiles(admits),
        "limited_settle": _quantiles(settles),
    }


class CountingBackend:
    """A backend that counts the calls made to the one it wraps: each Redis backend call is one
    command sent (EVALSHA or ZREM), so one round trip."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.calls = 0

    async def acquire(self, name: str, limits: Limits, lease: str, budget_seed: Spent) -> Decision:
        self.calls += 1
        return await self.backend.acquire(name, limits, lease, budget_seed)

    async def add_usage(
        self, name: str, limits: Limits, used: Spent, budget_seed: Spent | None
    ) -> None:
        self.calls += 1
        await self.backend.add_usage(name, limits, used, budget_seed)

    async def release(self, name: str, lease: str) -> None:
        self.calls += 1
        await self.backend.release(name, lease)

    async def ping(self) -> None:
        self.calls += 1
        await self.backend.ping()

    async def aclose(self) -> None:
        await self.backend.aclose()


def _redis_counters(client: redis.Redis) -> tuple[dict[str, int], float]:
    """Calls per command so far, and the seconds of CPU Redis has used."""
    stats = client.info("commandstats")
    cpu = client.info("cpu")
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    return calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


async def _traffic(url: str, key: KeyRecord, requests: int) -> dict[str, Any]:
    """What `requests` admit-and-settle rounds of `key` cost Redis, per request."""
    counting = CountingBackend(RedisBackend(url, timeout=2.0))
    limiter = Limiter(counting, fail_open=False)
    await _measure(limiter, key, 50, 60.0)  # loads the scripts, fills the pool
    client = redis.Redis.from_url(url)
    try:
        calls_before, cpu_before = _redis_counters(client)
        trips_before, own_cpu_before = counting.calls, time.process_time()
        await _measure(limiter, key, requests, 60.0)
        own_cpu = time.process_time() - own_cpu_before
        calls_after, cpu_after = _redis_counters(client)
    finally:
        client.close()
        await limiter.aclose()
    # The two INFO calls of the reading are not the gateway's.
    calls_after["info"] = calls_after.get("info", 0) - 2
    commands = {
        name: (count - calls_before.get(name, 0)) / requests
        for name, count in sorted(calls_after.items())
        if count > calls_before.get(name, 0)
    }
    return {
        "requests": requests,
        "commands_per_request": sum(commands.values()),
        "round_trips_per_request": (counting.calls - trips_before) / requests,
        "redis_cpu_us_per_request": round((cpu_after - cpu_before) * 1e6 / requests, 1),
        # The gateway's side: the limiter and the Redis client, in this process.
        "client_cpu_us_per_request": round(own_cpu * 1e6 / requests, 1),
        "commands": commands,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    requests, seconds = max(args.requests, 1), max(args.seconds, 1.0)

    results: dict[str, Any] = {}
    in_process = Limiter(InProcessBackend(), fail_open=False)
    results["in_process"] = asyncio.run(_bench("in-process", in_process, requests, seconds))
    if shutil.which("redis-server") is None:
        print("redis         skipped: redis-server is not installed (apt-get install redis-server)")
    else:
        server = RedisServer().start()
        try:
            limiter = Limiter(RedisBackend(server.url, timeout=2.0), fail_open=False)
            results["redis"] = asyncio.run(_bench("redis", limiter, requests, seconds))
            if args.json is not None:
                results["redis_traffic"] = {
                    "every_limit": asyncio.run(_traffic(server.url, EVERY_LIMIT, TRAFFIC_REQUESTS)),
                    "unlimited": asyncio.run(_traffic(server.url, UNLIMITED, TRAFFIC_REQUESTS)),
                }
        finally:
            server.cleanup()
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
