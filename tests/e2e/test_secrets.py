"""No key leaks: every error path a client or the upstream can cause, scanned for keys.

A real gateway (Envoy + gRPC server) runs with upstream keys that do not look like keys (no
`sk-` prefix, so only the exact-secret net can catch them) and Envoy logging at debug level,
the level that prints request headers. It has two upstreams (both the fake upstream): one key
from the environment, one written in its config file, and a failed attempt is retried on the
other, so the failover path logs and shapes each failure too. The fake upstream echoes both
keys, the client's key and a stack trace in every way it can. The admin API is driven through
its error paths too (no key, a client key, a wrong admin key, keys pasted into its fields, and
a gateway whose admin API is off), with an admin key that does not look like a key either.
Every response status line, header, body, gRPC detail and metadata, and in the end the whole
log file (every line of it JSON), must contain no key, nor a telling piece of one. The one
exception is by design: the answer that creates a key shows that key, once, in its body.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from urllib.parse import unquote

import grpc
import httpx
import pytest
from fake_upstream import Reply, make_chunk, make_completion
from gateway_process import ADMIN_KEY, Gateway, free_port, running
from google.protobuf import struct_pb2
from near_forms import NEAR_FORM_IDS, near_forms
from openai_shape import chat_body

from typegpt.gateway.v1 import chat_pb2, chat_pb2_grpc, keys_pb2, keys_pb2_grpc
from typegpt_gateway.upstream.retry import RETRYABLE_STATUSES

CHAT = "/v1/chat/completions"
KEYS = "/v1/admin/keys"
# Shaped like no known key format: only its registration as a secret can redact it.
PLAIN_UPSTREAM_KEY = "tgp-live-7Q2xV9sK4mW8nR3bT6yU1zA5cD0eF"
FILE_UPSTREAM_KEY = "tgp-file-3Hq8Lw1Zr5Vn0Kc7Xm2Pb9Ty4Gd6Sj"
TRACE = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app.py", line 41, in forward\n'
    f"    headers = {{'Authorization': 'Bearer {PLAIN_UPSTREAM_KEY}'}}\n"
    f"KeyError: '{FILE_UPSTREAM_KEY}'"
)
FIRST_BYTE_TIMEOUT = 2


def fragments(key: str) -> list[str]:
    """The key and pieces of it that would still give it away if a message were cut."""
    body = key.removeprefix("sk-")
    return [key, body[:16], body[-16:]]


class Scanner:
    """Collects every text a client was shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def http(self, what: str, response: httpx.Response, shows: str | None = None) -> httpx.Response:
        """Records the answer; `shows` is a key its body may hold, once, and nothing else may."""
        headers = "\n".join(f"{name}: {value}" for name, value in response.headers.multi_items())
        self.seen.append((what, f"{response.status_code} {response.reason_phrase}\n{headers}"))
        body = response.text
        if shows is not None:
            assert body.count(shows) == 1, (what, body)
            body = body.replace(shows, "<the key this answer shows>")
        self.seen.append((what, body))
        return response

    def grpc_error(self, what: str, error: grpc.RpcError) -> grpc.RpcError:
        parts = [str(error.code()), error.details() or ""]
        for key, value in (*(error.initial_metadata() or ()), *(error.trailing_metadata() or ())):
            parts.append(f"{key}: {value!r}")
        self.seen.append((what, "\n".join(parts)))
        return error

    def hits(self, secrets: list[str]) -> list[str]:
        return [
            f"{what}: {secret!r}"
            for what, text in self.seen
            for secret in secrets
            if secret in text
        ]

    def grpc_call(self, what: str, rpc: Callable[[], object]) -> None:
        try:
            rpc()
        except grpc.RpcError as error:
            self.grpc_error(what, error)
        else:
            pytest.fail(f"{what}: expected an error")


def assert_log_is_clean(log: str, secrets: list[str]) -> None:
    """Every line of the gateway's log (the server's and Envoy's) is a JSON object, and none
    holds a secret."""
    for line in log.splitlines():
        assert isinstance(json.loads(line), dict), line
    leaks = [secret for secret in secrets if secret in log]
    assert leaks == [], [line for line in log.splitlines() if any(s in line for s in leaks)][:5]


