"""What every RPC handler does at its edges: read the caller's one credential, and end the call
with an OpenAI-shaped error.

Errors become a gRPC status plus trailing metadata (`x-openai-error`, `x-http-status`) from
which Envoy's Lua filter writes the HTTP response, so REST and gRPC callers get the same error.
"""

from __future__ import annotations

import logging

from ..errors import GatewayError
from ..ops import observe

logger = logging.getLogger(__name__)


def several_credentials_error() -> GatewayError:
    return GatewayError(
        401,
        "Send one 'Authorization: Bearer ...' header, not several.",
        "authentication_error",
    )


def authorization_of(context: observe.Context) -> str | None:
    """The call's one `authorization` value; several are refused (GatewayError), as Envoy
    refuses them on its port: which one counts must not depend on who reads them."""
    values = [value for key, value in context.invocation_metadata() or () if key == "authorization"]
    if len(values) > 1:
        raise several_credentials_error()
    if not values or not isinstance(values[0], str):
        return None
    return values[0]


async def abort(context: observe.Context, error: GatewayError) -> None:
    """Ends the RPC with `error`; never returns."""
    exchange = observe.current()
    exchange.failed(error)
    await context.abort(
        error.grpc_code,
        error.message,
        trailing_metadata=(
            ("x-openai-error", error.to_json()),
            ("x-http-status", str(error.status)),
            *error.headers,
            (observe.REQUEST_ID, exchange.request_id),
        ),
    )


def as_gateway_error(exc: Exception) -> GatewayError:
    """What the client sees: a GatewayError as it is, anything else as a logged 500."""
    if isinstance(exc, GatewayError):
        return exc
    logger.error("unexpected error: %s", type(exc).__name__, exc_info=exc)
    return GatewayError(500, "The gateway failed unexpectedly; this was logged.", "api_error")
