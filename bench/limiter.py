"""The limiter's added cost per request, in-process and with Redis (a throwaway redis-server
on 127.0.0.1 that this script starts and stops).

    python bench/limiter.py [--requests 3000] [--seconds 20]

For each backend it times, one request after another, `Limiter.admit` for a key with rpm, tpm
and max-concurrent limits (what the request path waits for) and the settle that follows
(releasing the slot and counting tokens, done off the request path), and prints the median
and p90 in microseconds, next to the same for an unlimited key (the fast path). Every run is
bounded by both a request count and a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from servers import RedisServer

from typegpt_gateway.keystore.records import KeyRecord
from typegpt_gateway.limits import InProcessBackend, Limiter
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


async def _bench(name: str, limiter: Limiter, requests: int, seconds: float) -> None:
    await _measure(limiter, LIMITED, min(200, requests), seconds)  # warm up
    free, _ = await _measure(limiter, UNLIMITED, requests, seconds)
    admits, settles = await _measure(limiter, LIMITED, requests, seconds)
    await limiter.aclose()
    print(f"{name:<11} unlimited key, admit   {_micros(free)}   ({len(free)} requests)")
    print(f"{name:<11} limited key, admit     {_micros(admits)}   ({len(admits)} requests)")
    print(f"{name:<11} limited key, settle    {_micros(settles)}   (off the request path)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    requests, seconds = max(args.requests, 1), max(args.seconds, 1.0)

    in_process = Limiter(InProcessBackend(), fail_open=False)
    asyncio.run(_bench("in-process", in_process, requests, seconds))
    if shutil.which("redis-server") is None:
        print("redis         skipped: redis-server is not installed (apt-get install redis-server)")
        return
    server = RedisServer().start()
    try:
        limiter = Limiter(RedisBackend(server.url, timeout=2.0), fail_open=False)
        asyncio.run(_bench("redis", limiter, requests, seconds))
    finally:
        server.cleanup()


if __name__ == "__main__":
    main()
