"""The limiter's pure rules: windows, budgets, reset times, Retry-After and headers."""

from __future__ import annotations

import calendar
import datetime as dt
import json

import pytest

from typegpt_gateway.keystore.records import KeyRecord
from typegpt_gateway.limits.rules import (
    Limits,
    Snapshot,
    decide,
    dollars,
    format_duration,
    in_window,
    period_bounds,
    retry_after,
)

NOW = 1_800_000_030.0  # a Unix time 30 s into a minute


def headers(decision) -> dict[str, str]:
    return dict(decision.headers)


def test_limits_of_a_record_and_unlimited():
    record = KeyRecord(name="k", key_hash=b"", prefix="", created_at=0, rpm=3, budget_tokens=9)
    limits = Limits.of(record)
    assert limits == Limits(rpm=3, budget_tokens=9, budget_period="month")
    assert limits.any and limits.counts_usage
    assert not Limits().any


def test_rpm_admits_below_the_limit_with_openai_headers():
    decision = decide(Limits(rpm=3), Snapshot(now=NOW, requests=1, oldest_request=NOW - 5))
    assert decision.admitted and decision.error is None
    assert headers(decision) == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "1",
        # This request is the newest: the window is clear again 60 s from now.
        "x-ratelimit-reset-requests": "1m0s",
    }


def test_rpm_refuses_at_the_limit_until_the_oldest_leaves_the_window():
    snap = Snapshot(now=NOW, requests=3, oldest_request=NOW - 40, newest_request=NOW - 10)
    decision = decide(Limits(rpm=3), snap)
    assert not decision.admitted
    assert decision.refused == "rpm"
    assert decision.retry_after == pytest.approx(20)
    error = decision.error
    assert error.status == 429 and error.type == "rate_limit_error"
    sent = dict(error.headers)
    assert sent["retry-after"] == "20"
    assert sent["retry-after-ms"] == "20000"
    assert sent["x-ratelimit-remaining-requests"] == "0"
    assert sent["x-ratelimit-reset-requests"] == "50s"
    body = json.loads(error.to_json())["error"]
    assert body["code"] == 429 and body["type"] == "rate_limit_error" and body["param"] is None
    assert "requests per minute" in body["message"] and "Limit 3" in body["message"]


def test_tpm_counts_buckets_in_the_window_and_waits_for_enough_to_leave():
    second = int(NOW)
    buckets = {second - 70: 999, second - 50: 600, second - 20: 500}
    assert in_window(buckets, NOW) == [(second - 50, 600), (second - 20, 500)]
    snap = Snapshot(now=NOW, token_buckets=tuple(in_window(buckets, NOW)))
    decision = decide(Limits(tpm=1000), snap)
    assert decision.refused == "tpm"
    # Dropping the oldest bucket (600) leaves 500 < 1000: it closes at -49 and counts 60 s more.
    assert decision.retry_after == pytest.approx(11)
    sent = dict(decision.error.headers)
    assert sent["x-ratelimit-remaining-tokens"] == "0"
    assert sent["x-ratelimit-limit-tokens"] == "1000"
    assert sent["x-ratelimit-reset-tokens"] == "41s"
    admitted = decide(Limits(tpm=2000), snap)
    assert admitted.admitted
    assert headers(admitted)["x-ratelimit-remaining-tokens"] == "900"
    assert "x-ratelimit-limit-requests" not in headers(admitted)


def test_budget_refuses_until_the_period_ends_and_says_do_not_retry():
    limits = Limits(budget_tokens=100, budget_period="day")
    assert decide(limits, Snapshot(now=NOW, budget_used=99)).admitted
    decision = decide(limits, Snapshot(now=NOW, budget_used=100))
    assert decision.refused == "budget"
    _, end = period_bounds(NOW, "day")
    assert decision.retry_after == pytest.approx(end - NOW)
    sent = dict(decision.error.headers)
    assert sent["x-should-retry"] == "false"
    assert int(sent["retry-after"]) == retry_after(end - NOW)
    assert "budget" in decision.error.message


def test_a_dollar_budget_admits_while_spent_is_below_it_then_says_so():
    record = KeyRecord(
        name="k", key_hash=b"", prefix="", created_at=0, budget_usd_micro=10_000,
        budget_period="day",
    )  # fmt: skip
    limits = Limits.of(record)
    assert limits == Limits(budget_usd_micro=10_000, budget_period="day")
    assert limits.any and limits.budgeted and limits.counts_usage
    # Micro-dollars: one short of $0.01 is admitted, and the request may overshoot it.
    assert decide(limits, Snapshot(now=NOW, spent_micro_usd=9_999)).admitted
    decision = decide(limits, Snapshot(now=NOW, spent_micro_usd=10_043, budget_used=10**9))
    assert decision.refused == "budget_usd" and decision.error is not None
    assert (decision.error.status, decision.error.type) == (429, "rate_limit_error")
    _, end = period_bounds(NOW, "day")
    when = dt.datetime.fromtimestamp(end, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert decision.error.message == (
        f"Dollar budget for this day exhausted: Limit $0.01 (USD), Spent $0.010043. "
        f"It resets at {when}."
    )
    sent = dict(decision.error.headers)
    assert sent["x-should-retry"] == "false"
    assert int(sent["retry-after"]) == retry_after(end - NOW)
    # The token count does not touch a dollar budget, nor the cost a token budget.
    both = Limits(budget_tokens=100, budget_usd_micro=10_000, budget_period="month")
    assert decide(both, Snapshot(now=NOW, budget_used=99, spent_micro_usd=9_999)).admitted
    assert decide(both, Snapshot(now=NOW, budget_used=100)).refused == "budget"


@pytest.mark.parametrize(
    ("micro", "shown"),
    [(25_000_000, "$25"), (10_000, "$0.01"), (1, "$0.000001"), (0, "$0"), (10**7, "$10")],
)
def test_dollars_are_shown_exactly(micro, shown):
    assert dollars(micro) == shown


def test_concurrency_refuses_with_a_short_retry():
    limits = Limits(max_concurrent=2)
    assert decide(limits, Snapshot(now=NOW, in_flight=1)).admitted
    decision = decide(limits, Snapshot(now=NOW, in_flight=2))
    assert decision.refused == "concurrency"
    assert dict(decision.error.headers)["retry-after"] == "1"


def test_the_longest_wait_is_the_one_reported():
    limits = Limits(rpm=1, max_concurrent=1, budget_tokens=10, budget_period="month")
    snap = Snapshot(now=NOW, requests=1, oldest_request=NOW - 1, budget_used=5, in_flight=1)
    assert decide(limits, snap).refused == "rpm"
    snap = Snapshot(now=NOW, requests=1, oldest_request=NOW - 1, budget_used=10, in_flight=1)
    assert decide(limits, snap).refused == "budget"


@pytest.mark.parametrize(
    ("day", "period", "start", "end"),
    [
        (dt.date(2026, 3, 14), "day", dt.date(2026, 3, 14), dt.date(2026, 3, 15)),
        (dt.date(2026, 3, 14), "month", dt.date(2026, 3, 1), dt.date(2026, 4, 1)),
        (dt.date(2026, 12, 31), "month", dt.date(2026, 12, 1), dt.date(2027, 1, 1)),
        (dt.date(2028, 2, 29), "month", dt.date(2028, 2, 1), dt.date(2028, 3, 1)),
        (dt.date(2026, 12, 31), "day", dt.date(2026, 12, 31), dt.date(2027, 1, 1)),
    ],
)
def test_period_bounds_are_utc_calendar_periods(day, period, start, end):
    noon = calendar.timegm(day.timetuple()) + 43_200
    assert period_bounds(noon, period) == (start, calendar.timegm(end.timetuple()))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0ms"),
        (0.0171, "18ms"),
        (1, "1s"),
        (8.64, "8.64s"),
        (59.9994, "1m0s"),
        (360, "6m0s"),
        (3723.5, "1h2m3.5s"),
        (-3, "0ms"),
    ],
)
def test_format_duration_like_openai(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("wait", "seconds"), [(0, 1), (0.2, 1), (1.0, 1), (19.9999999999, 20), (20.001, 21)]
)
def test_retry_after_rounds_up_and_is_never_zero(wait, seconds):
    assert retry_after(wait) == seconds
