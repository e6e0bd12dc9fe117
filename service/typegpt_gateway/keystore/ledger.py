"""The usage ledger: requests, tokens, errors and cost per key, model and UTC day.

Requests add to counters in memory (no I/O on the request path); a background task writes them
to the key store every `interval` seconds as one batch, in one transaction, and `close` writes
what is left, so a clean shutdown loses nothing. A batch has an id that the store records with
its counts: a failed write is tried again with the same id and the same counts, and the store
skips a batch it already has, so a write whose commit went through unseen is not counted twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from ..usage import Usage
from .store import Store, UsageRow

logger = logging.getLogger(__name__)

_Key = tuple[str, dt.date, str]
# A pending entry's counters, in UsageRow's order after day and model.
_COUNTERS = (
    _REQUESTS,
    _PROMPT,
    _COMPLETION,
    _ERRORS,
    _COST,
    _UNPRICED,
    _ESTIMATED,
) = range(7)


def utc_day(now: float) -> dt.date:
    return dt.datetime.fromtimestamp(now, dt.UTC).date()


def _entries(pending: dict[_Key, list[int]]) -> tuple[tuple[str, UsageRow], ...]:
    return tuple(
        (name, UsageRow(day, model, *counts)) for (name, day, model), counts in pending.items()
    )


@dataclass(frozen=True, slots=True)
class _Batch:
    id: str
    entries: tuple[tuple[str, UsageRow], ...]


class UsageLedger:
    def __init__(
        self, store: Store, interval: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._interval = interval
        self._clock = clock
        self._pending: dict[_Key, list[int]] = {}
        # Taken from _pending and not yet known to be in the store. It keeps its id and counts
        # until it is: new counts must not join a batch that may already be committed.
        self._batch: _Batch | None = None
        # The store call writing _batch while it runs: a cancelled flush leaves it running.
        self._writing: asyncio.Future[bool] | None = None
        self._write_lock = asyncio.Lock()

    def record(
        self,
        name: str,
        model: str,
        usage: Usage | None,
        *,
        error: bool,
        cost_micro_usd: int | None = None,
    ) -> None:
        """One request of key `name`: its tokens (if any reached the upstream), whether it
        ended in an error, and its cost (None with a usage: the model had no price for what
        it used, or its use went unreported, so the cost is unknown and the request counts as
        unpriced). Images, characters and seconds have no column: they show through the
        cost only."""
        counts = self._pending.setdefault(
            (name, utc_day(self._clock()), model), [0] * len(_COUNTERS)
        )
        counts[_REQUESTS] += 1
        if usage is not None:
            counts[_PROMPT] += usage.prompt_tokens
            counts[_COMPLETION] += usage.completion_tokens
            if cost_micro_usd is None:
                counts[_UNPRICED] += 1
            else:
                counts[_COST] += cost_micro_usd
            counts[_ESTIMATED] += int(usage.estimated)
        counts[_ERRORS] += int(error)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> bool:
        """Writes what is not yet in the store; False when the store failed (it is kept for
        the next flush)."""
        async with self._write_lock:
            if self._batch is not None and not await self._write():
                return False
            self._batch = self._take()
            return self._batch is None or await self._write()

    async def close(self, attempts: int = 2, pause: float = 0.5) -> bool:
        """The last flush, at shutdown, after the writer task was cancelled. Tried again once
        (a PostgreSQL connection found dead fails one call, the next reconnects), not more:
        against a stuck store each try lasts up to the store's call bound. What still cannot be
        written is logged."""
        for attempt in range(attempts):
            if await self.flush():
                return True
            if attempt + 1 < attempts:
                await asyncio.sleep(pause)
        unwritten = [
            row
            for _, row in (*(self._batch.entries if self._batch else ()), *_entries(self._pending))
        ]
        logger.error(
            "the usage of %d requests (%d prompt and %d completion tokens, %d micro-dollars) "
            "could not be written to the key store",
            sum(row.requests for row in unwritten),
            sum(row.prompt_tokens for row in unwritten),
            sum(row.completion_tokens for row in unwritten),
            sum(row.cost_micro_usd for row in unwritten),
        )
        return False

    def _take(self) -> _Batch | None:
        if not self._pending:
            return None
        pending, self._pending = self._pending, {}
        return _Batch(uuid.uuid4().hex, _entries(pending))

    async def _write(self) -> bool:
        batch = self._batch
        assert batch is not None
        if self._writing is None:
            write = functools.partial(self._store.add_usage, batch.entries, batch_id=batch.id)
            self._writing = asyncio.get_running_loop().run_in_executor(None, write)
        try:
            # Shielded: a cancelled flush (the writer task, at shutdown) leaves the store call
            # running, and the next flush takes up its outcome instead of losing the batch.
            written = await asyncio.shield(self._writing)
        except Exception as exc:
            self._writing = None
            logger.warning(
                "could not write the usage ledger (%s); trying the same batch again next time",
                type(exc).__name__,
            )
            return False
        self._writing = self._batch = None
        if not written:
            logger.info(
                "usage batch %s was already in the key store (a write whose answer was lost "
                "went through); not counted again",
                batch.id,
            )
        return True
