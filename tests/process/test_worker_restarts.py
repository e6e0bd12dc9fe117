"""A worker that dies is started again on a backoff, also when starting it fails for a while
(no memory or processes left to fork): each failed start is tried again, and the one exit is
reported once."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from typegpt_gateway.process import workers
from typegpt_gateway.settings import Settings


class _Exited:
    pid = 4242
    returncode = -9

    async def wait(self) -> int:
        return self.returncode


class _Running:
    pid = 4343
    returncode = None

    async def wait(self) -> int:
        await asyncio.Event().wait()  # until the pool stops watching it
        raise AssertionError("unreachable")


def test_a_worker_whose_restart_fails_is_tried_again_until_it_starts(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(workers, "FIRST_BACKOFF", 0.01)
    monkeypatch.setattr(workers, "MAX_BACKOFF", 0.05)
    pool = workers.WorkerPool(Settings(workers=1))
    (worker,) = pool.workers
    worker.process = _Exited()  # type: ignore[assignment]
    worker.started = time.monotonic()
    attempts: list[float] = []

    async def spawn(started: workers.Worker) -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise OSError(11, "Resource temporarily unavailable")
        started.process = _Running()  # type: ignore[assignment]
        started.started = time.monotonic()

    monkeypatch.setattr(pool, "_spawn", spawn)

    async def scenario() -> None:
        keeper = asyncio.create_task(pool._keep(worker))
        deadline = time.monotonic() + 10
        while len(attempts) < 3:
            assert time.monotonic() < deadline and not keeper.done(), attempts
            await asyncio.sleep(0.01)
        keeper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await keeper

    with caplog.at_level(logging.ERROR, logger="typegpt_gateway"):
        asyncio.run(scenario())
    messages = [record.getMessage() for record in caplog.records]
    assert sum("exited with code -9" in message for message in messages) == 1, messages
    assert sum("could not be started" in message for message in messages) == 2, messages
    # Each says how long until the next try: the backoff, doubled each time up to its cap.
    assert [m.rsplit(" ", 1)[-1] for m in messages if "could not" in m] == ["0.02s", "0.04s"]
