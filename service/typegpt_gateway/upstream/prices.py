"""What the upstreams charge per model, and what one request costs. Pure, but for reading the
shipped defaults (default_prices.yaml, in the package).

A price is USD per 1M tokens: input (the prompt), cached input (the part of the prompt the
upstream reports in `usage.prompt_tokens_details.cached_tokens`; charged as input when no
cached price is given) and output (the completion, reasoning tokens included: the upstream
counts them in `completion_tokens`). 1 USD per 1M tokens is exactly 1 micro-dollar per token,
so a request's cost in micro-dollars is a sum of tokens times prices.

Rounding: that sum is computed exactly (prices are decimals with at most PRICE_DECIMALS
places, tokens are integers), then rounded once per request to the nearest whole micro-dollar,
halves up. The ledger adds whole micro-dollars, so sums are exact; the rounding error is below
half a micro-dollar per request, either way, and does not pile up in one direction.

An image model is priced per image instead (`image`, USD per image made, e.g. dall-e-3:
`{image: 0.04}`): a request on the images route costs its images times that, plus its tokens
at `input` and `output` when the model reports them and the price gives them (0 otherwise).

Audio: a speech model is priced per character of the text it speaks (`characters`, USD per 1M
characters, e.g. tts-1: `{characters: 15}`; so a micro-dollar per character at 1), a
transcription model either per minute of audio (`minute`, USD per minute, e.g. whisper-1:
`{minute: 0.006}`; the upstream reports seconds, priced exactly as seconds / 60 minutes before
the one rounding) or per token (`input`, `output`: the audio and text of the prompt alike).
Characters, or seconds, that the price does not price make the cost unknown rather than 0, and
so does a usage that measured nothing (a transcription answered as text reports none).

A model without a price costs "unknown", never 0: `PriceList.of` answers None and the ledger
counts the request as unpriced. The price list is the shipped defaults, overlaid model by
model by the config file's `prices:`, and for requests an upstream served, by that upstream's
own `prices:` (a fallback provider may charge differently); a model set to null in either has
no price there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from importlib import resources
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from ..usage import Usage

# A price's finest step: a millionth of a dollar per 1M tokens keeps every cost exact.
PRICE_DECIMALS = 6
# USD per 1M tokens: far beyond any model's price; a larger one is a typo.
MAX_PRICE = 100_000
DEFAULTS_FILE = "default_prices.yaml"

Amount = Annotated[
    Decimal, Field(ge=0, le=MAX_PRICE, decimal_places=PRICE_DECIMALS, allow_inf_nan=False)
]


class Price(BaseModel):
    """One model's price, in USD per 1M tokens, or per image made, or for audio."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Required unless `image`, `characters` or `minute` is given (then 0 when left out).
    input: Amount = Decimal(0)
    output: Amount = Decimal(0)
    # None: cached input tokens cost the input price.
    cached_input: Amount | None = None
    # USD per image made (the images route).
    image: Amount | None = None
    # USD per 1M characters spoken (the speech route).
    characters: Amount | None = None
    # USD per minute of audio transcribed (the transcriptions route, from its seconds).
    minute: Amount | None = None

    @model_validator(mode="after")
    def _tokens_or_units(self) -> Price:
        if self.image is None and self.characters is None and self.minute is None:
            missing = [name for name in ("input", "output") if name not in self.model_fields_set]
            if missing:
                raise ValueError(
                    f"a price needs {' and '.join(missing)} (or image, characters or minute)"
                )
        return self


# What `prices:` holds: model name -> its price, or null for "no price here".
PriceTable = Mapping[str, Price | None]
TABLE: TypeAdapter[dict[str, Price | None]] = TypeAdapter(dict[str, Price | None])


def cost_micro_usd(usage: Usage, price: Price) -> int | None:
    """The request's cost in whole micro-dollars (see the module's rounding rule); None when
    unknown: the usage measured nothing, or characters or seconds the price does not price."""
    if not usage.measured:
        return None
    if (usage.characters and price.characters is None) or (
        usage.seconds is not None and price.minute is None
    ):
        return None
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    cached_price = price.input if price.cached_input is None else price.cached_input
    exact = Fraction(
        (usage.prompt_tokens - cached) * price.input
        + cached * cached_price
        + usage.completion_tokens * price.output
        # USD per image is a million micro-dollars per image.
        + usage.images * (price.image or 0) * 1_000_000
        # USD per 1M characters is a micro-dollar per character.
        + usage.characters * (price.characters or 0)
    )
    if usage.seconds is not None and price.minute is not None:
        # A fraction, not a decimal: a price per minute over 60 seconds need not end.
        exact += Fraction(usage.seconds) * Fraction(price.minute) * 1_000_000 / 60
    # Half up: every cost is at least 0.
    return math.floor(exact + Fraction(1, 2))


def overlay(base: PriceTable, table: PriceTable) -> dict[str, Price | None]:
    """`base` with each model `table` names replaced (null: no price)."""
    return {**base, **table}


def shipped_prices() -> dict[str, Price | None]:
    """The defaults that ship with the gateway (their sources are in the file)."""
    text = (resources.files(__package__) / DEFAULTS_FILE).read_text()
    return TABLE.validate_python(yaml.safe_load(text) or {})


@dataclass(frozen=True, slots=True)
class PriceList:
    """The gateway's prices (`base`) and each upstream's (`by_upstream`, already overlaid)."""

    base: PriceTable
    by_upstream: Mapping[str, PriceTable] = field(default_factory=dict)

    def of(self, model: str, upstream: str | None = None) -> Price | None:
        """The price of `model` as `upstream` charges it (None: the gateway's own price, for a
        request no upstream answered); None when unknown."""
        table = self.by_upstream.get(upstream, self.base) if upstream is not None else self.base
        return table.get(model)

    def unpriced(self, served: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
        """Of `served` (each model and the upstreams that serve it), the models without a
        price on some of their upstreams, with those upstreams."""
        missing: dict[str, list[str]] = {}
        for model, upstreams in served.items():
            lacking = [name for name in upstreams if self.of(model, name) is None]
            if lacking:
                missing[model] = lacking
        return missing
