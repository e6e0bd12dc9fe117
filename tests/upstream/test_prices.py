"""Prices and a request's cost: the rounding rule, the shipped defaults, and `prices:` in the
config file with each upstream's own. Pure rules (and the package's data file)."""

from __future__ import annotations

import re
from decimal import Decimal
from importlib import resources
from pathlib import Path

import pytest

from typegpt_gateway.pipeline.usage_meter import UsageMeter
from typegpt_gateway.settings import Settings
from typegpt_gateway.upstream.prices import DEFAULTS_FILE, Price, cost_micro_usd, shipped_prices
from typegpt_gateway.upstream.upstreams_file import (
    ConfigError,
    load_config,
    price_list,
    read_config,
)
from typegpt_gateway.usage import Usage

GPT_4O = Price(input=Decimal("2.5"), cached_input=Decimal("1.25"), output=Decimal("10"))
GUIDE_MODELS = (
    "gpt-4o", "o3-mini", "gpt-4.1", "o3", "gpt-5-chat", "gpt-5-model-router", "gpt-5", "gpt-5-mini",
)  # fmt: skip
# Priced per character spoken or minute transcribed.
AUDIO_MODELS = ("tts-1", "tts-1-hd", "whisper-1")


def test_one_usd_per_million_tokens_is_one_micro_dollar_per_token():
    one = Price(input=Decimal(1), output=Decimal(1))
    assert cost_micro_usd(Usage(1_000_000, 0), one) == 1_000_000
    assert cost_micro_usd(Usage(3, 4), one) == 7


@pytest.mark.parametrize(
    ("usage", "micro_usd"),
    [
        # 5 x 2.5 + 7 x 10 = 82.5: a half rounds up.
        (Usage(5, 7), 83),
        # 1 x 2.5 = 2.5 -> 3; 1 x 1.25 (cached) = 1.25 -> 1: the nearest whole micro-dollar.
        (Usage(1, 0), 3),
        (Usage(1, 0, cached_tokens=1), 1),
        # 10 prompt tokens of which 4 cached: 6 x 2.5 + 4 x 1.25 + 3 x 10 = 15 + 5 + 30.
        (Usage(10, 3, cached_tokens=4), 50),
        # A cached count above the prompt is the whole prompt, no more.
        (Usage(2, 0, cached_tokens=9), 3),  # 2 x 1.25 = 2.5 -> 3
        (Usage(0, 0), 0),
        # Large counts stay exact: 10^9 x 2.5 + 10^9 x 10.
        (Usage(10**9, 10**9), 12_500_000_000),
    ],
)
def test_cost_is_exact_then_rounded_once_to_the_nearest_micro_dollar(usage, micro_usd):
    assert cost_micro_usd(usage, GPT_4O) == micro_usd


def test_rounding_is_per_request_and_never_drifts_one_way():
    # 0.4 and 0.6 micro-dollars: one rounds down, the other up.
    price = Price(input=Decimal("0.4"), output=Decimal("0.6"))
    assert cost_micro_usd(Usage(1, 0), price) == 0
    assert cost_micro_usd(Usage(0, 1), price) == 1


def test_without_a_cached_price_cached_tokens_cost_the_input_price():
    price = Price(input=Decimal(2), output=Decimal(8))
    assert cost_micro_usd(Usage(10, 1, cached_tokens=10), price) == 28


def test_reasoning_is_output_the_upstream_counts_in_completion_tokens():
    meter = UsageMeter(0, strip_usage_chunk=False)
    meter.see_answer(
        b'{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":30,'
        b'"completion_tokens_details":{"reasoning_tokens":20},'
        b'"prompt_tokens_details":{"cached_tokens":4}}}'
    )
    assert meter.usage() == Usage(10, 30, cached_tokens=4)
    assert cost_micro_usd(meter.usage(), GPT_4O) == 6 * 2.5 + 4 * 1.25 + 30 * 10


@pytest.mark.parametrize("cached", ["11", "-1", "true", '"4"', "null", "1e3"])
def test_a_cached_count_of_no_use_charges_the_whole_prompt_as_input(cached):
    meter = UsageMeter(0, strip_usage_chunk=False)
    meter.see_answer(
        b'{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":3,'
        b'"prompt_tokens_details":{"cached_tokens":' + cached.encode() + b"}}}"
    )
    assert meter.usage() == Usage(10, 3)


def test_prices_refuse_what_is_no_price():
    for bad in ({"input": -1, "output": 1}, {"input": 1}, {"input": 1, "output": 1, "x": 1}):
        with pytest.raises(ValueError, match=r"input|output|x"):
            Price.model_validate(bad)
    with pytest.raises(ValueError, match="decimal"):
        Price.model_validate({"input": "0.0000001", "output": 1})
    with pytest.raises(ValueError):
        Price.model_validate({"input": float("nan"), "output": 1})


def test_shipped_defaults_price_the_guides_models_with_a_source_and_a_date():
    prices = shipped_prices()
    # The model router's price is not known: left out, unknown rather than 0.
    assert set(prices) == (set(GUIDE_MODELS) - {"gpt-5-model-router"}) | set(AUDIO_MODELS)
    for model, price in prices.items():
        assert price is not None, model
        if model in AUDIO_MODELS:
            assert (price.characters or price.minute or 0) > 0, model
        else:
            assert price.input > 0 and price.output > 0, model
    text = (resources.files("typegpt_gateway.upstream") / DEFAULTS_FILE).read_text()
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^[\w.-]+:", line):
            comment = lines[index - 1]
            assert comment.startswith("#") and "2026-12-06" in comment, line
            assert "OpenAI" in comment, line
    assert "https://openai.com/api/pricing/" in text
    assert "gpt-5-model-router" in text  # its absence is explained
    assert prices["gpt-5"] == Price(
        input=Decimal("1.25"), cached_input=Decimal("0.125"), output=Decimal(10)
    )
    assert prices["tts-1"] == Price(characters=Decimal(15))
    assert prices["tts-1-hd"] == Price(characters=Decimal(30))
    assert prices["whisper-1"] == Price(minute=Decimal("0.006"))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_config_prices_overlay_the_defaults_and_an_upstream_its_own(tmp_path):
    path = _write(
        tmp_path,
        """
upstreams:
  - name: main
    base_url: http://127.0.0.1:9/v1
  - name: fallback
    base_url: http://127.0.0.1:9/v1
    prices:
      gpt-4o: {input: 5, output: 15}
      o3: null
prices:
  gpt-4o: {input: 3, cached_input: 1.5, output: 12}
  my-model: {input: 0.1, output: 0.2}
  gpt-5: null
""",
    )
    prices = price_list(read_config(Settings(config=path)))
    shipped = shipped_prices()
    assert prices.of("gpt-4o", "main") == Price(
        input=Decimal(3), cached_input=Decimal("1.5"), output=Decimal(12)
    )
    assert prices.of("gpt-4o", "fallback") == Price(input=Decimal(5), output=Decimal(15))
    # No upstream answered: the gateway's own price.
    assert prices.of("gpt-4o") == prices.of("gpt-4o", "main")
    assert prices.of("my-model", "fallback") == Price(input=Decimal("0.1"), output=Decimal("0.2"))
    assert prices.of("o3", "main") == shipped["o3"]
    assert prices.of("o3", "fallback") is None
    assert prices.of("gpt-5", "main") is None and prices.of("gpt-5") is None
    assert prices.of("gpt-5-model-router", "main") is None
    served = {"gpt-4o": ["main", "fallback"], "o3": ["main", "fallback"], "gpt-5": ["main"]}
    assert prices.unpriced(served) == {"o3": ["fallback"], "gpt-5": ["main"]}


def test_without_a_config_file_the_defaults_apply():
    prices = price_list(None)
    assert prices.of("gpt-5-mini", "typegpt") == shipped_prices()["gpt-5-mini"]
    assert prices.of("gpt-5-model-router", "typegpt") is None


