"""The limiter when Redis stalls or its backend is stuck, and on a real Redis Cluster.

A paused redis-server (SIGSTOP) is what a blackholed or overloaded Redis looks like to a
client: connections are accepted by the kernel and nothing is answered."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import httpx
import pytest
import redis
from gateway_process import free_port
from openai_shape import chat_body
from redis.crc import key_slot
from servers import RedisServer, missing

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.keystore.records import KeyRecord
from typegpt_gateway.limits import (
    InProcessBackend,
    Limiter,
    LimiterUnavailableError,
    Limits,
    Spent,
    redis_backend,
)
from typegpt_gateway.limits.redis_backend import RedisBackend

T = TypeVar("T")
REDIS_TIMEOUT = 0.5
BOUND = 30.0  # seconds for a whole scenario


def run(scenario: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, BOUND))


def _key(name: str, **limits: Any) -> KeyRecord:
    return KeyRecord(name=name, key_hash=b"h", prefix="sk-", created_at=0, **limits)


async def _eventually(check: Any, what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


class Watched(RedisBackend):
    """Counts the calls waiting on Redis at once, from the first failed call on."""

    def __init__(self, url: str) -> None:
        super().__init__(url, timeout=REDIS_TIMEOUT)
        self.waiting = 0
        self.failed = False
        self.most_waiting_after_failure = 0
        self.pings = 0

    async def _watch(self, call: Awaitable[T]) -> T:
        self.waiting += 1
        if self.failed:
            self.most_waiting_after_failure = max(self.most_waiting_after_failure, self.waiting)
        try:
            return await call
        except LimiterUnavailableError:
            self.failed = True
            raise
        finally:
            self.waiting -= 1

    async def acquire(self, *args: Any) -> Any:
        return await self._watch(super().acquire(*args))

    async def add_usage(self, *args: Any) -> None:
        await self._watch(super().add_usage(*args))

    async def release(self, *args: Any) -> None:
        await self._watch(super().release(*args))

    async def ping(self) -> None:
        self.pings += 1
        await self._watch(super().ping())


async def _timed(call: Awaitable[T]) -> tuple[float, T | GatewayError]:
    start = time.monotonic()
    try:
        result: T | GatewayError = await call
    except GatewayError as exc:
        result = exc
    return time.monotonic() - start, result


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_paused_redis_costs_one_timeout_and_then_nothing(mode: str) -> None:
    server = RedisServer().start()
    assert server.process is not None
    pid = server.process.pid
    admin = redis.Redis.from_url(server.url)

    async def scenario() -> None:
        backend = Watched(server.url)
        limiter = Limiter(backend, fail_open=mode == "open")
        held_key = _key("held", max_concurrent=30)
        spender = _key("spender", budget_tokens=800, budget_period="day")
        held = [await limiter.admit(held_key) for _ in range(2)]
        (await limiter.admit(spender)).finish(0)
        os.kill(pid, signal.SIGSTOP)
        try:
            # The outage is found by the requests under way: each waits one timeout.
            first = await asyncio.gather(*(_timed(limiter.admit(held_key)) for _ in range(20)))
            assert max(seconds for seconds, _ in first) < 2 * REDIS_TIMEOUT
            # From then on requests follow the failure mode at once, while probes find Redis
            # still away (twice, a retry interval apart).
            deadline = time.monotonic() + 10
            while backend.pings < 2:
                assert time.monotonic() < deadline, "no probe"
                wave = await asyncio.gather(*(_timed(limiter.admit(held_key)) for _ in range(20)))
                assert max(seconds for seconds, _ in wave) < REDIS_TIMEOUT
                for _, outcome in wave:
                    if mode == "open":
                        assert not isinstance(outcome, GatewayError) and outcome.headers == ()
                    else:
                        assert isinstance(outcome, GatewayError) and outcome.status == 503
                await asyncio.sleep(0.05)
            for ticket in held:
                ticket.finish(0)
            if mode == "open":
                for _ in range(2):
                    (await limiter.admit(spender)).finish(400)
            assert backend.most_waiting_after_failure <= 1  # the probe, never the requests
        finally:
            os.kill(pid, signal.SIGCONT)

        async def back() -> bool:
            try:
                return bool((await limiter.admit(_key("probe", rpm=10_000))).headers)
            except GatewayError:
                return False

        await _eventually(back, "the limiter never came back after Redis resumed")
        fresh = _key("fresh", rpm=5)
        outcomes = await asyncio.gather(
            *(limiter.admit(fresh) for _ in range(20)), return_exceptions=True
        )
        assert sum(not isinstance(outcome, BaseException) for outcome in outcomes) == 5
        assert all(
            isinstance(outcome, GatewayError) and outcome.status == 429
            for outcome in outcomes
            if isinstance(outcome, BaseException)
        )

        # Leases of finished requests, and of admissions Redis ran only when it resumed, are
        # given back: nothing holds a slot.
        async def released() -> bool:
            in_flight = admin.zcard("typegpt-gateway:limits:{held}:in-flight")
            return in_flight == 0 and limiter.in_flight == 0

        await _eventually(released, "slots stayed held after the outage")
        if mode == "open":
            # Tokens of requests admitted during the outage count once Redis is back.
            await limiter.settled(5)
            with pytest.raises(GatewayError) as refused:
                await limiter.admit(spender)
            assert "Used 800" in refused.value.message
        await limiter.aclose()

    try:
        run(scenario())
    finally:
        os.kill(pid, signal.SIGCONT)
        admin.close()
        server.cleanup()


class Stuck(InProcessBackend):
    """A backend whose releases hang until `gate` opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def release(self, name: str, lease: str) -> None:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        await super().release(name, lease)


