"""openapi/gateway.yaml against what the live gateway really answers, so the two cannot drift.

Every operation and every status the description declares is produced for real (Envoy, the
gRPC server, the fake upstream; an Envoy whose backend is down for the 503s; keys with tiny
limits for the 429s; a gateway whose rate limiter cannot reach Redis and fails closed for the
503 with Retry-After), and
each answer must carry a declared status and content type, validate against the declared
schema and carry its required headers, each fitting its declared schema. Every declared header
is seen on some answer. The reverse holds too: every HTTP route the protos bind is described.
The admin API is driven with the admin key, a client key, a wrong key and none, and on a
gateway without an admin key (the one whose limiter is down) for its 403.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import gateway_openapi
import httpx
import openapi_schema
import pytest
import schemathesis
from fake_upstream import Reply, make_chunk
from gateway_process import ADMIN_KEY, SCRIPTED_FAILURES, Gateway, bare_envoy, free_port, running
from google.api import annotations_pb2
from openai_shape import chat_body, sse_payloads

from typegpt.gateway.v1 import chat_pb2, keys_pb2, routes_pb2, status_pb2

MAX_BODY = 64 * 1024
FIRST_BYTE_TIMEOUT = 2
RATE_LIMIT_HEADERS = frozenset(
    f"x-ratelimit-{what}-{unit}"
    for what in ("limit", "remaining", "reset")
    for unit in ("requests", "tokens")
)


@dataclass
class World:
    gw: Gateway
    key: str
    limited_key: str  # gpt-4o only
    metered_key: str  # per-minute limits never reached: x-ratelimit-* headers on each answer
    one_rpm_key: str  # one request a minute
    budget_key: str  # a budget of one token a day
    down_url: str  # an Envoy whose gRPC backend is not running
    # A gateway (and key) whose one upstream is unreachable; it has no admin key either.
    limiter_down: tuple[Gateway, str]
    upstream: object

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {key or self.key}"}


@pytest.fixture(scope="module")
def down_url(tmp_path_factory) -> Iterator[str]:
    with bare_envoy(tmp_path_factory.mktemp("down"), grpc_port=free_port()) as url:
        yield url


@pytest.fixture(scope="module")
def limiter_down(tmp_path_factory) -> Iterator[tuple[Gateway, str]]:
    # Limits kept in a Redis that cannot be reached, failing closed: a limited key's request
    # is the 503 with Retry-After. Without an admin key, its admin API is off: the admin API's
    # other 403.
    with running(
        tmp_path_factory.mktemp("limiter-down"),
        f"http://127.0.0.1:{free_port()}/v1",
        admin_key=None,
        extra_env={
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "GATEWAY_RATE_LIMIT_FAILURE_MODE": "closed",
            "GATEWAY_REDIS_TIMEOUT": "0.5",
        },
    ) as gw:
        yield gw, gw.wait_for_key(gw.create_key("limited-nowhere", "--rpm", "1000"))


@pytest.fixture(scope="module")
def world(upstream, tmp_path_factory, down_url, limiter_down) -> Iterator[World]:
    with running(
        tmp_path_factory.mktemp("described"),
        upstream.base_url,
        extra_env={
            **SCRIPTED_FAILURES,
            "GATEWAY_MAX_BODY_BYTES": str(MAX_BODY),
            "GATEWAY_UPSTREAM_FIRST_BYTE_TIMEOUT": str(FIRST_BYTE_TIMEOUT),
        },
    ) as gw:
        keys = [
            gw.create_key("described"),
            gw.create_key("limited", "--models", "gpt-4o"),
            gw.create_key("metered", "--rpm", "1000", "--tpm", "10000000"),
            gw.create_key("one-rpm", "--rpm", "1", "--tpm", "10000000"),
            gw.create_key("budget", "--budget-tokens", "1", "--budget-period", "day"),
        ]
        for key in keys:
            gw.wait_for_key(key)
        yield World(gw, *keys, down_url, limiter_down, upstream)


CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
KEYS = "/v1/admin/keys"
USAGE = "/v1/admin/usage"
BIG_HEADER = {"x-big": "a" * 40_000}


def _chat(w: World, body: object = None, headers: dict | None = None, **kw) -> httpx.Response:
    return httpx.post(
        f"{w.gw.url}{CHAT}",
        json=chat_body() if body is None else body,
        headers=w.auth() if headers is None else headers,
        timeout=30,
        **kw,
    )


def _response_body(model: str = "gpt-4o", **extra: object) -> dict:
    return {"model": model, "input": "Hello", **extra}


def _respond(w: World, body: object = None, headers: dict | None = None, **kw) -> httpx.Response:
    return httpx.post(
        f"{w.gw.url}{RESPONSES}",
        json=_response_body() if body is None else body,
        headers=w.auth() if headers is None else headers,
        timeout=30,
        **kw,
    )


def _respond_as(key: str, body: dict | None = None) -> Callable[[World], httpx.Response]:
    return lambda w: _respond(w, body, w.auth(getattr(w, key)))


def _respond_limiter_down(w: World) -> httpx.Response:
    gw, key = w.limiter_down
    return httpx.post(
        f"{gw.url}{RESPONSES}",
        json=_response_body(),
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def _second(first: Callable[[World], httpx.Response]) -> Callable[[World], httpx.Response]:
    """The answer to the same request made twice: the first one uses up a limit."""

    def trigger(w: World) -> httpx.Response:
        first(w)
        return first(w)

    return trigger


def _as(key: str, body: dict | None = None) -> Callable[[World], httpx.Response]:
    return lambda w: _chat(w, body, w.auth(getattr(w, key)))


def _limiter_down(w: World) -> httpx.Response:
    gw, key = w.limiter_down
    return httpx.post(
        f"{gw.url}{CHAT}", json=chat_body(), headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def _queued(reply: Reply, then: Callable[[World], httpx.Response]) -> Callable:
    def trigger(w: World) -> httpx.Response:
        w.upstream.enqueue(reply)  # type: ignore[attr-defined]
        return then(w)

    return trigger


def _get(path: str, auth: str | None = "key") -> Callable[[World], httpx.Response]:
    def trigger(w: World) -> httpx.Response:
        headers = {
            "key": w.auth(),
            "limited": w.auth(w.limited_key),
            None: {},
            "wrong": w.auth("sk-wrong-key-0000000000"),
        }[auth]
        return httpx.get(f"{w.gw.url}{path}", headers=headers, timeout=30)

    return trigger


def _down(method: str, path: str) -> Callable[[World], httpx.Response]:
    def trigger(w: World) -> httpx.Response:
        admin = path.startswith("/v1/admin/")
        headers = {"authorization": f"Bearer {ADMIN_KEY}"} if admin else w.auth()
        return httpx.request(
            method, f"{w.down_url}{path}", json=chat_body(), headers=headers, timeout=30
        )

    return trigger


def _big_header(method: str, path: str) -> Callable[[World], httpx.Response]:
    def trigger(w: World) -> httpx.Response:
        return httpx.request(
            method,
            f"{w.gw.url}{path}",
            json=chat_body(),
            headers={**w.auth(), **BIG_HEADER},
            timeout=30,
        )

    return trigger


def _admin_path(path: str) -> str:
    """An admin route: a path under /v1/admin/keys ("", "/{name}", …) or a whole one."""
    return path if path.startswith("/v1/") else f"{KEYS}{path}"


def _fresh_name() -> str:
    return f"admin-{uuid.uuid4().hex[:8]}"


def _admin_call(
    w: World,
    method: str,
    path: str,
    body: object = None,
    auth: str | None = "admin",
    *,
    gateway: Gateway | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    token = {"admin": ADMIN_KEY, "client": w.key, "wrong": f"{ADMIN_KEY}x", None: None}[auth]
    headers = {} if token is None else {"authorization": f"Bearer {token}"}
    return httpx.request(
        method,
        f"{(gateway or w.gw).url}{_admin_path(path)}",
        json=body,
        params=params,
        headers=headers,
        timeout=30,
    )


def _admin(
    method: str,
    path: str = "",
    body: dict | None = None,
    auth: str | None = "admin",
    *,
    admin_off: bool = False,
    revoked: bool = False,
    params: dict[str, str] | None = None,
) -> Callable[[World], httpx.Response]:
    """An admin API request. `{name}` in `path` is a key made for it (and revoked first, if
    asked); a body `name` of "{name}" is a fresh name."""

    def trigger(w: World) -> httpx.Response:
        name = _fresh_name()
        if "{name}" in path:
            assert _admin_call(w, "POST", "", {"name": name}).status_code == 200
        if revoked:
            assert _admin_call(w, "DELETE", f"/{name}").status_code == 200
        if body is not None and body.get("name") == "{name}":
            payload: dict | None = {**body, "name": name}
        else:
            payload = body
        gateway = w.limiter_down[0] if admin_off else None
        return _admin_call(
            w, method, path.format(name=name), payload, auth, gateway=gateway, params=params
        )

    return trigger


def _admin_refusals(method: str, path: str, body: dict | None = None) -> list[Scenario]:
    """One admin operation's 401, its 403s (a client key, a wrong admin key, a gateway whose
    admin API is off), its 503 (backend down) and a 431; aimed at the World's own key, which
    must survive them all."""
    operation_id = {
        (op_method, op_path): operation_id
        for operation_id, (op_path, op_method, _) in gateway_openapi.operations().items()
    }[method.lower(), _admin_path(path)]
    path = path.format(name="described")
    return [
        Scenario(operation_id, 401, _admin(method, path, body, None)),
        Scenario(operation_id, 403, _admin(method, path, body, "client")),
        Scenario(operation_id, 403, _admin(method, path, body, "wrong")),
        Scenario(operation_id, 403, _admin(method, path, body, admin_off=True)),
        Scenario(operation_id, 503, _down(method, _admin_path(path))),
        Scenario(operation_id, 431, _big_header(method, _admin_path(path))),
    ]


def _usage_of_a_request(w: World) -> httpx.Response:
    """Totals with every field: those of a chat request, once the ledger has it."""
    assert _chat(w).status_code == 200
    params = {"since": "2025-01-31", "group_by": "key,model,day"}
    deadline = time.monotonic() + 30
    while True:
        response = _admin_call(w, "GET", USAGE, params=params)
        if response.status_code != 200 or response.json()["data"]:
            return response
        assert time.monotonic() < deadline, "the ledger never had the request"
        time.sleep(0.1)


# The routes beside chat (RouteService): path and a request body each (gpt-4o serves every
# route: the world's config limits no model to some routes).
ROUTE_BODIES: dict[str, tuple[str, dict[str, object]]] = {
    "createCompletion": ("/v1/completions", {"model": "gpt-4o", "prompt": "Say hi"}),
    "createEmbedding": ("/v1/embeddings", {"model": "gpt-4o", "input": ["a", "b"]}),
    "createImage": ("/v1/images/generations", {"model": "gpt-4o", "prompt": "a cat"}),
    "createSpeech": ("/v1/audio/speech", {"model": "gpt-4o", "input": "Hi", "voice": "alloy"}),
    "createTranscription": ("/v1/audio/transcriptions", {"model": "gpt-4o"}),
}


def _route(
    operation_id: str, auth: str | None = "key", *, content: bytes | None = None, **fields: object
) -> Callable[[World], httpx.Response]:
    """A request to a route beside chat: its body with `fields` changed (None drops one), as
    JSON or, for transcriptions, a multipart upload; `content` sends those bytes instead."""
    path, body = ROUTE_BODIES[operation_id]
    payload = {name: value for name, value in {**body, **fields}.items() if value is not None}

    def trigger(w: World) -> httpx.Response:
        headers = {
            "key": w.auth(),
            "limited": w.auth(w.limited_key),
            None: {},
        }[auth]
        url = f"{w.gw.url}{path}"
        if content is not None:
            return httpx.post(url, content=content, headers=headers, timeout=30)
        if operation_id == "createTranscription":
            form = {name: str(value) for name, value in payload.items()}
            files = {"file": ("a.wav", b"RIFF fake audio", "audio/wav")}
            return httpx.post(url, data=form, files=files, headers=headers, timeout=30)
        return httpx.post(url, json=payload, headers=headers, timeout=30)

    return trigger


def _route_scenarios(operation_id: str) -> list[Scenario]:
    path = ROUTE_BODIES[operation_id][0]
    bad = (
        _route(operation_id, model=None)
        if operation_id == "createTranscription"
        else _route(operation_id, content=b'{"model": ')
    )
    return [
        Scenario(operation_id, 200, _route(operation_id)),
        Scenario(operation_id, 400, bad),
        Scenario(operation_id, 401, _route(operation_id, None)),
        Scenario(operation_id, 403, _route(operation_id, "limited", model="o3")),
        Scenario(operation_id, 404, _route(operation_id, model="no-such-model")),
        Scenario(
            operation_id,
            429,
            _queued(Reply.json(429, headers={"Retry-After": "2"}), _route(operation_id)),
            frozenset({"retry-after"}),
        ),
        Scenario(operation_id, 502, _queued(Reply.json(500), _route(operation_id))),
        Scenario(operation_id, 503, _down("POST", path)),
        Scenario(operation_id, 431, _big_header("POST", path)),
    ]


class Scenario(NamedTuple):
    operation_id: str
    status: int
    # How to make the live gateway answer it.
    trigger: Callable[[World], httpx.Response]
    # Declared headers the answer must carry (beyond the required ones).
    headers: frozenset[str] = frozenset()


LIMIT_429_HEADERS = frozenset({"retry-after", "retry-after-ms"})
SCENARIOS: list[Scenario] = [
    Scenario("createChatCompletion", 200, lambda w: _chat(w)),
    Scenario("createChatCompletion", 200, _as("metered_key"), RATE_LIMIT_HEADERS),
    Scenario(
        "createChatCompletion",
        200,
        _as("metered_key", chat_body(stream=True)),
        RATE_LIMIT_HEADERS,
    ),
    Scenario("createChatCompletion", 200, lambda w: _chat(w, chat_body(stream=True))),
    Scenario(
        "createChatCompletion",
        200,
        _queued(
            Reply.stream([make_chunk({"content": "hi"}, include_usage=True)]),
            lambda w: _chat(w, chat_body(stream=True, stream_options={"include_usage": True})),
        ),
    ),
    Scenario("createChatCompletion", 400, lambda w: _chat(w, content=b'{"model": ')),
    Scenario("createChatCompletion", 400, lambda w: _chat(w, {"model": "gpt-4o", "messages": []})),
    Scenario("createChatCompletion", 401, lambda w: _chat(w, headers={})),
    Scenario(
        "createChatCompletion", 403, lambda w: _chat(w, headers=w.auth("sk-wrong-key-0000000000"))
    ),
    Scenario("createChatCompletion", 403, _as("limited_key", chat_body("o3"))),
    Scenario("createChatCompletion", 404, lambda w: _chat(w, chat_body("no-such-model"))),
    Scenario("createChatCompletion", 413, lambda w: _chat(w, chat_body(pad="x" * MAX_BODY))),
    Scenario(
        "createChatCompletion",
        429,
        _queued(Reply.json(429, headers={"Retry-After": "2"}), _chat),
        frozenset({"retry-after"}),
    ),
    Scenario(
        "createChatCompletion",
        429,
        _second(_as("one_rpm_key")),
        LIMIT_429_HEADERS | RATE_LIMIT_HEADERS,
    ),
    Scenario(
        "createChatCompletion",
        429,
        _second(_as("budget_key")),
        LIMIT_429_HEADERS | {"x-should-retry"},
    ),
    Scenario("createChatCompletion", 502, _queued(Reply.json(500), _chat)),
    Scenario("createChatCompletion", 503, _down("POST", CHAT)),
    Scenario("createChatCompletion", 503, _limiter_down, frozenset({"retry-after"})),
    Scenario("createChatCompletion", 504, _queued(Reply.hang(FIRST_BYTE_TIMEOUT + 5), _chat)),
    Scenario("createChatCompletion", 431, _big_header("POST", CHAT)),
    Scenario("createResponse", 200, lambda w: _respond(w)),
    Scenario("createResponse", 200, _respond_as("metered_key"), RATE_LIMIT_HEADERS),
    Scenario(
        "createResponse",
        200,
        _respond_as("metered_key", _response_body(stream=True)),
        RATE_LIMIT_HEADERS,
    ),
    Scenario("createResponse", 400, lambda w: _respond(w, content=b'{"model": ')),
    Scenario(
        "createResponse",
        400,
        lambda w: _respond(w, _response_body(tools=[{"type": "web_search"}])),
    ),
    Scenario("createResponse", 401, lambda w: _respond(w, headers={})),
    Scenario(
        "createResponse", 403, lambda w: _respond(w, headers=w.auth("sk-wrong-key-0000000000"))
    ),
    Scenario("createResponse", 403, _respond_as("limited_key", _response_body("o3"))),
    Scenario("createResponse", 404, lambda w: _respond(w, _response_body("no-such-model"))),
    Scenario("createResponse", 413, lambda w: _respond(w, _response_body(pad="x" * MAX_BODY))),
    Scenario(
        "createResponse",
        429,
        _queued(Reply.json(429, headers={"Retry-After": "2"}), _respond),
        frozenset({"retry-after"}),
    ),
    Scenario(
        "createResponse",
        429,
        _second(_respond_as("one_rpm_key")),
        LIMIT_429_HEADERS | RATE_LIMIT_HEADERS,
    ),
    Scenario(
        "createResponse",
        429,
        _second(_respond_as("budget_key")),
        LIMIT_429_HEADERS | {"x-should-retry"},
    ),
    Scenario("createResponse", 502, _queued(Reply.json(500), _respond)),
    Scenario("createResponse", 503, _down("POST", RESPONSES)),
    Scenario("createResponse", 503, _respond_limiter_down, frozenset({"retry-after"})),
    Scenario("createResponse", 504, _queued(Reply.hang(FIRST_BYTE_TIMEOUT + 5), _respond)),
    Scenario("createResponse", 431, _big_header("POST", RESPONSES)),
    Scenario("listModels", 200, _get("/v1/models")),
    Scenario("listModels", 401, _get("/v1/models", None)),
    Scenario("listModels", 403, _get("/v1/models", "wrong")),
    Scenario("listModels", 503, _down("GET", "/v1/models")),
    Scenario("listModels", 431, _big_header("GET", "/v1/models")),
    Scenario("retrieveModel", 200, _get("/v1/models/gpt-4o")),
    Scenario("retrieveModel", 401, _get("/v1/models/gpt-4o", None)),
    Scenario("retrieveModel", 403, _get("/v1/models/o3", "limited")),
    Scenario("retrieveModel", 404, _get("/v1/models/no/such-model")),
    Scenario("retrieveModel", 503, _down("GET", "/v1/models/gpt-4o")),
    Scenario("retrieveModel", 431, _big_header("GET", "/v1/models/gpt-4o")),
    Scenario("getHealth", 200, _get("/healthz", None)),
    Scenario("getHealth", 503, _down("GET", "/healthz")),
    Scenario("getHealth", 431, _big_header("GET", "/healthz")),
    Scenario("getReadiness", 200, _get("/readyz", None)),
    Scenario("getReadiness", 503, _down("GET", "/readyz")),
    Scenario("getReadiness", 431, _big_header("GET", "/readyz")),
    Scenario("createKey", 200, _admin("POST", "", {"name": "{name}", "expires_in": "30d"})),
    Scenario("createKey", 400, _admin("POST", "", {"name": "has space"})),
    Scenario("createKey", 400, _admin("POST", "", {"name": "{name}", "expires_in": 2**40})),
    Scenario("createKey", 409, _second(_admin("POST", "", {"name": "taken"}))),
    *_admin_refusals("POST", "", {"name": "never-made"}),
    Scenario("listKeys", 200, _admin("GET")),
    *_admin_refusals("GET", ""),
    Scenario("getKey", 200, _admin("GET", "/{name}")),
    Scenario("getKey", 200, _admin("GET", "/described")),  # made by the CLI
    Scenario("getKey", 404, _admin("GET", "/nobody")),
    *_admin_refusals("GET", "/{name}"),
    Scenario("updateKey", 200, _admin("PATCH", "/{name}", {"rpm": 5, "models": ["gpt-4o"]})),
    Scenario("updateKey", 400, _admin("PATCH", "/{name}", {"rpm": 0})),
    Scenario("updateKey", 404, _admin("PATCH", "/nobody", {"rpm": 5})),
    *_admin_refusals("PATCH", "/{name}", {"rpm": 1}),
    Scenario("revokeKey", 200, _admin("DELETE", "/{name}")),
    Scenario("revokeKey", 404, _admin("DELETE", "/{name}", revoked=True)),
    *_admin_refusals("DELETE", "/{name}"),
    Scenario("getKeyUsage", 200, _admin("GET", "/described/usage")),
    Scenario("getKeyUsage", 200, _admin("GET", "/{name}/usage", params={"since": "2025-01-31"})),
    Scenario("getKeyUsage", 400, _admin("GET", "/{name}/usage", params={"since": "soon"})),
    Scenario("getKeyUsage", 404, _admin("GET", "/nobody/usage")),
    *_admin_refusals("GET", "/{name}/usage"),
    Scenario("getUsage", 200, _admin("GET", USAGE)),
    Scenario("getUsage", 200, _usage_of_a_request),
    Scenario("getUsage", 400, _admin("GET", USAGE, params={"group_by": "user"})),
    *_admin_refusals("GET", USAGE),
    *(scenario for operation_id in ROUTE_BODIES for scenario in _route_scenarios(operation_id)),
    Scenario("createCompletion", 200, _route("createCompletion", stream=True)),
    Scenario("createEmbedding", 200, _route("createEmbedding", encoding_format="base64")),
    Scenario("createTranscription", 200, _route("createTranscription", response_format="text")),
]


def check_answer(operation_id: str, response: httpx.Response) -> set[str]:
    """The answer is one the description declares: status, content type, body and headers.
    Returns the declared headers it carries."""
    status = response.status_code
    headers = gateway_openapi.validate_headers(operation_id, status, response.headers)
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    if media_type == "text/event-stream" and operation_id == "createResponse":
        events = [
            dict(line.split(": ", 1) for line in block.splitlines())
            for block in response.text.split("\n\n")
            if block.strip() and not block.startswith(":")
        ]
        assert json.loads(events[-1]["data"])["type"] == "response.completed"
        for event in events:
            gateway_openapi.validate_body(operation_id, status, media_type, event)
            assert json.loads(event["data"])["type"] == event["event"]
        return headers
    if media_type == "text/event-stream":
        payloads = sse_payloads(response.text)
        assert payloads[-1] == "[DONE]"
        for payload in payloads:
            gateway_openapi.validate_body(operation_id, status, media_type, {"data": payload})
        if operation_id == "createChatCompletion":
            for payload in payloads[:-1]:
                gateway_openapi.validate_schema(
                    "CreateChatCompletionStreamResponse", json.loads(payload)
                )
        return headers
    if media_type.startswith("audio/"):
        assert response.content
        encoded = base64.b64encode(response.content).decode()
        gateway_openapi.validate_body(operation_id, status, media_type, encoded)
        return headers
    if media_type == "text/plain":
        gateway_openapi.validate_body(operation_id, status, media_type, response.text)
        return headers
    body = response.json()
    gateway_openapi.validate_body(operation_id, status, media_type, body)
    if status >= 400:
        assert body["error"]["code"] == status
    return headers


@pytest.mark.parametrize(
    "scenario",
    SCENARIOS,
    ids=[f"{scenario.operation_id}-{scenario.status}-{i}" for i, scenario in enumerate(SCENARIOS)],
)
def test_live_answer_matches_the_description(world, scenario: Scenario) -> None:
    response = scenario.trigger(world)
    assert response.status_code == scenario.status, response.text[:500]
    carried = check_answer(scenario.operation_id, response)
    assert scenario.headers <= carried, (scenario.headers - carried, dict(response.headers))


def test_refused_admin_calls_left_the_key_they_aimed_at_alone(world) -> None:
    record = _admin_call(world, "GET", "/described").json()
    assert record["status"] == "active" and "rpm" not in record, record


def test_every_declared_status_is_exercised() -> None:
    declared = {
        (operation_id, key)
        for operation_id, (_, _, operation) in gateway_openapi.operations().items()
        for key in operation["responses"]
    }
    exercised = {
        (
            operation_id,
            gateway_openapi.response_for(gateway_openapi.operations()[operation_id][2], status)[0],
        )
        for operation_id, status, *_ in SCENARIOS
    }
    assert declared == exercised


def test_every_declared_header_is_exercised() -> None:
    declared = {
        (operation_id, status, header)
        for operation_id, status, *_ in SCENARIOS
        for header in gateway_openapi.declared_headers(operation_id, status)
    }
    exercised = {
        (scenario.operation_id, scenario.status, header)
        for scenario in SCENARIOS
        for header in scenario.headers
    }
    assert declared == exercised


def _http_routes() -> set[tuple[str, str]]:
    """(method, path template) of every google.api.http binding in the protos."""
    routes = set()
    for file in (
        chat_pb2.DESCRIPTOR,
        routes_pb2.DESCRIPTOR,
        status_pb2.DESCRIPTOR,
        keys_pb2.DESCRIPTOR,
    ):
        for service in file.services_by_name.values():
            for method in service.methods:
                rule = method.GetOptions().Extensions[annotations_pb2.http]
                verb = rule.WhichOneof("pattern")
                if verb:
                    path = getattr(rule, verb).replace("=**}", "}")
                    routes.add((verb, path))
    return routes


def test_every_http_route_is_described_and_nothing_else() -> None:
    described = {(method, path) for path, method, _ in gateway_openapi.operations().values()}
    assert _http_routes() == described


def test_description_is_valid_openapi_3_1() -> None:
    schema = schemathesis.openapi.from_path(str(gateway_openapi.SPEC_PATH))
    schema.validate()
    assert gateway_openapi.spec()["openapi"] == "3.1.0"
    assert "$ref: http" not in gateway_openapi.SPEC_PATH.read_text()  # self-contained


@pytest.mark.skipif(not openapi_schema.spec_available(), reason="OpenAI's spec not present")
def test_vendored_openai_schemas_are_current() -> None:
    assert gateway_openapi.SPEC_PATH.read_text() == gateway_openapi.current_text(), (
        "openapi/gateway.yaml's copy of OpenAI's schemas is stale: "
        "python tests/gateway_openapi.py --write"
    )