@pytest.mark.parametrize(
    ("prices", "complaint"),
    [
        ("{gpt-4o: {input: -1, output: 1}}", "prices.gpt-4o.input"),
        ("{gpt-4o: {input: 1, ouput: 1}}", "ouput"),
        ("{gpt-4o: 2.5}", "prices.gpt-4o"),
    ],
)
def test_bad_prices_say_where(tmp_path, prices, complaint):
    path = _write(
        tmp_path, f"upstreams:\n  - {{name: a, base_url: 'http://x'}}\nprices: {prices}\n"
    )
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        load_config(path)


def test_an_image_model_is_priced_per_image():
    price = Price(image=Decimal("0.04"))
    assert cost_micro_usd(Usage(images=3), price) == 120_000
    # Tokens a model reports are priced too when the price gives them.
    both = Price(image=Decimal("0.01"), input=Decimal("5"), output=Decimal("40"))
    assert cost_micro_usd(Usage(10, 2, images=1), both) == 10_000 + 50 + 80


def test_a_price_needs_its_token_prices_unless_it_prices_images():
    with pytest.raises(ValueError, match="output"):
        Price(input=Decimal(1))
    assert Price(image=Decimal(0)).input == 0


def test_speech_is_priced_per_character():
    # tts-1: $15 per 1M characters is 15 micro-dollars a character.
    assert cost_micro_usd(Usage(characters=11), Price(characters=Decimal(15))) == 165
    # 3 x 0.5 = 1.5: rounded once, half up.
    assert cost_micro_usd(Usage(characters=3), Price(characters=Decimal("0.5"))) == 2


@pytest.mark.parametrize(
    ("seconds", "micro_usd"),
    [
        # whisper-1: $0.006 a minute is 100 micro-dollars a second.
        ("60", 6_000),
        ("2.5", 250),
        ("0", 0),
        # 0.001 s is 0.1 micro-dollar: rounds to 0; 0.005 s is 0.5: rounds up to 1.
        ("0.001", 0),
        ("0.005", 1),
    ],
)
def test_transcription_is_priced_per_minute_from_its_seconds(seconds, micro_usd):
    whisper = Price(minute=Decimal("0.006"))
    assert cost_micro_usd(Usage(seconds=Decimal(seconds)), whisper) == micro_usd


def test_seconds_over_sixty_are_exact_before_the_one_rounding():
    # $0.007 a minute is 116.66... micro-dollars a second: 3 s are exactly 350, which rounding
    # per second (117 x 3 = 351) or a decimal of limited digits would miss.
    price = Price(minute=Decimal("0.007"))
    assert cost_micro_usd(Usage(seconds=Decimal(3)), price) == 350
    assert cost_micro_usd(Usage(seconds=Decimal(1)), price) == 117


def test_audio_the_price_does_not_price_is_unpriced_not_free():
    tokens_only = Price(input=Decimal(1), output=Decimal(1))
    assert cost_micro_usd(Usage(characters=5), tokens_only) is None
    assert cost_micro_usd(Usage(seconds=Decimal(5)), tokens_only) is None
    assert cost_micro_usd(Usage(seconds=Decimal(5)), Price(characters=Decimal(15))) is None
    # Nothing measured (a transcription answered as text): unknown, whatever the price.
    assert cost_micro_usd(Usage(measured=False), Price(minute=Decimal("0.006"))) is None
    assert cost_micro_usd(Usage(measured=False), tokens_only) is None


def test_a_transcription_in_tokens_costs_its_tokens():
    # gpt-4o-transcribe reports tokens: priced at input and output like chat's.
    price = Price(input=Decimal("2.5"), output=Decimal(10))
    assert cost_micro_usd(Usage(10, 6), price) == 85


def test_a_price_may_be_per_character_or_per_minute_alone():
    assert Price(characters=Decimal(15)).input == Price(minute=Decimal(1)).output == 0
    with pytest.raises(ValueError, match="characters or minute"):
        Price.model_validate({"input": 1})