def test_settles_stay_bounded_while_the_backend_is_stuck() -> None:
    async def scenario() -> None:
        backend = Stuck()
        limiter = Limiter(backend, fail_open=False)
        keys = [_key(f"k{i}", max_concurrent=1) for i in range(500)]
        tickets = [await limiter.admit(key) for key in keys]
        before = len(asyncio.all_tasks())
        for ticket in tickets:
            ticket.finish(0)
        for _ in range(20):  # let the settles start, however many there are
            await asyncio.sleep(0)
        assert 0 < backend.waiting <= 64
        assert len(asyncio.all_tasks()) - before <= 66
        assert limiter.in_flight == 500
        backend.gate.set()
        await limiter.settled(10)
        assert limiter.in_flight == 0
        for key in keys:  # every slot was given back
            (await limiter.admit(key)).finish(0)
        await limiter.aclose()

    run(scenario())


# -- Redis Cluster: every call stays in one hash slot ---------------------------------------------


def _keys_of(command: tuple[Any, ...]) -> list[bytes | str]:
    name = str(command[0]).upper()
    if name in ("EVALSHA", "EVAL"):
        return list(command[3 : 3 + int(command[2])])
    if name in ("ZREM", "ZADD", "GET", "SET", "INCRBY", "PEXPIRE", "ZCARD"):
        return [command[1]]
    assert name in ("PING", "SCRIPT LOAD"), f"unexpected command {name}"
    return []