@pytest.fixture(scope="module")
def leaky(upstream, tmp_path_factory) -> Iterator[tuple[Gateway, str]]:
    workdir = tmp_path_factory.mktemp("secrets")
    config = workdir / "upstreams.yaml"
    config.write_text(
        "upstreams:\n"
        f"  - {{name: env-key, base_url: '{upstream.base_url}', api_key_env: TYPEGPT_API_KEY}}\n"
        f"  - {{name: file-key, base_url: '{upstream.base_url}', api_key: {FILE_UPSTREAM_KEY}}}\n"
    )
    with running(
        workdir,
        f"http://127.0.0.1:{free_port()}/unused",  # the config file names the upstreams
        upstream_key=PLAIN_UPSTREAM_KEY,
        extra_env={
            "GATEWAY_ENVOY_LOG_LEVEL": "debug",
            "GATEWAY_CONFIG": str(config),
            # Each retryable failure is met twice, once on each upstream, then reaches the
            # client; no cooldown outlives a scenario.
            "GATEWAY_UPSTREAM_MAX_ATTEMPTS": "2",
            "GATEWAY_UPSTREAM_COOLDOWN_AFTER": "0",
            "GATEWAY_UPSTREAM_FIRST_BYTE_TIMEOUT": str(FIRST_BYTE_TIMEOUT),
        },
    ) as gw:
        yield gw, gw.create_key("secret-client")


@pytest.fixture(scope="module")
def admin_off(upstream, tmp_path_factory) -> Iterator[tuple[Gateway, str]]:
    with running(
        tmp_path_factory.mktemp("admin-off"),
        upstream.base_url,
        admin_key=None,
        extra_env={"GATEWAY_ENVOY_LOG_LEVEL": "debug"},
    ) as gw:
        yield gw, gw.wait_for_key(gw.create_key("off-client"))


def _echo_everything(client_key: str) -> dict:
    return {
        "error": {
            "message": f"Incorrect API key provided: {PLAIN_UPSTREAM_KEY}. You sent "
            f"'Authorization: Bearer {FILE_UPSTREAM_KEY}' for client {client_key}.\n{TRACE}",
            "type": f"invalid_request_error {PLAIN_UPSTREAM_KEY}",
            "param": FILE_UPSTREAM_KEY,
            "code": "invalid_api_key",
        }
    }


def test_no_key_reaches_a_client_or_a_log_line(leaky, upstream) -> None:
    gw, client_key = leaky
    revoked_key = gw.create_key("soon-revoked")
    gw.revoke_key("soon-revoked")
    one_rpm_key = gw.wait_for_key(gw.create_key("one-rpm", "--rpm", "1"))
    wrong_key = client_key[:-6] + "XXXXXX"
    wrong_admin_key = ADMIN_KEY[:-6] + "XXXXXX"
    echo = _echo_everything(client_key)
    leak_headers = {
        "x-debug-authorization": f"Bearer {PLAIN_UPSTREAM_KEY}",
        "Retry-After": "3",
    }
    scan = Scanner()
    auth = {"authorization": f"Bearer {client_key}"}
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}

    with httpx.Client(base_url=gw.url, timeout=30) as http:

        def post(
            what: str, body: object = None, headers: dict | None = None, **kw
        ) -> httpx.Response:
            response = scan.http(
                what,
                http.post(CHAT, json=chat_body() if body is None else body, headers=headers, **kw),
            )
            # Every scripted reply was used up by this request: none is left for the next.
            assert upstream.pending_replies == 0, what
            return response

        def failing(status: int, reply: Reply) -> None:
            """`reply` for every attempt a request with that upstream status gets."""
            upstream.enqueue(*[reply] * (2 if status in RETRYABLE_STATUSES else 1))

        # Client-side failures: no key, a wrong key, a revoked key, a key pasted into fields.
        post("no key")
        post("wrong key", headers={"authorization": f"Bearer {wrong_key}"})
        post("revoked key", headers={"authorization": f"Bearer {revoked_key}"})
        post("key as model", chat_body(model=client_key), headers=auth)
        post("key as malformed body", content=f'{{"model": "{client_key}"', headers=auth)
        post(
            "key as role",
            {"model": "gpt-4o", "messages": [{"role": 5, "x": client_key}]},
            headers=auth,
        )
        scan.http("models, wrong key", http.get("/v1/models", headers={"authorization": wrong_key}))
        scan.http("model named like a key", http.get(f"/v1/models/{client_key}", headers=auth))
        scan.http("unknown path with key", http.get(f"/v1/{client_key}", headers=auth))

        # The admin API: no key, a client key, a wrong admin key, keys pasted into its fields.
        def admin_call(what: str, method: str, path: str = "", **kw) -> httpx.Response:
            kw.setdefault("headers", admin)
            return scan.http(what, http.request(method, f"{KEYS}{path}", **kw))

        admin_call("admin, no key", "GET", headers={})
        admin_call("admin, client key", "POST", json={"name": "mine"}, headers=auth)
        admin_call("admin, client key revoking", "DELETE", "/secret-client", headers=auth)
        wrong_admin = {"authorization": f"Bearer {wrong_admin_key}"}
        admin_call("admin, wrong admin key", "GET", headers=wrong_admin)
        admin_call("admin, admin key as client key", "GET", headers={"authorization": ADMIN_KEY})
        admin_call("admin, admin key as name", "GET", f"/{ADMIN_KEY}")
        admin_call("admin, client key as name", "GET", f"/{client_key}/usage")
        admin_call("admin, client key patched", "PATCH", f"/{client_key}", json={"rpm": 1})
        admin_call(
            "admin, keys as models",
            "POST",
            json={"name": "pasted", "models": [ADMIN_KEY, client_key, PLAIN_UPSTREAM_KEY]},
        )
        admin_call("admin, key as expiry", "POST", json={"name": "x", "expires_in": client_key})
        admin_call("admin, malformed body", "POST", content=f'{{"name": "{ADMIN_KEY}"')
        post("admin key on chat", headers=admin)
        # The one answer that shows a key: its creation. The key then works, and is scanned
        # for everywhere else, the log included.
        created = http.post(KEYS, json={"name": "made-by-admin"}, headers=admin)
        assert created.status_code == 200, created.text
        new_key = created.json()["key"]
        scan.http("admin create", created, shows=new_key)
        new_auth = {"authorization": f"Bearer {new_key}"}
        admin_call("admin, created key as admin key", "GET", headers=new_auth)
        post("created key, unknown model", chat_body("no-such-model"), headers=new_auth)
        failing(401, Reply.json(401, _echo_everything(new_key), headers=leak_headers))
        post("created key, upstream 401 echo", headers=new_auth)
        admin_call("admin, list after create", "GET")
        admin_call("admin, get after create", "GET", "/made-by-admin")

        # Upstream failures, each echoing the upstream key, the client key and a stack trace.
        for status in (400, 401, 403, 404, 422, 429, 500, 502, 503):
            failing(status, Reply.json(status, echo, headers=leak_headers))
            post(f"upstream {status} echo", headers=auth)
        failing(500, Reply.json(500, TRACE.encode(), headers={"content-type": "text/plain"}))
        post("upstream 500 trace", headers=auth)
        upstream.enqueue(Reply.json(200, f"<html>{TRACE}</html>", headers=leak_headers))
        post("upstream 200 not JSON", headers=auth)
        upstream.enqueue(Reply.json(200, make_completion(f"your key is {PLAIN_UPSTREAM_KEY}")))
        post("upstream 200 echoing the key", headers=auth)
        upstream.enqueue(Reply.reset(), Reply.reset())
        post("upstream reset", headers=auth)
        upstream.enqueue(Reply.hang(FIRST_BYTE_TIMEOUT + 10))
        post("upstream timeout", headers=auth)
        # The key's own rate limit.
        limited = {"authorization": f"Bearer {one_rpm_key}"}
        assert post("rate limit, first", headers=limited).status_code == 200
        assert post("rate limit, refused", headers=limited).status_code == 429
        # In-band stream failures.
        upstream.enqueue(
            Reply.stream(
                [make_chunk({"content": f"{PLAIN_UPSTREAM_KEY} {FILE_UPSTREAM_KEY}"}), echo],
                done=False,
                headers=leak_headers,
            )
        )
        post("stream error event", chat_body(stream=True), headers=auth)
        upstream.enqueue(Reply.stream([make_chunk({"content": "partial"})], done=False))
        post("stream broken", chat_body(stream=True), headers=auth)

    # Native gRPC: the typed RPCs build their own messages from upstream text.
    with grpc.insecure_channel(gw.grpc_target) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        question = chat_pb2.ChatMessage(role="user", content=struct_pb2.Value(string_value="hi"))
        params = chat_pb2.ChatCompletionParams(model="gpt-4o", messages=[question])
        metadata = (("authorization", f"Bearer {client_key}"),)

        call = scan.grpc_call
        unary = chat_pb2.CreateChatCompletionRequest(params=params)
        call(
            "grpc wrong key",
            lambda: stub.CreateChatCompletion(
                unary, metadata=(("authorization", f"Bearer {wrong_key}"),), timeout=10
            ),
        )
        # A value of the wrong type makes the protobuf parser quote it in its error.
        upstream.enqueue(Reply.json(200, {"id": "x", "created": PLAIN_UPSTREAM_KEY}))
        call(
            "grpc unparsable answer quoting the key",
            lambda: stub.CreateChatCompletion(unary, metadata=metadata, timeout=10),
        )
        upstream.enqueue(Reply.json(200, {"id": "x", "created": client_key}))
        call(
            "grpc unparsable answer quoting the client key",
            lambda: stub.CreateChatCompletion(unary, metadata=metadata, timeout=10),
        )
        upstream.enqueue(Reply.json(401, echo))
        call(
            "grpc upstream 401",
            lambda: stub.CreateChatCompletion(unary, metadata=metadata, timeout=10),
        )
        upstream.enqueue(Reply.json(400, echo))
        call(
            "grpc upstream 400",
            lambda: stub.CreateChatCompletion(unary, metadata=metadata, timeout=10),
        )
        streamed = chat_pb2.StreamChatCompletionRequest(params=params)
        upstream.enqueue(Reply.stream([make_chunk({"content": "a"}), echo], done=False))
        call(
            "grpc stream error event",
            lambda: list(stub.StreamChatCompletion(streamed, metadata=metadata, timeout=10)),
        )
        admin_stub = keys_pb2_grpc.KeyServiceStub(channel)
        for what, key in (("client", client_key), ("wrong admin", wrong_admin_key)):
            call(
                f"grpc admin, {what} key",
                lambda key=key: admin_stub.ListKeys(
                    keys_pb2.ListKeysRequest(), metadata=(("authorization", f"Bearer {key}"),)
                ),
            )
        call(
            "grpc admin, key as name",
            lambda: admin_stub.GetKey(
                keys_pb2.GetKeyRequest(name=ADMIN_KEY),
                metadata=(("authorization", f"Bearer {ADMIN_KEY}"),),
            ),
        )

    assert len(scan.seen) > 50
    secrets = [
        *fragments(PLAIN_UPSTREAM_KEY),
        *fragments(FILE_UPSTREAM_KEY),
        *fragments(client_key),
        *fragments(wrong_key),
        *fragments(revoked_key),
        *fragments(one_rpm_key),
        *fragments(new_key),
        *fragments(ADMIN_KEY),
        *fragments(wrong_admin_key),
    ]
    assert scan.hits(secrets) == []
    # The upstreams really did get (and echo) both keys: the scan had something to find.
    sent = {request.headers["authorization"] for request in upstream.requests}
    assert sent == {f"Bearer {PLAIN_UPSTREAM_KEY}", f"Bearer {FILE_UPSTREAM_KEY}"}

    log = gw.flushed_log()
    assert "debug" in log.lower() and "authorization" in log.lower()  # Envoy did log headers
    assert "KeyService/CreateKey" in log  # the admin API's requests were logged too
    assert_log_is_clean(log, secrets)


