"""The tokens one request used (and the images, characters or seconds of audio on the routes
that count those): the value the meter produces and the limiter, the ledger and the metrics
consume. Below all of them, so that none depends on how it is measured."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    # Of prompt_tokens, those the upstream read from its prompt cache (charged less).
    cached_tokens: int = 0
    # Images made (images route): priced per image where the price table says so.
    images: int = 0
    # Characters of text made into speech (speech route, known from the request).
    characters: int = 0
    # Seconds of audio transcribed, as the upstream reports them (transcriptions route); None
    # when it reports none.
    seconds: Decimal | None = None
    # False when nothing told what the request used (a transcription answered in text, which
    # reports no usage): counted as a request, its cost unknown whatever the price.
    measured: bool = True

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens
