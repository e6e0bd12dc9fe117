"""Unit tests of the pure resilience rules: timeouts, routing and rests, retries, model
renaming, the upstreams file."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.settings import Settings
from typegpt_gateway.upstream.client import attempt_failure, parse_retry_after
from typegpt_gateway.upstream.model_mapping import replace_model
from typegpt_gateway.upstream.retry import (
    AttemptFailed,
    RetryPolicy,
    backoff_wait,
    call_with_retries,
)
from typegpt_gateway.upstream.routing import HealthPolicy, Route, Router
from typegpt_gateway.upstream.timeouts import Deadlines, Timeouts
from typegpt_gateway.upstream.upstreams_file import (
    ConfigError,
    load_config,
    read_config,
    upstream_specs,
)

# --- timeouts --------------------------------------------------------------------------------

TIMEOUTS = Timeouts(connect=1, first_byte=60, idle=10, total=100)


def test_first_byte_then_idle_deadlines():
    deadlines = Deadlines(TIMEOUTS, now=1000)
    due = deadlines.next_read(now=1030)
    late = due.error()
    assert due.at == 1060 and late.status == 504 and "no answer within 60 s" in late.message
    deadlines.got_bytes()
    due = deadlines.next_read(now=1070)
    assert due.at == 1080 and "silent for 10 s" in due.error().message


def test_total_deadline_caps_the_others():
    deadlines = Deadlines(TIMEOUTS, now=1000)
    deadlines.got_bytes()
    due = deadlines.next_read(now=1095)
    assert due.at == 1100 and "not finished within 100 s" in due.error().message
    deadlines.attempt(now=1050)  # a retry: the first byte is due again, but within the total
    due = deadlines.first_byte()
    assert due.at == 1100 and due.error().type == "timeout_error"


# --- routing and rests ------------------------------------------------------------------------


def router(*routes: Route, after: int = 2, rng: random.Random | None = None) -> Router:
    return Router(
        routes, HealthPolicy(after=after, first=1, longest=8, window=10), rng or random.Random(7)
    )


def test_routes_by_model_then_priority():
    r = router(
        Route("a", frozenset({"gpt-4o"}), priority=1),
        Route("b", None, priority=0),
        Route("c", frozenset({"o3"}), priority=0),
    )
    assert r.pick("gpt-4o", now=0).name == "b"
    assert {r.pick("o3", now=0).name for _ in range(20)} == {"b", "c"}
    assert r.serves("anything") and not router(Route("x", frozenset({"o3"}))).serves("gpt-4o")
    assert r.pick("nothing-serves-this", now=0) is None or r.serves("nothing-serves-this")


def test_weights_share_the_load():
    r = router(Route("light", weight=1), Route("heavy", weight=3), rng=random.Random(1))
    counts = Counter(r.pick("m", now=0).name for _ in range(4000))
    assert 0.7 < counts["heavy"] / 4000 < 0.8


def test_untried_upstreams_first():
    r = router(Route("a"), Route("b", priority=5))
    assert r.pick("m", now=0, avoid={"a"}).name == "b"
    # Once every upstream was tried, the best one again.
    assert r.pick("m", now=0, avoid={"a", "b"}).name == "a"


def test_one_client_alone_never_rests_an_upstream():
    """The scenario of issue 11: one key's prompt that the upstream answers 500, sent again
    and again, must not take the upstream from anybody."""
    r = router(Route("a"), Route("b", priority=1), after=2)
    for second in range(50):
        assert r.failed("a", now=second / 10, client="poison") == 0
        assert r.pick("m", now=second / 10).name == "a"
    assert not r.resting("a", now=5) and r.consecutive_failures("a") == 50


def test_failures_of_several_clients_rest_an_upstream_for_longer_each_time():
    r = router(Route("a"), Route("b", priority=1), after=2)
    assert r.failed("a", now=0, client="k1") == 0  # one failure is not yet a pattern
    assert r.pick("m", now=0).name == "a"
    assert r.failed("a", now=0, client="k2") == 1  # two clients: it rests for 1 s
    assert r.pick("m", now=0.5).name == "b" and r.resting("a", now=0.5)
    assert r.pick("m", now=1.0).name == "a"  # back on its own
    assert r.failed("a", now=1.0, client="k1") == 2  # still a pattern: twice as long
    r.failed("a", now=1.5, client="k2")
    assert r.rest_ends("a", "m") == 3  # failures during a rest change nothing
    now = 3.0
    for number in range(5):  # each time it is back, it fails again: 4 s, 8 s, then capped
        r.failed("a", now=now, client=f"k{number % 2}")
        now = r.rest_ends("a", "m")
    assert now == 3 + 4 + 8 + 8 + 8 + 8
    assert r.succeeded("a", now=now - 1)  # a success ends the rest and the doubling
    assert r.pick("m", now=now - 1).name == "a"
    assert r.consecutive_failures("a") == 0


def test_failures_must_outnumber_successes_within_the_window():
    r = router(Route("a"), after=2)
    for _ in range(5):
        r.succeeded("a", now=0)
    for number in range(5):
        assert r.failed("a", now=1, client=f"k{number}") == 0  # 5 failures, 5 successes
    assert r.failed("a", now=1, client="k5") == 1
    # Failures that fell out of the window do not count.
    fresh = router(Route("a"), after=2)
    fresh.failed("a", now=0, client="k1")
    assert fresh.failed("a", now=10.5, client="k2") == 0
    assert fresh.failed("a", now=10.6, client="k3") == 1


def test_when_every_upstream_rests_the_soonest_back_takes_the_request():
    r = router(Route("a"), Route("b", priority=1), after=1)
    r.failed("a", now=0, client="k1")
    r.failed("a", now=0, client="k2")  # a rests until 1
    assert r.pick("m", now=0).name == "b"
    r.failed("b", now=0.5, client="k1")
    r.failed("b", now=0.5, client="k2")  # b rests until 1.5
    assert r.pick("m", now=0.6).name == "a"  # panic: a's rest ends first
    assert r.pick("m", now=0.6, avoid={"a"}).name == "b"  # untried first, even resting
    assert not r.another_awake("m", now=0.6, tried=())
    assert r.another_awake("m", now=1.2, tried=("b",))  # a is awake again
    single = router(Route("only"), after=1)
    single.failed("only", now=0, client="k1")
    single.failed("only", now=0, client="k2")
    assert single.resting("only", now=0) and single.pick("m", now=0).name == "only"


def test_retry_after_rests_only_its_upstream_and_model():
    r = router(Route("a"), Route("b", priority=1), after=3)
    r.rate_limited("a", "gpt-4o", now=0, seconds=7)
    assert r.pick("gpt-4o", now=1).name == "b"
    assert r.pick("o3", now=1).name == "a"  # other models still go to a
    assert not r.resting("a", now=1) and r.models_resting("a", now=1) == 1
    assert r.rest_ends("a", "gpt-4o") == 7 and r.pick("gpt-4o", now=7).name == "a"
    off = router(Route("a"), Route("b", priority=1), after=0)
    off.rate_limited("a", "gpt-4o", now=0, seconds=7)
    for client in ("k1", "k2", "k3", "k4"):
        off.failed("a", now=0, client=client)
    assert off.pick("gpt-4o", now=0).name == "a"  # resting turned off


def test_rest_lengths():
    policy = HealthPolicy(after=3, first=1, longest=60)
    assert [policy.rest_length(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert not HealthPolicy(after=0).enabled
    assert policy.rest_length(10**6) == 60


# --- retries ---------------------------------------------------------------------------------


def test_backoff_wait_rules():
    assert backoff_wait(0.3, None, failover_ready=True) == 0
    assert backoff_wait(0.3, None, failover_ready=False) == 0.3
    assert backoff_wait(0.3, 2.0, failover_ready=False) == 2.0


def failure(status: int = 502, *, retryable: bool = True, retry_after: float | None = None):
    return AttemptFailed(
        GatewayError(status, "x"), retryable=retryable, cools=True, retry_after=retry_after
    )


def run_retries(
    outcomes: list[AttemptFailed | str],
    policy: RetryPolicy,
    failover_ready: bool = False,
) -> tuple[object, list[float], int]:
    """Runs the retry loop over scripted outcomes; returns result, waits, attempts made."""
    waits: list[float] = []
    attempts = 0

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def main() -> object:
        script = iter(outcomes)

        async def call() -> object:
            nonlocal attempts
            attempts += 1
            outcome = next(script)
            if isinstance(outcome, AttemptFailed):
                raise outcome
            return outcome

        loop = asyncio.get_running_loop()
        return await call_with_retries(call, policy, lambda _: failover_ready, loop.time, sleep)

    try:
        result: object = asyncio.run(main())
    except AttemptFailed as exc:
        result = exc
    return result, waits, attempts


POLICY = RetryPolicy(attempts=4, deadline=30, backoff=0.5, backoff_max=2)


def test_retries_until_success_with_growing_jittered_backoff():
    result, waits, attempts = run_retries([failure(), failure(), failure(), "ok"], POLICY)
    assert (result, attempts) == ("ok", 4)
    assert len(waits) == 3
    for number, wait in enumerate(waits, start=1):
        assert 0 <= wait <= min(2, 0.5 * 2 ** (number - 1))


def test_gives_up_after_the_attempts_with_the_last_failure():
    last = failure(503)
    result, waits, attempts = run_retries([failure(), failure(), failure(), last], POLICY)
    assert result is last and attempts == 4 and len(waits) == 3


def test_non_retryable_failure_is_raised_at_once():
    refused = failure(400, retryable=False)
    result, waits, attempts = run_retries([refused, "ok"], POLICY)
    assert result is refused and attempts == 1 and waits == []


def test_retry_after_is_waited_for_within_the_deadline():
    result, waits, _ = run_retries([failure(429, retry_after=3), "ok"], POLICY)
    assert result == "ok" and waits[0] == 3


def test_retry_after_past_the_deadline_is_passed_on_at_once():
    limited = failure(429, retry_after=60)
    result, waits, attempts = run_retries([limited, "ok"], POLICY)
    assert result is limited and waits == [] and attempts == 1


def test_failover_to_a_ready_upstream_does_not_wait():
    result, waits, _ = run_retries([failure(), failure(), "ok"], POLICY, failover_ready=True)
    assert result == "ok" and waits == [0, 0]


def test_attempt_failure_classification():
    for status in (408, 429, 500, 502, 503, 504):
        assert attempt_failure(status, b"", {}, ()).retryable, status
    for status in (400, 401, 403, 404, 409, 413, 422, 501):
        assert not attempt_failure(status, b"", {}, ()).retryable, status
    assert attempt_failure(401, b"", {}, ()).cools  # our key was refused: route elsewhere
    assert attempt_failure(501, b"", {}, ()).cools
    assert not attempt_failure(400, b"", {}, ()).cools
    limited = attempt_failure(429, b"", {"Retry-After": "4"}, ())
    assert limited.retry_after == 4 and limited.error.status == 429


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "3"}, 3.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({}, None),
        ({"retry-after": "x"}, None),
    ],
)
def test_parse_retry_after(headers, seconds):
    assert parse_retry_after(headers) == seconds


# --- renaming the model ----------------------------------------------------------------------


def test_replace_model_changes_only_the_top_level_model_value():
    body = (
        b'{"messages": [{"role": "user", "content": "model", "model": "keep"}],\n'
        b'  "model" :  "gpt-5", "seed": 18446744073709551617, "x": {"model": "keep"}}'
    )
    replaced = replace_model(body, "gpt-5-2025-08-07")
    assert replaced == body.replace(b'"gpt-5"', b'"gpt-5-2025-08-07"')


def test_replace_model_handles_escapes_duplicates_and_unicode():
    body = '{"mod\\u0065l": "a\\"b", "text": "\\\\\\"{[", "model": "gpt", "z": "é"}'.encode()
    replaced = replace_model(body, "näme/v2")
    assert json.loads(replaced) == {"model": "näme/v2", "text": '\\"{[', "z": "é"}
    assert replaced.count(b'"n\xc3\xa4me/v2"') == 2
    assert replaced.endswith(b', "z": "\xc3\xa9"}')


def test_replace_model_in_a_large_body():
    body = b'{"messages": [{"role": "user", "content": "' + b"x" * 8_000_000 + b'"}], "model": "a"}'
    replaced = replace_model(body, "bb")
    assert replaced == body[:-4] + b'"bb"}'


def test_body_without_model_is_returned_as_is():
    body = b'{"messages": []}'
    assert replace_model(body, "x") is body


# --- the upstreams file ----------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_config_file_gives_upstreams_with_resolved_keys(tmp_path):
    path = write(
        tmp_path,
        """
