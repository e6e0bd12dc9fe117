"""The OpenAI-compatible upstream (TypeGPT by default): one pooled HTTP client, and the rules
that turn the upstream's failures into the errors our clients see."""

from __future__ import annotations

import email.utils
import time

import httpx
import orjson

from .errors import GatewayError, scrub
from .redaction import register_secret

# Enough of an error body to find its message; the rest is never shown.
_MAX_ERROR_BODY = 64 * 1024


class Upstream:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self._api_key = api_key
        register_secret(api_key)
        self._chat_url = f"{base_url}/chat/completions"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            # Client headers never travel upstream: only what is set here.
            headers={"user-agent": "typegpt-gateway"},
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"Upstream({self._chat_url!r})"

    @property
    def configured(self) -> bool:
        return self._api_key is not None

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must be scrubbed from anything the upstream says."""
        return (self._api_key,) if self._api_key else ()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def open_chat(self, body: bytes, *, stream: bool) -> httpx.Response:
        """Sends the client's exact bytes; returns the open 2xx response or raises GatewayError."""
        if self._api_key is None:
            raise GatewayError(
                503,
                "The gateway's upstream API key is not configured: "
                "the operator must set TYPEGPT_API_KEY.",
                "api_error",
            )
        request = self._client.build_request(
            "POST",
            self._chat_url,
            content=body,
            headers={
                "authorization": f"Bearer {self._api_key}",
                "content-type": "application/json",
                "accept": "text/event-stream" if stream else "application/json",
            },
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise timeout_error() from exc
        except httpx.HTTPError as exc:
            raise GatewayError(
                502, f"Could not reach the upstream API ({type(exc).__name__}).", "api_error"
            ) from exc
        if response.status_code >= 400:
            try:
                error_body = await _read_bounded(response)
            except httpx.HTTPError:
                error_body = b""
            finally:
                await response.aclose()
            raise upstream_error(
                response.status_code, error_body, response.headers, secrets=self.secrets
            )
        return response


def timeout_error() -> GatewayError:
    return GatewayError(504, "The upstream API did not answer in time.", "timeout_error")


async def _read_bounded(response: httpx.Response) -> bytes:
    body = b""
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) >= _MAX_ERROR_BODY:
            break
    return body


def upstream_error(
    status: int, body: bytes, headers: httpx.Headers | dict[str, str], secrets: tuple[str, ...]
) -> GatewayError:
    """What the client sees when the upstream answers `status`. Pure."""
    message, error_type, param = _error_fields(body)
    if message is not None:
        message = scrub(message, secrets)
    if status in (401, 403):
        # The gateway's own key was refused: not the client's fault, and not theirs to see.
        return GatewayError(
            502,
            f"The upstream API refused the gateway's credentials (HTTP {status}). "
            "The gateway operator must check TYPEGPT_API_KEY.",
            "api_error",
        )
    if status == 429:
        return GatewayError(
            429,
            message or "The upstream API is rate limiting requests; retry later.",
            "rate_limit_error",
            headers=(("retry-after", str(retry_after_seconds(headers))),),
        )
    if status == 408:
        return timeout_error()
    if status >= 500:
        detail = f": {message}" if message else ""
        return GatewayError(502, f"The upstream API failed (HTTP {status}){detail}", "api_error")
    return GatewayError(
        status,
        message or f"The upstream API rejected the request (HTTP {status}).",
        error_type or "",
        param,
    )


def _error_fields(body: bytes) -> tuple[str | None, str | None, str | None]:
    """message, type and param of an OpenAI-style error body; only JSON is trusted."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    if not isinstance(document, dict):
        return None, None, None
    error = document.get("error", document)
    if isinstance(error, str):
        return error, None, None
    if not isinstance(error, dict):
        return None, None, None
    message = error.get("message", error.get("detail"))
    error_type = error.get("type")
    param = error.get("param")
    return (
        message if isinstance(message, str) else None,
        error_type if isinstance(error_type, str) else None,
        param if isinstance(param, str) else None,
    )


def retry_after_seconds(headers: httpx.Headers | dict[str, str], default: int = 1) -> int:
    """Whole seconds from Retry-After (seconds or HTTP date) or retry-after-ms."""
    lowered = {key.lower(): value for key, value in headers.items()}
    value = lowered.get("retry-after")
    if value is not None:
        value = value.strip()
        if value.isdigit():
            return max(int(value), 0)
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(int(when - time.time() + 0.999), 0)
    milliseconds = lowered.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(int((float(milliseconds) + 999) // 1000), 0)
        except ValueError:
            pass
    return default
