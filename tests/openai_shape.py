"""Assertions on the OpenAI wire format shared by the REST tests."""

from __future__ import annotations

from typing import Any

import httpx

ERROR_KEYS = {"message", "type", "param", "code"}
# The client guide's model list, in its order: the default catalog must match it.
GUIDE_MODELS = [
    "gpt-4o",
    "o3-mini",
    "gpt-4.1",
    "o3",
    "gpt-5-chat",
    "gpt-5-model-router",
    "gpt-5",
    "gpt-5-mini",
]


def assert_error(response: httpx.Response, status: int, error_type: str | None = None) -> dict:
    """The response is the guide's error shape with HTTP `status`; returns the inner error."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == ERROR_KEYS, error
    assert error["code"] == status
    assert isinstance(error["message"], str) and error["message"]
    if error_type is not None:
        assert error["type"] == error_type, error
    return error


def sse_payloads(text: str) -> list[str]:
    """The data payloads of an SSE body, after checking its framing is OpenAI's."""
    frames = [frame for frame in text.split("\n\n") if frame]
    assert text.endswith("\n\n"), repr(text[-50:])
    payloads = []
    for frame in frames:
        if frame.startswith(":"):
            continue  # comment (keepalive)
        assert frame.startswith("data: "), repr(frame)
        payloads.append(frame[len("data: ") :])
    return payloads


def chat_body(model: str = "gpt-4o", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Hello, how are you?"}],
        **extra,
    }
