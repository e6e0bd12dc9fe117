"""One OpenAI-compatible upstream (TypeGPT by default): its pooled HTTP client, and the rules
that turn its failures into the errors our clients see and the retries they deserve."""

from __future__ import annotations

import asyncio
import email.utils
import math
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
import orjson
from yarl import URL

from ..errors import GatewayError, scrub
from ..ops import observe
from ..redaction import register_secret
from .model_mapping import replace_model
from .retry import RETRYABLE_STATUSES, AttemptFailed
from .timeouts import Due, timeout_error
from .upstreams_file import UpstreamSpec

# Enough of an error body to find its message; the rest is never shown.
_MAX_ERROR_BODY = 64 * 1024
JSON = "application/json"
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """How one OpenAI route is called upstream: its path under the upstream's base URL (which
    ends in /v1), the Accept of its answer, streamed or not, and how the model is renamed in
    its body for an upstream that knows it by another name."""

    path: str
    accept: str = JSON
    stream_accept: str = EVENT_STREAM
    rename: Callable[[bytes, str], bytes] = replace_model


CHAT_CALL = UpstreamCall("/chat/completions")


class Upstream:
    def __init__(self, spec: UpstreamSpec, *, connect_timeout: float) -> None:
        self.spec = spec
        self.name = spec.name
        register_secret(spec.api_key)
        self._base_url = spec.base_url
        # Per route path: a URL is parsed once, not per request.
        self._urls: dict[str, URL] = {}
        self._connect_timeout = connect_timeout
        # Made on first use: a session belongs to the running event loop.
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        # Client headers never travel upstream: only what is set here and in send.
        headers = {"user-agent": "typegpt-gateway"}
        if self.spec.api_key is not None:
            headers["authorization"] = f"Bearer {self.spec.api_key}"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0,
                # The system's CAs, as OpenSSL finds them: SSL_CERT_FILE and SSL_CERT_DIR,
                # when set, name the file and directory it reads instead of its own.
                ssl=ssl.create_default_context(),
                # Fresh DNS answers for a failed-over or re-pointed host, as with httpx.
                use_dns_cache=False,
                keepalive_timeout=5.0,
            ),
            headers=headers,
            # Cookies an upstream sets must not follow one client's request into another's.
            cookie_jar=aiohttp.DummyCookieJar(),
            # Reads are bounded by the caller's deadlines (first byte, idle, total).
            timeout=aiohttp.ClientTimeout(total=None, connect=self._connect_timeout),
            proxy=_env_proxy(URL(self._base_url)),
            # Headers up to what httpx (h11) accepted.
            max_field_size=16 * 1024,
            max_line_size=16 * 1024,
        )
        return self._session

    def _url(self, path: str) -> URL:
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = URL(f"{self._base_url}{path}")
        return url

    def __repr__(self) -> str:
        return f"Upstream({self.name!r}, {self._base_url!r})"

    @property
    def configured(self) -> bool:
        return self.spec.api_key is not None

    @property
    def secrets(self) -> tuple[str, ...]:
        """What must be scrubbed from anything the upstream says."""
        return (self.spec.api_key,) if self.spec.api_key else ()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def body_for(
        self, model: str, body: bytes, rename: Callable[[bytes, str], bytes] = replace_model
    ) -> bytes:
        """The client's bytes, with the model renamed if this upstream knows it by another name."""
        upstream_model = self.spec.model_map.get(model)
        return body if upstream_model is None else rename(body, upstream_model)

    async def send(
        self,
        call: UpstreamCall,
        body: bytes,
        *,
        stream: bool,
        due: Due,
        content_type: str = JSON,
    ) -> aiohttp.ClientResponse:
        """Sends `body` to the route of `call`; returns the open 2xx response, or raises
        AttemptFailed (a 504 when the response headers have not arrived by `due`, on the
        loop's clock). `content_type` is the body's, its multipart boundary included."""
        session = self._session or self._open_session()
        headers = {
            "accept": call.stream_accept if stream else call.accept,
            "content-type": content_type,
            observe.REQUEST_ID: observe.current().request_id,
        }
        try:
            async with asyncio.timeout_at(due.at):
                response = await session.post(
                    self._url(call.path),
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                )
        # Before TimeoutError: aiohttp's connect timeout is a TimeoutError too, and retryable.
        except aiohttp.ClientError as exc:
            # Refused, reset or dropped before any answer: nothing reached the client. Only
            # the type is told: aiohttp errors carry the request's headers, with the key.
            error = GatewayError(
                502, f"Could not reach the upstream API ({type(exc).__name__}).", "api_error"
            )
            raise AttemptFailed(error, retryable=True, cools=True) from exc
        except TimeoutError as exc:
            # The request may be running upstream: another try could run (and bill) it twice.
            raise AttemptFailed(due.error(), retryable=False, cools=False) from exc
        if response.status >= 400:
            try:
                error_body = await _read_bounded(response)
            except aiohttp.ClientError:
                error_body = b""
            finally:
                finish(response)
            raise attempt_failure(
                response.status, error_body, response.headers, secrets=self.secrets
            )
        return response