def test_admin_api_off_leaks_nothing(admin_off) -> None:
    gw, client_key = admin_off
    scan = Scanner()
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        for who, key in (("no", None), ("client", client_key), ("admin", ADMIN_KEY)):
            headers = {} if key is None else {"authorization": f"Bearer {key}"}
            for method, path in (("GET", KEYS), ("POST", KEYS), ("DELETE", f"{KEYS}/off-client")):
                response = http.request(method, path, headers=headers, json={"name": ADMIN_KEY})
                assert scan.http(f"admin off, {who} key, {method}", response).status_code == 403
    with grpc.insecure_channel(gw.grpc_target) as channel:
        stub = keys_pb2_grpc.KeyServiceStub(channel)
        scan.grpc_call(
            "grpc admin off",
            lambda: stub.ListKeys(
                keys_pb2.ListKeysRequest(), metadata=(("authorization", f"Bearer {ADMIN_KEY}"),)
            ),
        )
    secrets = [*fragments(client_key), *fragments(ADMIN_KEY)]
    assert scan.hits(secrets) == []
    log = gw.flushed_log()
    assert "admin API off" in log and "authorization" in log.lower()
    assert_log_is_clean(log, secrets)


def test_stream_answer_echoing_the_key_is_redacted(leaky, upstream) -> None:
    gw, client_key = leaky
    upstream.enqueue(
        Reply.stream([make_chunk({"content": f"keys {PLAIN_UPSTREAM_KEY} {FILE_UPSTREAM_KEY}"})])
    )
    response = httpx.post(
        f"{gw.url}{CHAT}",
        json=chat_body(stream=True),
        headers={"authorization": f"Bearer {client_key}"},
        timeout=30,
    )
    assert response.status_code == 200
    assert PLAIN_UPSTREAM_KEY not in response.text and FILE_UPSTREAM_KEY not in response.text
    first = json.loads(response.text.split("\n\n")[0].removeprefix("data: "))
    assert first["choices"][0]["delta"]["content"] == "keys [redacted] [redacted]"


# Echoes that are not the key's exact bytes but that a client decodes (or a reader reads) back
# to it: the threat model's "escaped, split and near-form echoes" (README, Security).
ESCAPED_KEY = PLAIN_UPSTREAM_KEY.replace("-", "\\u002d").replace("Q", "\\u0051")


def _chat(gw: Gateway, client_key: str, *, stream: bool = False) -> httpx.Response:
    return httpx.post(
        f"{gw.url}{CHAT}",
        json=chat_body(stream=stream),
        headers={"authorization": f"Bearer {client_key}"},
        timeout=30,
    )


def _streamed_content(response: httpx.Response) -> str:
    """The text a client assembles from a stream's content deltas, as the client decodes it."""
    text = ""
    for event in response.text.split("\n\n"):
        payload = event.removeprefix("data: ").strip()
        if payload and payload != "[DONE]":
            for choice in json.loads(payload)["choices"]:
                text += choice["delta"].get("content") or ""
    return text


def test_a_json_escaped_key_in_an_answer_is_redacted(leaky, upstream) -> None:
    gw, client_key = leaky
    completion = json.dumps(make_completion("your key is KEY, keep it")).replace("KEY", ESCAPED_KEY)
    upstream.enqueue(Reply.json(200, completion.encode()))
    answer = _chat(gw, client_key)
    assert answer.status_code == 200, answer.text
    content = answer.json()["choices"][0]["message"]["content"]
    assert content == "your key is [redacted], keep it"

    chunk = json.dumps(make_chunk({"content": "escaped KEY here"})).replace("KEY", ESCAPED_KEY)
    upstream.enqueue(Reply.stream([chunk.encode().join((b"data: ", b"\n\n"))]))
    streamed = _chat(gw, client_key, stream=True)
    assert streamed.status_code == 200, streamed.text
    assert _streamed_content(streamed) == "escaped [redacted] here"


def test_a_key_split_across_stream_chunks_is_redacted(leaky, upstream) -> None:
    gw, client_key = leaky
    cut = 13
    pieces = [
        "one ",
        f"two {PLAIN_UPSTREAM_KEY[:cut]}",
        PLAIN_UPSTREAM_KEY[cut:-3],
        f"{PLAIN_UPSTREAM_KEY[-3:]} three u",
        "p to here",
    ]
    chunks = [make_chunk({"content": piece}) for piece in pieces]
    upstream.enqueue(Reply.stream([*chunks, make_chunk({}, "stop")]))
    response = _chat(gw, client_key, stream=True)
    assert response.status_code == 200, response.text
    assert _streamed_content(response) == "one two [redacted] three up to here"
    # What is held back never outgrows a key: the first piece went out as it came.
    first = json.loads(response.text.split("\n\n")[0].removeprefix("data: "))
    assert first["choices"][0]["delta"]["content"] == "one "


@pytest.mark.parametrize("form", near_forms(PLAIN_UPSTREAM_KEY), ids=NEAR_FORM_IDS)
def test_an_error_body_with_a_near_form_of_the_key_is_not_passed(leaky, upstream, form) -> None:
    gw, client_key = leaky
    upstream.enqueue(Reply.json(400, {"error": {"message": f"bad key: {form}", "type": "x"}}))
    response = _chat(gw, client_key)
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "bad key" not in message, message
    assert not _holds_near_form(message)
    # The same text in a stream's in-band error event.
    error_event = {"error": {"message": f"bad key: {form}", "type": "server_error"}}
    upstream.enqueue(Reply.stream([make_chunk({"content": "a"}), error_event], done=False))
    streamed = _chat(gw, client_key, stream=True)
    assert "error" in streamed.text and "bad key" not in streamed.text, streamed.text
    assert not _holds_near_form(streamed.text)


def _holds_near_form(text: str) -> bool:
    squeezed = "".join(c for c in unquote(text).lower() if c.isalnum())
    return "".join(c for c in PLAIN_UPSTREAM_KEY.lower() if c.isalnum()) in squeezed
