"""The settings' own parsing of what the environment gives them."""

from __future__ import annotations

import pytest

from typegpt_gateway.settings import Settings


def test_cors_origins_must_be_origins(monkeypatch) -> None:
    for bad in ("app.example.com", "https://app.example.com/path", "*", "https://a b"):
        monkeypatch.setenv("GATEWAY_CORS_ORIGINS", bad)
        with pytest.raises(ValueError, match="not an origin"):
            Settings()
    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", "https://a.example/, http://[::1]:8080")
    assert Settings().cors_origins == ("https://a.example", "http://[::1]:8080")
