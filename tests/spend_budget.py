"""A dollar budget spent through live gateways until it is refused (issue 15's "done when"):
the figures the replica tests hold the limiter to."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from fake_upstream import COMPLETION_TOKENS, PROMPT_TOKENS_PER_MESSAGE
from openai_shape import assert_error, chat_body

from typegpt_gateway.keystore.sqlite import KeyStore

CHAT = "/v1/chat/completions"
BUDGET_USD = "0.01"
BUDGET_MICRO_USD = 10_000
# One chat_body() request at gpt-4o's shipped prices (2.50 and 10.00 USD per 1M tokens, so
# micro-dollars per token), for the fake upstream's usage: 5 x 2.5 + 7 x 10 = 82.5 -> 83.
REQUEST_MICRO_USD = 83
assert PROMPT_TOKENS_PER_MESSAGE * 2.5 + COMPLETION_TOKENS * 10 == 82.5
# Far more than the budget allows (121 requests): a limiter that never refuses fails here.
MAX_REQUESTS = 400


@dataclass(frozen=True)
class Spending:
    admitted: int
    refused: httpx.Response


def spend_until_refused(urls: Sequence[str], key: str) -> Spending:
    """Chat requests one after another, taking turns among `urls`, until one is refused."""
    with httpx.Client(timeout=30, headers={"authorization": f"Bearer {key}"}) as client:
        for index in range(MAX_REQUESTS):
            response = client.post(f"{urls[index % len(urls)]}{CHAT}", json=chat_body())
            if response.status_code != 200:
                return Spending(index, response)
    raise AssertionError(f"{MAX_REQUESTS} requests admitted on a ${BUDGET_USD} budget")


def ledger_cost(db: Path, name: str, requests: int) -> int:
    """The key's cost in the ledger (micro-dollars) once `requests` requests are in it."""
    deadline = time.monotonic() + 10
    while True:
        store = KeyStore(db)
        try:
            rows = store.usage(name)
        finally:
            store.close()
        if sum(row.requests for row in rows) >= requests:
            assert sum(row.unpriced_requests + row.estimated_requests for row in rows) == 0
            return sum(row.cost_micro_usd for row in rows)
        assert time.monotonic() < deadline, f"the ledger never had {requests} requests: {rows}"
        time.sleep(0.1)


def assert_budget_held(spending: Spending, cost: int, replicas: int) -> None:
    """Refused as a spent dollar budget, never more than one request over, and told."""
    error = assert_error(spending.refused, 429, "rate_limit_error")
    assert error["message"].startswith("Dollar budget for this day exhausted: Limit $0.01"), error
    assert spending.refused.headers["x-should-retry"] == "false"
    assert 1 <= int(spending.refused.headers["retry-after"]) <= 86_400
    overshoot = cost - BUDGET_MICRO_USD
    print(
        f"\n{replicas} replica(s): {spending.admitted} requests admitted on a ${BUDGET_USD} "
        f"budget; ledger cost {cost} micro-dollars, {overshoot} over the budget "
        f"(one request costs {REQUEST_MICRO_USD})"
    )
    # Admitted while the spend was below the budget: the last one crossed it, by less than
    # its own cost.
    assert cost == spending.admitted * REQUEST_MICRO_USD
    assert 0 <= overshoot < REQUEST_MICRO_USD