upstreams:
  - name: a
    base_url: https://one.example/v1/
    api_key_env: KEY_A
  - name: b
    base_url: http://127.0.0.1:9/v1
    api_key: sk-inline
    models: [gpt-4o, gpt-5]
    priority: 1
    weight: 2.5
    model_map: {gpt-5: gpt-5-2025}
  - name: c
    base_url: http://127.0.0.1:9/v1
    api_key_env: UNSET_KEY
""",
    )
    specs = upstream_specs(
        settings := Settings(config=path), read_config(settings), {"KEY_A": " sk-a "}
    )
    a, b, c = specs
    assert (a.name, a.base_url, a.api_key, a.models) == (
        "a",
        "https://one.example/v1",
        "sk-a",
        None,
    )
    assert (b.api_key, b.models, b.priority, b.weight) == (
        "sk-inline",
        frozenset({"gpt-4o", "gpt-5"}),
        1,
        2.5,
    )
    assert b.model_map == {"gpt-5": "gpt-5-2025"}
    assert c.api_key is None and c.key_setting == "UNSET_KEY"


def test_without_a_file_the_environment_names_the_one_upstream():
    settings = Settings(TYPEGPT_API_KEY="sk-env", TYPEGPT_BASE_URL="http://127.0.0.1:1/v1/")
    (spec,) = upstream_specs(settings, read_config(settings), {})
    assert (spec.base_url, spec.api_key, spec.key_setting) == (
        "http://127.0.0.1:1/v1",
        "sk-env",
        "TYPEGPT_API_KEY",
    )


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("upstreams: []", "upstreams"),
        ("upstreams:\n  - {name: a, base_url: ftp://x}", "base_url"),
        ("upstreams:\n  - {name: a, base_url: 'http://x', api_key: k, api_key_env: K}", "not both"),
        (
            "upstreams:\n  - {name: a, base_url: 'http://x'}\n  - {name: a, base_url: 'http://y'}",
            "unique",
        ),
        ("upstreams:\n  - {name: a, base_url: 'http://x', wieght: 2}", "wieght"),
        ("upstreams:\n  - {name: a, base_url: 'http://x', weight: 0}", "weight"),
        ("upstreams: [", "not valid YAML"),
    ],
)
def test_bad_config_files_say_what_is_wrong(tmp_path, text, complaint):
    with pytest.raises(ConfigError, match=complaint):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
