"""The tokens one request used: the value the meter produces and the limiter, the ledger and
the metrics consume. Below all of them, so that none depends on how it is measured."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    # Of prompt_tokens, those the upstream read from its prompt cache (charged less).
    cached_tokens: int = 0
    # Images made (images route): priced per image where the price table says so.
    images: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens
