"""Sends requests with garbage keys from a process of its own, so that a test timing other
requests meanwhile measures the gateway rather than its own busy event loop.

    python garbage_flood.py URL COUNT CONCURRENCY   → prints {"403": COUNT} (statuses seen)
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys

import aiohttp
from openai_shape import chat_body


async def flood(url: str, count: int, concurrency: int) -> dict[int, int]:
    statuses: collections.Counter[int] = collections.Counter()
    indexes = iter(range(count))
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def worker() -> None:
            for index in indexes:
                headers = {"authorization": f"Bearer sk-garbage-{index:06d}"}
                async with session.post(url, json=chat_body(), headers=headers) as response:
                    await response.read()
                    statuses[response.status] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return dict(statuses)


if __name__ == "__main__":
    target, total, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print(json.dumps(asyncio.run(asyncio.wait_for(flood(target, total, workers), 300))))
