"""The usage ledger against both real stores: a batch whose commit is uncertain is counted
once, and a writer cancelled in the middle of a write (shutdown) loses and repeats nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from typing import Any

import pytest

from typegpt_gateway.keystore.ledger import UsageLedger
from typegpt_gateway.keystore.store import Store, UsageRow
from typegpt_gateway.usage import Usage

DAY = dt.date(2026, 5, 1)
NOON = 1_777_636_800.0  # 2026-05-01 12:00 UTC
WAIT = 30.0  # the most a test waits for a thread to get somewhere


class Faulty:
    """A real store whose next add_usage can be held up, fail before writing, or fail after
    its COMMIT (as when the connection drops while the commit's answer is on its way)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.next_outcome = "commits"
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def add_usage(self, entries: Any, **kwargs: Any) -> Any:
        if self.hold:
            self.hold = False
            self.entered.set()
            assert self.release.wait(WAIT)
        outcome, self.next_outcome = self.next_outcome, "commits"
        if outcome == "fails":
            raise OSError("connection refused")
        written = self.store.add_usage(entries, **kwargs)
        if outcome == "raises after commit":
            raise OSError("server closed the connection unexpectedly")
        return written


def test_a_write_whose_commit_went_through_is_counted_once(store_factory):
    async def scenario() -> None:
        store = Faulty(store_factory())
        ledger = UsageLedger(store, interval=3600, clock=lambda: NOON)
        ledger.record("k", "gpt-4o", Usage(10, 20), error=False, cost_micro_usd=225)
        store.next_outcome = "raises after commit"
        assert await ledger.flush() is False  # the ledger cannot know it was written...
        ledger.record("k", "gpt-4o", Usage(1, 2), error=True, cost_micro_usd=23)
        assert await ledger.flush() is True  # ...so it writes it again, under the same id
        assert store.store.usage("k") == [UsageRow(DAY, "gpt-4o", 2, 11, 22, 1, 248)]
        assert await ledger.flush() is True
        assert store.store.usage("k") == [UsageRow(DAY, "gpt-4o", 2, 11, 22, 1, 248)]

    asyncio.run(scenario())


@pytest.mark.parametrize("outcome", ["commits", "fails", "raises after commit"])
def test_a_writer_cancelled_in_the_middle_of_a_write_loses_and_repeats_nothing(
    store_factory, outcome
):
    async def scenario() -> None:
        store = Faulty(store_factory())
        store.hold, store.next_outcome = True, outcome
        ledger = UsageLedger(store, interval=0.01, clock=lambda: NOON)
        ledger.record("k", "gpt-4o", Usage(10, 20), error=False, cost_micro_usd=225)
        writer = asyncio.create_task(ledger.run())
        assert await asyncio.to_thread(store.entered.wait, WAIT)
        writer.cancel()  # shutdown, while add_usage runs in its thread
        with pytest.raises(asyncio.CancelledError):
            await writer
        ledger.record("k", "gpt-4o", Usage(1, 2), error=True, cost_micro_usd=23)
        store.release.set()
        # The final flush: the batch under way first (a failed one is tried once more).
        flushed = [await ledger.flush() for _ in range(2)]
        assert flushed[-1] is True
        assert store.store.usage("k") == [UsageRow(DAY, "gpt-4o", 2, 11, 22, 1, 248)]

    asyncio.run(scenario())


def test_close_tries_again_and_says_what_it_could_not_write(store_factory, caplog):
    async def scenario() -> None:
        store = Faulty(store_factory())
        ledger = UsageLedger(store, interval=3600, clock=lambda: NOON)
        ledger.record("k", "gpt-4o", Usage(10, 20), error=False, cost_micro_usd=225)
        # A connection found dead fails its first call; the next one reconnects.
        store.next_outcome = "fails"
        assert await ledger.close() is True
        assert store.store.usage("k") == [UsageRow(DAY, "gpt-4o", 1, 10, 20, 0, 225)]

        ledger.record("k", "o3", Usage(1, 2), error=False, cost_micro_usd=18)
        store.add_usage = _always_fails
        with caplog.at_level(logging.ERROR, logger="typegpt_gateway.keystore.ledger"):
            assert await ledger.close(pause=0.01) is False
        assert "1 requests (1 prompt and 2 completion tokens, 18 micro-dollars)" in caplog.text

    asyncio.run(scenario())


def _always_fails(*_args: Any, **_kwargs: Any) -> None:
    raise OSError("connection refused")
