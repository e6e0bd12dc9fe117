"""Containment of a stalled dependency: the key store (a real PostgreSQL) or Redis stops
answering for 5 s (SIGSTOP), then comes back (SIGCONT). Keys without limits never notice;
limited keys follow GATEWAY_RATE_LIMIT_FAILURE_MODE within about one Redis timeout; afterwards
limits, budgets and the usage ledger are exact again."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import redis
from gateway_process import Gateway
from steady_load import CHAT, Reading, SteadyLoad, assert_contained, well_behaved_body

PAUSE_SECONDS = 5.0
REDIS_TIMEOUT = 1.0  # the default
# Tokens the fake upstream reports for one well-behaved request: 5 of prompt, 7 of answer.
TOKENS_PER_REQUEST = 12


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


@contextlib.contextmanager
def paused(pid: int, *, with_children: bool = False) -> Iterator[None]:
    """The process (and, for PostgreSQL, its backends) stopped until the block ends."""
    pids = [pid, *(_children(pid) if with_children else ())]
    for each in pids:
        os.kill(each, signal.SIGSTOP)
    try:
        yield
    finally:
        for each in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGCONT)


def postmaster_pid(postgres_server) -> int:
    return int((postgres_server.data / "postmaster.pid").read_text().split()[0])


def ask(gateway: Gateway, key: str) -> int:
    response = httpx.post(
        f"{gateway.url}{CHAT}",
        json=well_behaved_body(0, stream=False),
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )
    return response.status_code


def test_a_paused_postgresql_key_store(make_gateway, postgres_server):
    url = postgres_server.new_database()
    gateway = make_gateway(extra_env={"DATABASE_URL": url}).start()
    names = ["free-1", "free-2", "limited"]
    keys = {
        "free-1": gateway.create_key("free-1"),
        "free-2": gateway.create_key("free-2"),
        "limited": gateway.create_key(
            "limited", "--rpm", "100000", "--max-concurrent", "4", "--budget-tokens", "10000000"
        ),
    }
    for key in keys.values():
        gateway.wait_for_key(key)
    with SteadyLoad(gateway, list(keys.values())) as load:
        load.wait_for(30)
        before = Reading.of(gateway)
        with paused(postmaster_pid(postgres_server), with_children=True):
            served = load.sent
            load.wait_for(10_000, timeout=PAUSE_SECONDS)
            served = load.sent - served
        load.wait_for(30)
    assert_contained(
        "PostgreSQL key store paused 5 s",
        load,
        before,
        Reading.of(gateway),
        f"{served} served during the pause",
    )
    assert served >= 30  # served all along the pause
    # Nothing was lost from the ledger, and nothing counted twice.
    expected = {name: load.succeeded_by_key[keys[name]] for name in names}
    assert gateway.wait_for_ledger(expected) == expected


def test_a_paused_redis(make_gateway, redis_server):
    redis.Redis.from_url(redis_server.url).flushall()
    gateway = make_gateway(
        extra_env={"REDIS_URL": redis_server.url, "GATEWAY_REDIS_TIMEOUT": str(REDIS_TIMEOUT)}
    ).start()
    free = gateway.create_key("free")
    limited = gateway.create_key("limited", "--rpm", "100000", "--max-concurrent", "8")
    budget = gateway.create_key(
        "budget", "--budget-tokens", str(int(2.5 * TOKENS_PER_REQUEST)), "--budget-period", "day"
    )
    for key in (free, limited, budget):
        gateway.wait_for_key(key)
    assert [ask(gateway, budget) for _ in range(2)] == [200, 200]  # 24 of its 30 tokens

    assert redis_server.process is not None
    with SteadyLoad(gateway, [free, limited], clients_per_key=2) as load:
        load.wait_for(30)
        before = Reading.of(gateway)
        load.slowest_by_key.clear()
        with paused(redis_server.process.pid):
            load.wait_for(10_000, timeout=PAUSE_SECONDS)
            slowest = dict(load.slowest_by_key)
        load.wait_for(30)
    assert_contained(
        "Redis paused 5 s",
        load,
        before,
        Reading.of(gateway),
        f"slowest during the pause: limited key {slowest[limited]:.2f} s, "
        f"key without limits {slowest[free]:.2f} s",
    )
    # The failure mode (open) within about one Redis timeout; keys without limits never wait.
    assert slowest[limited] < 1.6 * REDIS_TIMEOUT, slowest
    assert slowest[free] < 2 * REDIS_TIMEOUT, slowest

    # Afterwards limits are exact again, once the limiter has seen Redis back...
    probe = gateway.wait_for_key(gateway.create_key("probe", "--rpm", "1"))
    deadline = time.monotonic() + 15
    while ask(gateway, probe) != 429 and time.monotonic() < deadline:
        time.sleep(0.1)
    strict = gateway.wait_for_key(gateway.create_key("strict", "--rpm", "3"))
    assert [ask(gateway, strict) for _ in range(5)] == [200, 200, 200, 429, 429]
    # ...and the budget goes on from where it was, not from zero: one more request, then 429.
    assert [ask(gateway, budget) for _ in range(2)] == [200, 429]
