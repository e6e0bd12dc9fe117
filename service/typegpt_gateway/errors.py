"""OpenAI-shaped errors: one exception type, its HTTP and gRPC status, and scrubbing.

Pure rules only; the servicer turns a GatewayError into gRPC status + trailing metadata, and
Envoy's Lua filter turns that into the HTTP response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc

from .redaction import redact, withholds

_GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# The type of an error that names none, for every status: the backend's errors and Envoy's own
# replies alike (process/envoy.py writes this rule into the Lua filter). Any other client error
# is an invalid_request_error, 404 included, as OpenAI answers an unknown model or URL.
_DEFAULT_TYPES: dict[int, str] = {
    401: "authentication_error",
    403: "authentication_error",
    408: "timeout_error",
    429: "rate_limit_error",
    504: "timeout_error",
}

# A message travels to gRPC callers twice, as grpc-message (percent-encoded UTF-8) and inside
# x-openai-error (ASCII-escaped JSON), and gRPC clients refuse metadata over 8 KiB. Bounding
# the escaped JSON form bounds both: 2000 bytes is ~2000 ASCII characters or ~330 CJK ones.
MAX_ESCAPED_MESSAGE_BYTES = 2000
# Other fields copied from an upstream error (type, param).
MAX_FIELD_CHARS = 200
ELLIPSIS = "…"


def _escaped_size(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=True))


def bound_message(message: str) -> str:
    """The longest prefix of `message` (plus an ellipsis) that fits the metadata budget."""
    if _escaped_size(message) <= MAX_ESCAPED_MESSAGE_BYTES:
        return message
    shortest, longest = 0, len(message)
    while shortest < longest:
        middle = (shortest + longest + 1) // 2
        if _escaped_size(message[:middle] + ELLIPSIS) <= MAX_ESCAPED_MESSAGE_BYTES:
            shortest = middle
        else:
            longest = middle - 1
    return message[:shortest] + ELLIPSIS


def default_error_type(status: int) -> str:
    if status in _DEFAULT_TYPES:
        return _DEFAULT_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def grpc_code_for(status: int) -> grpc.StatusCode:
    if status in _GRPC_CODES:
        return _GRPC_CODES[status]
    return grpc.StatusCode.FAILED_PRECONDITION if status < 500 else grpc.StatusCode.INTERNAL


# Not frozen: Python code sets attributes on an exception in flight (contextlib sets
# __traceback__ on one raised through a @contextmanager), which a frozen dataclass refuses.
# Compared and hashed by identity, like any exception.
@dataclass(eq=False)
class GatewayError(Exception):
    """An error the client sees, as `{"error": {"message", "type", "param", "code"}}`."""

    status: int
    message: str
    type: str = ""
    param: str | None = None
    # Extra response headers, e.g. Retry-After on a 429.
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not self.type:
            object.__setattr__(self, "type", default_error_type(self.status))
        # Every message a client sees is built here: the last place to catch a credential,
        # e.g. one an upstream echoed into a parse error.
        object.__setattr__(self, "message", bound_message(redact(self.message)))
        object.__setattr__(self, "type", redact(self.type)[:MAX_FIELD_CHARS])
        if self.param is not None:
            object.__setattr__(self, "param", redact(self.param)[:MAX_FIELD_CHARS])

    def __str__(self) -> str:
        return f"{self.status} {self.type}: {self.message}"

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return grpc_code_for(self.status)

    def payload(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.status,
            }
        }

    def to_json(self) -> str:
        # ASCII-only: the text travels as gRPC metadata, which must be printable ASCII.
        return json.dumps(self.payload(), ensure_ascii=True, separators=(",", ":"))


def invalid_request(message: str, param: str | None = None) -> GatewayError:
    """A 400 `invalid_request_error` for what the client sent, `param` naming where."""
    return GatewayError(400, message, "invalid_request_error", param)


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str | None:
    """Text that came from elsewhere (e.g. an upstream error body) without credentials; None
    when, so cleaned, it still holds a near form of one (see `withholds`): such text is not
    passed on at all, while an exact echo only costs the client those characters."""
    text = redact(text, secrets)
    return None if withholds(text, secrets) else text
