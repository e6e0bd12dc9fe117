"""Two `typegpt-gateway serve` replicas sharing one real redis-server and one key store
(a SQLite file on this host, or a real PostgreSQL) admit exactly N requests for a limit of N.

The control shows the test can fail: without Redis each replica counts alone, N each."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis
from openai_shape import assert_error, chat_body
from spend_budget import (
    BUDGET_MICRO_USD,
    BUDGET_USD,
    REQUEST_MICRO_USD,
    assert_budget_held,
    ledger_cost,
    spend_until_refused,
)

CHAT = "/v1/chat/completions"
LIMIT = 5
REQUESTS = 16  # 8 per replica: more than the limit on each


def _shared_env(kind: str, request: pytest.FixtureRequest, tmp_path) -> dict[str, str]:
    if kind == "sqlite":
        return {"GATEWAY_DB": str(tmp_path / "shared.db")}
    return {"DATABASE_URL": request.getfixturevalue("postgres_server").new_database()}


def _burst(gateways, key: str) -> list[httpx.Response]:
    """REQUESTS concurrent requests, alternating between the replicas."""
    responses: list[httpx.Response] = []
    lock = threading.Lock()
    start = threading.Barrier(REQUESTS)

    def hit(index: int) -> None:
        gateway = gateways[index % len(gateways)]
        with httpx.Client(timeout=30) as client:
            start.wait(10)
            response = client.post(
                f"{gateway.url}{CHAT}",
                json=chat_body(),
                headers={"authorization": f"Bearer {key}"},
            )
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=hit, args=(i,)) for i in range(REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(responses) == REQUESTS
    return responses


def _start_replicas(make_gateway, env: dict[str, str]):
    first = make_gateway(extra_env=env).start()
    second = make_gateway(extra_env=env).start()
    return first, second


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_replicas_sharing_redis_admit_exactly_n(
    store, request, tmp_path, make_gateway, redis_server, upstream
):
    redis.Redis.from_url(redis_server.url).flushall()
    env = {**_shared_env(store, request, tmp_path), "REDIS_URL": redis_server.url}
    replicas = _start_replicas(make_gateway, env)
    key = replicas[0].create_key("shared", "--rpm", str(LIMIT))
    for replica in replicas:
        replica.wait_for_key(key)

    responses = _burst(replicas, key)
    statuses = Counter(response.status_code for response in responses)
    assert statuses == {200: LIMIT, 429: REQUESTS - LIMIT}
    assert len(upstream.requests) == LIMIT
    # One shared window: each admission saw a different count.
    remaining = sorted(
        int(r.headers["x-ratelimit-remaining-requests"]) for r in responses if r.status_code == 200
    )
    assert remaining == list(range(LIMIT))
    for refused in (r for r in responses if r.status_code == 429):
        assert_error(refused, 429, "rate_limit_error")
        assert 1 <= int(refused.headers["retry-after"]) <= 60

    # Both replicas wrote their share of the ledger to the one store.
    deadline = time.monotonic() + 10
    while True:
        rows = json.loads(replicas[1].cli("keys", "usage", "shared", "--json").stdout)
        if rows and rows[0]["requests"] == REQUESTS:
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    assert rows[0]["errors"] == REQUESTS - LIMIT
    assert rows[0]["completion_tokens"] > 0


def test_control_without_redis_each_replica_counts_alone(tmp_path, make_gateway, upstream):
    env = {"GATEWAY_DB": str(tmp_path / "shared.db")}
    replicas = _start_replicas(make_gateway, env)
    key = replicas[0].create_key("alone", "--rpm", str(LIMIT))
    for replica in replicas:
        replica.wait_for_key(key)
    statuses = Counter(response.status_code for response in _burst(replicas, key))
    assert statuses == {200: 2 * LIMIT, 429: REQUESTS - 2 * LIMIT}


def test_a_dollar_budget_holds_across_replicas_on_redis_and_restarts(
    tmp_path, make_gateway, redis_server, upstream
):
    redis.Redis.from_url(redis_server.url).flushall()
    db = tmp_path / "shared.db"
    env = {"GATEWAY_DB": str(db), "REDIS_URL": redis_server.url}
    replicas = _start_replicas(make_gateway, env)
    key = replicas[0].create_key("a", "--budget-usd", BUDGET_USD, "--budget-period", "day")
    for replica in replicas:
        replica.wait_for_key(key)
    spending = spend_until_refused([replica.url for replica in replicas], key)
    assert len(upstream.requests) == spending.admitted
    cost = ledger_cost(db, "a", spending.admitted + 1)
    assert_budget_held(spending, cost, replicas=2)

    # Every replica stopped and Redis emptied: a new one goes on from the ledger's cost.
    for replica in replicas:
        assert replica.stop() == 0
    redis.Redis.from_url(redis_server.url).flushall()
    restarted = make_gateway(extra_env=env).start()
    restarted.wait_for_key(key)
    again = spend_until_refused([restarted.url], key)
    assert again.admitted == 0
    assert "Dollar budget" in assert_error(again.refused, 429, "rate_limit_error")["message"]


def test_control_without_redis_each_replica_spends_the_budget_alone(
    tmp_path: Path, make_gateway, upstream
):
    db = tmp_path / "shared.db"
    replicas = _start_replicas(make_gateway, {"GATEWAY_DB": str(db)})
    key = replicas[0].create_key("a", "--budget-usd", BUDGET_USD, "--budget-period", "day")
    for replica in replicas:
        replica.wait_for_key(key)
    spending = spend_until_refused([replica.url for replica in replicas], key)
    cost = ledger_cost(db, "a", spending.admitted + 1)
    print(
        f"\ncontrol without Redis: {spending.admitted} admitted, ledger cost {cost} micro-dollars"
    )
    # Each replica counts only its own share: together they overspend by far more.
    assert cost - BUDGET_MICRO_USD > REQUEST_MICRO_USD