def test_every_redis_call_stays_in_one_hash_slot(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_backend, "LEASE_TTL", 0.6)  # renewed every 0.2 s
    redis.Redis.from_url(redis_server.url).flushall()

    async def scenario() -> None:
        backend = RedisBackend(redis_server.url, timeout=2.0)
        commands: list[tuple[Any, ...]] = []
        execute = backend._redis.execute_command

        async def recording(*args: Any, **options: Any) -> Any:
            commands.append(args)
            return await execute(*args, **options)

        backend._redis.execute_command = recording  # type: ignore[method-assign]
        names = ["alpha", "beta", "gamma", "delta", "epsilon"]
        assert len({key_slot(f"{{{name}}}".encode()) for name in names}) > 1
        limits = Limits(rpm=10, tpm=100, max_concurrent=5, budget_tokens=1000, budget_period="day")
        for name in names:
            for lease in ("one", "two"):
                assert (await backend.acquire(name, limits, f"{name}-{lease}", Spent(0))).admitted
            await backend.add_usage(name, limits, Spent(3), Spent(0))
            await backend.add_usage(name, limits, Spent(3), None)

        async def renewed() -> bool:
            return any(
                str(c[0]).upper() == "EVALSHA" and c[1] == backend._renew.sha for c in commands
            )

        await _eventually(renewed, "the leases were never renewed", within=5)
        for name in names:
            for lease in ("one", "two"):
                await backend.release(name, f"{name}-{lease}")
        for command in commands:
            slots = {key_slot(k.encode() if isinstance(k, str) else k) for k in _keys_of(command)}
            assert len(slots) <= 1, f"{command[0]} touches {len(slots)} slots"
        await backend.aclose()

    run(scenario())


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[list[RedisServer]]:
    """Three master nodes on loopback, no replicas, slots spread by redis-cli."""
    cli = shutil.which("redis-cli")
    if cli is None:
        missing("redis-tools")
    nodes: list[RedisServer] = []
    try:
        for _ in range(3):
            node = RedisServer(
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-port", str(free_port()),
            )  # fmt: skip
            nodes.append(node.start())
        subprocess.run(
            [
                str(cli), "--cluster", "create",
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            check=True, capture_output=True, timeout=20,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        for node in nodes:
            client = redis.Redis(port=node.port)
            while client.cluster("info").get("cluster_state") != "ok":
                assert time.monotonic() < deadline, "the cluster never became ready"
                time.sleep(0.05)
            client.close()
        yield nodes
    finally:
        for node in nodes:
            node.cleanup()


def test_limits_are_exact_on_a_real_redis_cluster(redis_cluster: list[RedisServer]) -> None:
    async def scenario() -> None:
        url = redis_cluster[0].url
        replicas = [RedisBackend(url, timeout=2.0, cluster=True) for _ in range(2)]
        inspect = redis.RedisCluster.from_url(url)
        names = [f"client-{i}" for i in range(9)]
        nodes = {inspect.get_node_from_key(f"{{{name}}}").port for name in names}
        assert len(nodes) == 3  # the keys of these clients live on every node
        limits = Limits(rpm=3, tpm=100, max_concurrent=5, budget_tokens=1000, budget_period="day")
        for name in names:
            decisions = [
                await replicas[i % 2].acquire(name, limits, f"{name}-{i}", Spent(40))
                for i in range(4)
            ]
            assert [d.admitted for d in decisions] == [True, True, True, False]
            assert decisions[-1].refused == "rpm"
            await replicas[0].add_usage(name, limits, Spent(10), Spent(40))
            await replicas[1].add_usage(name, limits, Spent(10), None)
        # One renewal covers the leases of every client, whichever node holds them.
        lease_key = f"typegpt-gateway:limits:{{{names[0]}}}:in-flight"
        before = inspect.zscore(lease_key, f"{names[0]}-0")
        await replicas[0].renew()
        assert inspect.zscore(lease_key, f"{names[0]}-0") > before
        for name in names:
            for i in range(3):
                await replicas[i % 2].release(name, f"{name}-{i}")
            assert inspect.zcard(f"typegpt-gateway:limits:{{{name}}}:in-flight") == 0
            refused = await replicas[1].acquire(name, Limits(tpm=20), "check", Spent(0))
            assert refused.refused == "tpm" and "Used 20" in refused.error.message
            refused = await replicas[0].acquire(
                name, Limits(budget_tokens=60, budget_period="day"), "check", Spent(40)
            )
            assert "Used 60" in refused.error.message
        for replica in replicas:
            await replica.aclose()
        inspect.close()

    run(scenario())


def test_a_gateway_limits_through_a_redis_cluster(redis_cluster: list[RedisServer], make_gateway):
    # REDIS_URL names a node that does not hold the key's slot: the client must follow the map.
    inspect = redis.RedisCluster.from_url(redis_cluster[0].url)
    owner = inspect.get_node_from_key("{clustered}").port
    inspect.close()
    elsewhere = next(node for node in redis_cluster if node.port != owner)
    gateway = make_gateway(
        extra_env={"REDIS_URL": elsewhere.url, "GATEWAY_REDIS_CLUSTER": "true"}
    ).start()
    key = gateway.wait_for_key(gateway.create_key("clustered", "--rpm", "2"))
    with httpx.Client(
        base_url=gateway.url, headers={"authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        answers = [client.post("/v1/chat/completions", json=chat_body()) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 429]
    assert answers[1].headers["x-ratelimit-remaining-requests"] == "0"
    assert "rate limiter backend unreachable" not in gateway.flushed_log()
