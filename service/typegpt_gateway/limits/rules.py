"""Per-key limits as pure rules: windows, budgets, reset times, Retry-After and headers.

- Requests per minute: a sliding log. A request is admitted when fewer than `rpm` requests
  were admitted in the 60 seconds before it, so no 60-second span ever holds more than `rpm`.
- Tokens per minute: a sliding 60-second window in 1-second buckets (a bucket leaves the
  window 60 s after it closes, never early). A request is admitted while the tokens counted
  in the window are below `tpm`; its own tokens are known only when it ends, so the request
  that crosses the limit completes and the next one waits.
- Token budget: calendar day or month in UTC, admitted while the tokens used are below it.
- Dollar budget: the same period (a key has one for both budgets), admitted while the cost
  spent, in micro-dollars, is below it. Like tokens, a request's cost is known only when it
  ends: the request that crosses the budget completes (it overshoots by at most its own cost)
  and the next one is refused. Requests whose model has no price add nothing to it.
- In-flight requests (streams included): admitted while fewer than `max_concurrent` run.

The backends (in-process, Redis) gather a `Snapshot` of one key and apply the same
comparisons as `refusals`; everything a client is told is computed here from it.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from ..errors import GatewayError
from ..keystore.records import KeyRecord

WINDOW = 60.0
BUCKET = 1  # seconds per token bucket
# Concurrency has no clock to wait for: a slot frees when some request ends.
CONCURRENCY_RETRY = 1.0

Period = Literal["day", "month"]
Limit = Literal["budget", "budget_usd", "tpm", "rpm", "concurrency"]


@dataclass(frozen=True, slots=True)
class Spent:
    """What counts towards the budgets: tokens, and cost in micro-dollars."""

    tokens: int = 0
    cost_micro_usd: int = 0

    def __add__(self, other: Spent) -> Spent:
        return Spent(self.tokens + other.tokens, self.cost_micro_usd + other.cost_micro_usd)


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_tokens: int | None = None
    budget_period: Period | None = None
    budget_usd_micro: int | None = None

    @classmethod
    def of(cls, record: KeyRecord) -> Limits:
        budgeted = record.budget_tokens is not None or record.budget_usd_micro is not None
        return cls(
            rpm=record.rpm,
            tpm=record.tpm,
            max_concurrent=record.max_concurrent,
            budget_tokens=record.budget_tokens,
            budget_period=(
                ("day" if record.budget_period == "day" else "month") if budgeted else None
            ),
            budget_usd_micro=record.budget_usd_micro,
        )

    @property
    def any(self) -> bool:
        return self.budgeted or any(
            value is not None for value in (self.rpm, self.tpm, self.max_concurrent)
        )

    @property
    def budgeted(self) -> bool:
        """Whether the key has a budget: then both its tokens and its cost in the period are
        counted (so that either budget, set later in the period, starts from the truth)."""
        return self.budget_tokens is not None or self.budget_usd_micro is not None

    @property
    def counts_usage(self) -> bool:
        return self.tpm is not None or self.budgeted


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One key's state just before a request is decided (that request not included)."""

    now: float
    requests: int = 0  # admitted in the last WINDOW seconds
    oldest_request: float | None = None
    newest_request: float | None = None
    # (bucket start second, tokens), oldest first, only buckets still in the window.
    token_buckets: tuple[tuple[int, int], ...] = ()
    budget_used: int = 0  # tokens in the budget period
    spent_micro_usd: int = 0  # cost in the budget period
    in_flight: int = 0

    @property
    def tokens(self) -> int:
        return sum(tokens for _, tokens in self.token_buckets)


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    headers: tuple[tuple[str, str], ...]
    refused: Limit | None = None
    retry_after: float | None = None
    error: GatewayError | None = None


def bucket_of(now: float) -> int:
    return int(now // BUCKET) * BUCKET


def bucket_expires(bucket: int) -> float:
    return bucket + BUCKET + WINDOW


def in_window(buckets: dict[int, int] | list[tuple[int, int]], now: float) -> list[tuple[int, int]]:
    """The buckets that still count at `now`, oldest first."""
    items = buckets.items() if isinstance(buckets, dict) else buckets
    return sorted((b, t) for b, t in items if bucket_expires(b) > now)


def period_bounds(now: float, period: Period) -> tuple[dt.date, float]:
    """The first day of the budget period holding `now` and the Unix time it ends."""
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    if period == "day":
        start, end = today, today + dt.timedelta(days=1)
    else:
        start = today.replace(day=1)
        end = start + dt.timedelta(days=calendar.monthrange(start.year, start.month)[1])
    return start, calendar.timegm(end.timetuple())


def refusals(limits: Limits, snap: Snapshot) -> list[tuple[Limit, float]]:
    """Every limit that refuses the next request, with the seconds until it would admit it."""
    found: list[tuple[Limit, float]] = []
    if limits.budget_tokens is not None and snap.budget_used >= limits.budget_tokens:
        _, end = period_bounds(snap.now, limits.budget_period or "month")
        found.append(("budget", end - snap.now))
    if limits.budget_usd_micro is not None and snap.spent_micro_usd >= limits.budget_usd_micro:
        _, end = period_bounds(snap.now, limits.budget_period or "month")
        found.append(("budget_usd", end - snap.now))
    if limits.tpm is not None and snap.tokens >= limits.tpm:
        # Wait until enough of the oldest buckets leave the window.
        left = snap.tokens
        wait = 0.0
        for bucket, tokens in snap.token_buckets:
            left -= tokens
            wait = bucket_expires(bucket) - snap.now
            if left < limits.tpm:
                break
        found.append(("tpm", wait))
    if limits.rpm is not None and snap.requests >= limits.rpm:
        oldest = snap.oldest_request if snap.oldest_request is not None else snap.now
        found.append(("rpm", oldest + WINDOW - snap.now))
    if limits.max_concurrent is not None and snap.in_flight >= limits.max_concurrent:
        found.append(("concurrency", CONCURRENCY_RETRY))
    return found


def decide(limits: Limits, snap: Snapshot) -> Decision:
    refused = refusals(limits, snap)
    if not refused:
        return Decision(True, headers_for(limits, snap, admitted=True))
    # The client is told about the limit that keeps it waiting longest.
    limit, wait = max(refused, key=lambda item: item[1])
    headers = headers_for(limits, snap, admitted=False)
    error = refusal_error(limit, limits, snap, wait, headers)
    return Decision(False, error.headers, limit, wait, error)


def headers_for(limits: Limits, snap: Snapshot, *, admitted: bool) -> tuple[tuple[str, str], ...]:
    """OpenAI's x-ratelimit-* headers, for the limits the key has.

    `reset` is OpenAI's meaning: the time until the limit is back to its initial state (the
    newest request or token bucket has left the window)."""
    headers: list[tuple[str, str]] = []
    if limits.rpm is not None:
        used = snap.requests + (1 if admitted else 0)
        newest = snap.now if admitted else (snap.newest_request or snap.now)
        headers += [
            ("x-ratelimit-limit-requests", str(limits.rpm)),
            ("x-ratelimit-remaining-requests", str(max(limits.rpm - used, 0))),
            ("x-ratelimit-reset-requests", format_duration(newest + WINDOW - snap.now)),
        ]
    if limits.tpm is not None:
        buckets = snap.token_buckets
        reset = bucket_expires(buckets[-1][0]) - snap.now if buckets else 0.0
        headers += [
            ("x-ratelimit-limit-tokens", str(limits.tpm)),
            ("x-ratelimit-remaining-tokens", str(max(limits.tpm - snap.tokens, 0))),
            ("x-ratelimit-reset-tokens", format_duration(reset)),
        ]
    return tuple(headers)


def refusal_error(
    limit: Limit,
    limits: Limits,
    snap: Snapshot,
    wait: float,
    headers: tuple[tuple[str, str], ...],
) -> GatewayError:
    retry = retry_after(wait)
    extra: list[tuple[str, str]] = [
        ("retry-after", str(retry)),
        ("retry-after-ms", str(max(math.ceil(wait * 1000), 1))),
    ]
    if limit in ("budget", "budget_usd"):
        _, end = period_bounds(snap.now, limits.budget_period or "month")
        when = dt.datetime.fromtimestamp(end, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        period = limits.budget_period or "month"
        if limit == "budget":
            message = (
                f"Token budget for this {period} exhausted: "
                f"Limit {limits.budget_tokens}, Used {snap.budget_used}. It resets at {when}."
            )
        else:
            message = (
                f"Dollar budget for this {period} exhausted: "
                f"Limit {dollars(limits.budget_usd_micro or 0)} (USD), "
                f"Spent {dollars(snap.spent_micro_usd)}. It resets at {when}."
            )
        # SDKs retry 429s; a budget is not worth retrying before it resets.
        extra.append(("x-should-retry", "false"))
    elif limit == "tpm":
        message = (
            f"Rate limit reached for tokens per minute (TPM): Limit {limits.tpm}, "
            f"Used {snap.tokens}. Please try again in {format_duration(wait)}."
        )
    elif limit == "rpm":
        message = (
            f"Rate limit reached for requests per minute (RPM): Limit {limits.rpm}, "
            f"Used {snap.requests}, Requested 1. Please try again in {format_duration(wait)}."
        )
    else:
        message = (
            f"Too many requests in flight for this key: Limit {limits.max_concurrent}. "
            "Please try again when one has finished."
        )
    return GatewayError(429, message, "rate_limit_error", headers=(*extra, *headers))


def dollars(micro_usd: int) -> str:
    """Micro-dollars as exact dollars: '$25', '$0.010043'."""
    return f"${Decimal(micro_usd).scaleb(-6).normalize():f}"


def retry_after(wait: float) -> int:
    """Whole seconds for Retry-After: rounded up, and never 0 (which invites a busy loop)."""
    return max(math.ceil(wait - 1e-9), 1)


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's headers write it: '20ms', '1s', '6m0s', '1h2m3.5s'."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    milliseconds = math.ceil(seconds * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    text = f"{secs}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text