def finish(response: aiohttp.ClientResponse) -> None:
    """Done with `response`: its connection goes back to the pool if the body was read to
    the end, else it is closed at once (so that an upstream sees a client that left)."""
    if response.content.at_eof():
        response.release()
    else:
        response.close()


def read_available(response: aiohttp.ClientResponse) -> bytes:
    """The body bytes that have arrived and not been read yet (b"" if none have).

    When the connection broke, aiohttp raises the error before handing out the bytes that
    came before it; here those bytes come first (as with httpx: the client gets every chunk
    that arrived), and the error on the next call."""
    content = response.content
    error = content.exception()
    if error is None:
        return content.read_nowait()
    # No public way to read past a stored error: set it aside for one read.
    content._exception = None
    try:
        data = content.read_nowait()
    finally:
        content._exception = error
    if data:
        return data
    raise error


def _env_proxy(url: URL) -> str | None:
    """The proxy httpx would use for `url` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY),
    looked up once rather than per request."""
    if url.host is None or urllib.request.proxy_bypass(url.host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(url.scheme) or proxies.get("all")


def attempt_failure(
    status: int, body: bytes, headers: Mapping[str, str], secrets: tuple[str, ...]
) -> AttemptFailed:
    """An upstream error answer: what the client would see, and whether to try again. Pure."""
    return AttemptFailed(
        upstream_error(status, body, headers, secrets),
        retryable=status in RETRYABLE_STATUSES,
        # A refused key or an overloaded upstream: send other requests elsewhere for a while.
        cools=status >= 500 or status in (401, 403, 429),
        retry_after=parse_retry_after(headers),
    )


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    body = b""
    while len(body) < _MAX_ERROR_BODY and (chunk := await response.content.readany()):
        body += chunk
    return body


def upstream_error(
    status: int, body: bytes, headers: Mapping[str, str], secrets: tuple[str, ...]
) -> GatewayError:
    """What the client sees when the upstream answers `status`. Pure."""
    # Each field is the upstream's text; one that holds a near form of a key is dropped.
    message, error_type, param = (
        None if field is None else scrub(field, secrets) for field in _error_fields(body)
    )
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
        return timeout_error("the upstream timed out (HTTP 408)")
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


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from Retry-After (seconds or HTTP date) or retry-after-ms; None when absent."""
    lowered = {key.lower(): value for key, value in headers.items()}
    value = lowered.get("retry-after")
    if value is not None:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(when - time.time(), 0.0)
    milliseconds = lowered.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(float(milliseconds) / 1000, 0.0)
        except ValueError:
            pass
    return None


def retry_after_seconds(headers: Mapping[str, str], default: int = 1) -> int:
    """Whole seconds for a Retry-After header of our own."""
    seconds = parse_retry_after(headers)
    if seconds is None or not math.isfinite(seconds):
        return default
    return math.ceil(seconds)
