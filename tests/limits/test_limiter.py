"""The limiter's backends — in-process and Redis (a real redis-server) — held to the same
scenarios, and the Limiter's failure modes.

Time travel: the in-process backend takes a clock; for Redis, whose script reads Redis's own
clock, the test moves the key's stored times back instead."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from servers import RedisServer

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.keystore.records import KeyRecord
from typegpt_gateway.limits import (
    InProcessBackend,
    Limiter,
    LimiterUnavailableError,
    Limits,
    Spent,
)
from typegpt_gateway.limits.redis_backend import RedisBackend

TIMEOUT = 20.0


def run(scenario: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, TIMEOUT))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    kind: str
    make: Callable[[], Any]  # a new backend (for Redis: another "replica")
    travel: Callable[[str, float], None]


def _redis_travel(url: str) -> Callable[[str, float], None]:
    def travel(name: str, seconds: float) -> None:
        client = redis.Redis.from_url(url)
        base = f"typegpt-gateway:limits:{{{name}}}"
        for key in (f"{base}:requests", f"{base}:in-flight"):
            for member, score in client.zrange(key, 0, -1, withscores=True):
                client.zadd(key, {member: score - seconds * 1000})
        buckets = client.hgetall(f"{base}:tokens")
        if buckets:
            client.delete(f"{base}:tokens")
            moved = {int(start) - int(seconds): count for start, count in buckets.items()}
            client.hset(f"{base}:tokens", mapping=moved)
        client.close()

    return travel


@pytest.fixture(params=["memory", "redis"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        clock = Clock()
        backend = InProcessBackend(clock)

        def travel(name: str, seconds: float) -> None:
            clock.now += seconds

        yield Harness("memory", lambda: backend, travel)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    redis.Redis.from_url(server.url).flushall()
    yield Harness("redis", lambda: RedisBackend(server.url, timeout=2.0), _redis_travel(server.url))


def test_rpm_is_exact_and_the_window_slides(harness: Harness) -> None:
    async def scenario() -> None:
        backend = harness.make()
        limits = Limits(rpm=3)
        assert (await backend.acquire("k", limits, "a", Spent(0))).admitted
        harness.travel("k", 20)
        for lease in ("b", "c"):
            assert (await backend.acquire("k", limits, lease, Spent(0))).admitted
        refused = await backend.acquire("k", limits, "d", Spent(0))
        assert not refused.admitted and refused.refused == "rpm"
        assert 39 < refused.retry_after <= 40  # when "a" leaves the window
        harness.travel("k", 30)
        refused = await backend.acquire("k", limits, "e", Spent(0))
        assert 9 < refused.retry_after <= 10
        harness.travel("k", 10.5)  # "a" is 60.5 s old, "b" and "c" 40.5 s
        admitted = await backend.acquire("k", limits, "f", Spent(0))
        assert admitted.admitted
        assert dict(admitted.headers)["x-ratelimit-remaining-requests"] == "0"
        refused = await backend.acquire("k", limits, "g", Spent(0))
        assert 19 < refused.retry_after <= 19.5
        # Another key has its own window.
        assert (await backend.acquire("other", limits, "h", Spent(0))).admitted
        await backend.aclose()

    run(scenario())


def test_concurrent_acquires_admit_exactly_the_limit(harness: Harness) -> None:
    async def scenario() -> None:
        # For Redis, five clients are five replicas sharing one Redis.
        backends = [harness.make() for _ in range(5)]
        limits = Limits(rpm=17)
        decisions = await asyncio.gather(
            *(backends[i % 5].acquire("busy", limits, f"lease{i}", Spent(0)) for i in range(60))
        )
        assert sum(d.admitted for d in decisions) == 17
        for backend in {id(b): b for b in backends}.values():
            await backend.aclose()

    run(scenario())


def test_max_concurrent_until_released(harness: Harness) -> None:
    async def scenario() -> None:
        backend = harness.make()
        limits = Limits(max_concurrent=2)
        assert (await backend.acquire("k", limits, "one", Spent(0))).admitted
        assert (await backend.acquire("k", limits, "two", Spent(0))).admitted
        refused = await backend.acquire("k", limits, "three", Spent(0))
        assert refused.refused == "concurrency"
        await backend.release("k", "one")
        assert (await backend.acquire("k", limits, "four", Spent(0))).admitted
        await backend.aclose()

    run(scenario())


def test_tpm_counts_tokens_after_the_request(harness: Harness) -> None:
    async def scenario() -> None:
        backend = harness.make()
        limits = Limits(tpm=100)
        first = await backend.acquire("k", limits, "a", Spent(0))
        assert dict(first.headers)["x-ratelimit-remaining-tokens"] == "100"
        await backend.add_usage("k", limits, Spent(150), Spent(0))
        refused = await backend.acquire("k", limits, "b", Spent(0))
        assert refused.refused == "tpm"
        assert 59 < refused.retry_after <= 61
        harness.travel("k", 62)
        assert (await backend.acquire("k", limits, "c", Spent(0))).admitted
        await backend.aclose()

    run(scenario())


def test_budget_starts_from_the_seed_and_refuses_when_spent(harness: Harness) -> None:
    async def scenario() -> None:
        backend = harness.make()
        limits = Limits(budget_tokens=100, budget_period="day")
        assert (await backend.acquire("k", limits, "a", Spent(90))).admitted
        await backend.add_usage("k", limits, Spent(20), Spent(90))
        refused = await backend.acquire("k", limits, "b", Spent(90))
        assert refused.refused == "budget"
        assert "Used 110" in refused.error.message
        await backend.aclose()

    run(scenario())


def test_dollar_budget_starts_from_the_seed_and_refuses_when_spent(harness: Harness) -> None:
    async def scenario() -> None:
        # For Redis, the second backend is another replica on the same Redis.
        first, second = harness.make(), harness.make()
        limits = Limits(budget_usd_micro=10_000, budget_period="day")
        seed = Spent(500, 9_000)  # the ledger's tokens and cost for the period
        assert (await first.acquire("k", limits, "a", seed)).admitted
        await first.add_usage("k", limits, Spent(20, 1_500), seed)
        refused = await second.acquire("k", limits, "b", seed)
        assert refused.refused == "budget_usd"
        assert "Spent $0.0105" in refused.error.message
        for backend in {id(b): b for b in (first, second)}.values():
            await backend.aclose()

    run(scenario())


def test_a_token_budget_counts_cost_too_for_a_dollar_budget_set_later(harness: Harness) -> None:
    async def scenario() -> None:
        backend = harness.make()
        tokens_only = Limits(budget_tokens=10**9, budget_period="month")
        assert (await backend.acquire("k", tokens_only, "a", Spent(0, 100))).admitted
        await backend.add_usage("k", tokens_only, Spent(5, 700), Spent(0, 100))
        both = Limits(budget_tokens=10**9, budget_usd_micro=800, budget_period="month")
        # The counters exist: the period's cost so far is 800, whatever a stale seed says.
        refused = await backend.acquire("k", both, "b", Spent(0, 100))
        assert refused.refused == "budget_usd" and "Spent $0.0008" in refused.error.message
        await backend.aclose()

    run(scenario())


def test_an_abandoned_lease_expires_in_redis(redis_server: RedisServer) -> None:
    async def scenario() -> None:
        backend = RedisBackend(redis_server.url, timeout=2.0)
        limits = Limits(max_concurrent=1)
        assert (await backend.acquire("crashy", limits, "held", Spent(0))).admitted
        # A replica that died never releases; its lease runs out instead.
        _redis_travel(redis_server.url)("crashy", 31)
        assert (await backend.acquire("crashy", limits, "next", Spent(0))).admitted
        await backend.aclose()

    redis.Redis.from_url(redis_server.url).flushall()
    run(scenario())


# -- the Limiter: tickets and failure modes ------------------------------------------------------


def _key(**limits: Any) -> KeyRecord:
    return KeyRecord(name="k", key_hash=b"h", prefix="sk-", created_at=0, **limits)


class Unreachable(InProcessBackend):
    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.calls = 0
        self.released: list[str] = []

    async def acquire(self, *args: Any) -> Any:
        self.calls += 1
        if self.down:
            raise LimiterUnavailableError("ConnectionError")
        return await super().acquire(*args)

    async def release(self, name: str, lease: str) -> None:
        self.released.append(lease)
        await super().release(name, lease)

    async def ping(self) -> None:
        if self.down:
            raise LimiterUnavailableError("ConnectionError")


def test_unlimited_keys_never_touch_the_backend() -> None:
    backend = Unreachable()
    limiter = Limiter(backend, fail_open=False)
    ticket = run(limiter.admit(_key()))
    assert ticket.headers == () and backend.calls == 0


def test_fail_open_admits_logs_once_and_recovers(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        backend = Unreachable()
        limiter = Limiter(backend, fail_open=True, retry_interval=0.2)
        with caplog.at_level(logging.WARNING, "typegpt_gateway.limits.limiter"):
            for _ in range(5):
                assert (await limiter.admit(_key(rpm=1))).headers == ()
            # Only the first call tried the backend; the others waited out the retry interval.
            assert backend.calls == 1
            backend.down = False
            await asyncio.sleep(0.25)
            ticket = await limiter.admit(_key(rpm=1))
            assert dict(ticket.headers)["x-ratelimit-remaining-requests"] == "0"
            with pytest.raises(GatewayError) as refused:
                await limiter.admit(_key(rpm=1))
            assert refused.value.status == 429
        messages = [record.getMessage() for record in caplog.records]
        assert sum("unreachable" in m for m in messages) == 1
        assert sum("reachable again" in m for m in messages) == 1

    run(scenario())


def test_fail_closed_refuses_with_503() -> None:
    limiter = Limiter(Unreachable(), fail_open=False)
    with pytest.raises(GatewayError) as refused:
        run(limiter.admit(_key(rpm=5)))
    assert refused.value.status == 503 and refused.value.type == "api_error"
    assert dict(refused.value.headers)["retry-after"] == "1"


def test_a_ticket_settles_once() -> None:
    async def scenario() -> None:
        backend = Unreachable()
        backend.down = False
        limiter = Limiter(backend, fail_open=False)
        key = _key(max_concurrent=1, tpm=40)
        ticket = await limiter.admit(key)
        ticket.finish(40)
        ticket.finish(40)
        await asyncio.sleep(0.05)
        assert len(backend.released) == 1
        with pytest.raises(GatewayError) as refused:
            await limiter.admit(key)
        # Refused for tokens counted once, not for a slot still held.
        assert "(TPM): Limit 40, Used 40." in refused.value.message

    run(scenario())


def test_budget_seed_is_read_once_per_period() -> None:
    async def scenario() -> None:
        reads: list[str] = []

        async def seed(name: str, since: Any) -> Spent:
            reads.append(name)
            return Spent(95)

        limiter = Limiter(InProcessBackend(), fail_open=False, budget_seed=seed)
        key = _key(budget_tokens=100, budget_period="month")
        ticket = await limiter.admit(key)
        ticket.finish(10)
        await asyncio.sleep(0.05)
        with pytest.raises(GatewayError) as refused:
            await limiter.admit(key)
        assert "Used 105" in refused.value.message
        assert reads == ["k"]

    run(scenario())


def test_a_tickets_cost_counts_and_a_restart_goes_on_from_the_ledger() -> None:
    async def scenario() -> None:
        ledger = Spent(0, 9_950)

        async def seed(name: str, since: Any) -> Spent:
            return ledger

        key = _key(budget_usd_micro=10_000, budget_period="day")
        limiter = Limiter(InProcessBackend(), fail_open=False, budget_seed=seed)
        (await limiter.admit(key)).finish(12, 83)  # crosses the budget: 10,033
        await limiter.settled(5)
        with pytest.raises(GatewayError) as refused:
            await limiter.admit(key)
        assert "Spent $0.010033" in refused.value.message
        await limiter.aclose()
        # A new process (its in-process counters gone) starts from the ledger's cost.
        ledger = Spent(12, 10_033)
        restarted = Limiter(InProcessBackend(), fail_open=False, budget_seed=seed)
        with pytest.raises(GatewayError) as refused:
            await restarted.admit(key)
        assert "Spent $0.010033" in refused.value.message
        await restarted.aclose()

    run(scenario())


def test_redis_down_then_back(caplog: pytest.LogCaptureFixture) -> None:
    """A real redis-server stopped and started again on the same port."""
    server = RedisServer().start()

    async def scenario() -> None:
        limiter = Limiter(RedisBackend(server.url, timeout=0.5), fail_open=True, retry_interval=0.2)
        key = _key(rpm=2)
        assert (await limiter.admit(key)).headers
        server.stop()
        with caplog.at_level(logging.WARNING, "typegpt_gateway.limits.limiter"):
            for _ in range(4):  # fail-open: admitted without limits, quickly
                assert (await limiter.admit(key)).headers == ()
            server.start()
            deadline = asyncio.get_running_loop().time() + 10
            while not (ticket := await limiter.admit(key)).headers:
                assert asyncio.get_running_loop().time() < deadline, "never recovered"
                await asyncio.sleep(0.1)
        # Redis came back empty (no persistence): the window starts again.
        assert dict(ticket.headers)["x-ratelimit-remaining-requests"] == "1"
        assert any("reachable again" in r.getMessage() for r in caplog.records)
        await limiter.aclose()

    try:
        run(scenario())
    finally:
        server.cleanup()


# -- budgets whose past usage cannot be read ------------------------------------------------------


class Ledger:
    """The usage ledger as the limiter's budget seed reads it: the first `failures` reads fail
    like a key store that hiccups."""

    def __init__(self, spent: int, failures: int) -> None:
        self.spent = spent
        self.failures = failures
        self.reads = 0

    async def seed(self, name: str, since: Any) -> Spent:
        self.reads += 1
        if self.failures > 0:
            self.failures -= 1
            raise OSError("the key store did not answer")
        return Spent(self.spent)


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_failed_budget_read_is_never_kept(harness: Harness, mode: str) -> None:
    async def scenario() -> None:
        ledger = Ledger(spent=100, failures=1)
        limiter = Limiter(harness.make(), fail_open=mode == "open", budget_seed=ledger.seed)
        key = _key(budget_tokens=100, budget_period="month")
        if mode == "open":
            assert (await limiter.admit(key)).headers == ()  # admitted, budget unchecked
        else:
            with pytest.raises(GatewayError) as unavailable:
                await limiter.admit(key)
            assert unavailable.value.status == 503
        # The next requests read the ledger again: the budget was spent before the hiccup.
        for _ in range(2):
            with pytest.raises(GatewayError) as refused:
                await limiter.admit(key)
            assert refused.value.status == 429 and "Used 100" in refused.value.message
        assert ledger.reads == 2
        await limiter.aclose()

    run(scenario())


def test_tokens_with_an_unknown_budget_seed_never_start_a_counter(harness: Harness) -> None:
    async def scenario() -> None:
        # Both the admission's and the settle's reads fail: the 5 tokens are in the usage
        # ledger only, and the budget starts from the ledger at the next good read.
        ledger = Ledger(spent=90, failures=2)
        limiter = Limiter(harness.make(), fail_open=True, budget_seed=ledger.seed)
        key = _key(budget_tokens=100, budget_period="month")
        (await limiter.admit(key)).finish(5)
        await limiter.settled(5)
        ledger.spent += 5  # the usage ledger is written
        (await limiter.admit(key)).finish(10)
        await limiter.settled(5)
        with pytest.raises(GatewayError) as refused:
            await limiter.admit(key)
        assert "Used 105" in refused.value.message
        await limiter.aclose()

    run(scenario())


def test_usage_without_a_seed_only_adds_to_a_counter_that_exists(harness: Harness) -> None:
    async def scenario() -> None:
        backend = harness.make()
        limits = Limits(budget_tokens=100, budget_period="day")
        await backend.add_usage("k", limits, Spent(5), None)  # no counter yet: nothing to add to
        refused = await backend.acquire("k", limits, "a", Spent(100))
        assert "Used 100" in refused.error.message  # started from the seed, not from 5
        await backend.add_usage("k", limits, Spent(5), None)
        refused = await backend.acquire("k", limits, "b", Spent(100))
        assert "Used 105" in refused.error.message
        await backend.aclose()

    run(scenario())


def test_a_hung_budget_read_costs_one_wait_and_one_read_at_a_time() -> None:
    async def scenario() -> None:
        store_back = asyncio.Event()
        reads: list[str] = []

        async def hung(name: str, since: Any) -> Spent:
            reads.append(name)
            await store_back.wait()  # a paused key store
            return Spent(100)

        limiter = Limiter(InProcessBackend(), fail_open=True, budget_seed=hung)
        keys = [
            KeyRecord(name=f"k{i}", key_hash=b"h", prefix="sk-", created_at=0, budget_tokens=100)
            for i in range(10)
        ]
        loop = asyncio.get_running_loop()
        for wave in range(3):
            start = loop.time()
            tickets = await asyncio.gather(*(limiter.admit(key) for key in keys))
            assert all(ticket.headers == () for ticket in tickets)  # admitted, budget unchecked
            # The first wave waits for its reads (1 s at most); then they are known to hang.
            assert loop.time() - start < (2.0 if wave == 0 else 0.1)
            assert len(reads) == 10  # no read started while those hang
        store_back.set()
        deadline = loop.time() + 5
        while True:  # until the late answers are in
            try:
                await limiter.admit(keys[0])
            except GatewayError:
                break
            assert loop.time() < deadline, "the reads never finished"
            await asyncio.sleep(0.01)
        for key in keys:
            with pytest.raises(GatewayError) as refused:
                await limiter.admit(key)
            assert "Used 100" in refused.value.message
        assert len(reads) == 10  # the late answers were kept
        await limiter.aclose()

    run(scenario())
