"""The usage ledger: requests, tokens and errors per key, model and UTC day.

Requests add to counters in memory (no I/O on the request path); a background task adds them
to the key store every `interval` seconds in one transaction, and `close` writes what is left,
so a clean shutdown loses nothing. A failed write is kept and retried with the next one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable

from .store import Store, UsageRow
from .usage import Usage

logger = logging.getLogger(__name__)

_Key = tuple[str, dt.date, str]


def utc_day(now: float) -> dt.date:
    return dt.datetime.fromtimestamp(now, dt.UTC).date()


class UsageLedger:
    def __init__(
        self, store: Store, interval: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._interval = interval
        self._clock = clock
        self._pending: dict[_Key, list[int]] = {}
        self._write_lock = asyncio.Lock()

    def record(self, name: str, model: str, usage: Usage | None, *, error: bool) -> None:
        """One request of key `name`: its tokens (if any reached the upstream) and whether it
        ended in an error."""
        counts = self._pending.setdefault((name, utc_day(self._clock()), model), [0, 0, 0, 0])
        counts[0] += 1
        if usage is not None:
            counts[1] += usage.prompt_tokens
            counts[2] += usage.completion_tokens
        counts[3] += int(error)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> bool:
        """Writes the pending counts; False (and they stay pending) when the store failed."""
        async with self._write_lock:
            batch, self._pending = self._pending, {}
            if not batch:
                return True
            rows = [
                (name, UsageRow(day, model, *counts))
                for (name, day, model), counts in batch.items()
            ]
            try:
                await asyncio.to_thread(self._store.add_usage, rows)
            except Exception as exc:
                logger.warning(
                    "could not write the usage ledger (%s); keeping it for the next try",
                    type(exc).__name__,
                )
                for key, counts in batch.items():
                    merged = self._pending.setdefault(key, [0, 0, 0, 0])
                    for index, count in enumerate(counts):
                        merged[index] += count
                return False
            return True
