"""Keys stay out of reprs, exception messages, tracebacks and log lines. In process, no server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import traceback
from urllib.parse import unquote

import pytest
from gateway_process import free_port
from near_forms import near_forms

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.keystore.records import KeyRecord, hash_key, new_key
from typegpt_gateway.ops.logs import json_formatter
from typegpt_gateway.redaction import (
    StreamRedactor,
    install_log_redaction,
    redact,
    redact_bytes,
    register_secret,
    register_url_password,
    withholds,
)
from typegpt_gateway.settings import Settings
from typegpt_gateway.upstream.client import CHAT_CALL, Upstream, upstream_error
from typegpt_gateway.upstream.retry import AttemptFailed
from typegpt_gateway.upstream.timeouts import Due
from typegpt_gateway.upstream.upstreams_file import ConfigError, UpstreamSpec, load_config

# Not shaped like a key: only registration can catch it.
SECRET = "tgp-unit-R4nd0mLooking7Secret9Zq"


def test_settings_repr_and_dump_hide_the_upstream_key(monkeypatch) -> None:
    monkeypatch.setenv("TYPEGPT_API_KEY", SECRET)
    settings = Settings()
    assert settings.upstream_key == SECRET
    for text in (repr(settings), str(settings), settings.model_dump_json(), str(vars(settings))):
        assert SECRET not in text


def test_key_record_repr_shows_neither_key_nor_hash() -> None:
    key = new_key()
    record = KeyRecord(name="alice", key_hash=hash_key(key), prefix=key[:10], created_at=0.0)
    text = repr(record) + str(record)
    assert key not in text and hash_key(key).hex() not in text and repr(hash_key(key)) not in text
    assert "alice" in text


def _spec(base_url: str, api_key: str | None) -> UpstreamSpec:
    return UpstreamSpec(
        name="typegpt",
        base_url=base_url,
        api_key=api_key,
        key_setting="TYPEGPT_API_KEY",
        models=None,
        priority=0,
        weight=1.0,
        model_map={},
    )


def test_upstream_repr_and_connection_errors_hide_the_key() -> None:
    async def scenario() -> AttemptFailed:
        spec = _spec(f"http://127.0.0.1:{free_port()}/v1", SECRET)
        assert SECRET not in repr(spec) + str(spec)
        upstream = Upstream(spec, connect_timeout=2)
        assert SECRET not in repr(upstream) + str(upstream)
        due = Due(asyncio.get_running_loop().time() + 10, "late")
        try:
            with pytest.raises(AttemptFailed) as caught:
                await upstream.send(
                    CHAT_CALL,
                    b'{"model": "m", "messages": []}',
                    stream=False,
                    due=due,
                )
        finally:
            await upstream.aclose()
        return caught.value

    failure = asyncio.run(scenario())
    error = failure.error
    assert error.status == 502
    cause = failure.__cause__
    assert cause is not None  # the aiohttp exception (tests/upstream/test_upstream_client.py covers
    # the ones that carry the request's headers)
    texts = [str(failure), repr(failure), str(error), repr(error), error.to_json()]
    texts += [str(cause), repr(cause), "".join(traceback.format_exception(failure))]
    for text in texts:
        assert SECRET not in text


def test_a_broken_config_file_is_reported_without_quoting_it(tmp_path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"upstreams:\n  - name: a\n    base_url: http://x\n    api_key: {SECRET}: oops\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    text = str(caught.value) + "".join(traceback.format_exception(caught.value))
    assert "not valid YAML" in text and "line 4" in text
    assert SECRET not in text


def test_database_and_redis_passwords_are_registered_where_they_are_used() -> None:
    password = "pg-Pa55w0rd%40home"  # percent-encoded "@"
    url = f"postgresql://gateway:{password}@127.0.0.1:1/keys"
    register_url_password(url)
    text = f"could not connect to {url} (password {unquote(password)})"
    assert redact(text) == (
        "could not connect to postgresql://gateway:[redacted]@127.0.0.1:1/keys "
        "(password [redacted])"
    )
    register_url_password("redis://127.0.0.1:6379/0")  # no password: nothing to register
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_gateway_error_redacts_registered_secrets_and_key_shapes() -> None:
    register_secret(SECRET)
    client_key = new_key()
    error = GatewayError(
        400, f"bad {SECRET} and {client_key} and Bearer abc123def456", f"t {SECRET}", SECRET
    )
    text = str(error) + repr(error) + error.to_json()
    assert SECRET not in text and client_key not in text and "abc123def456" not in text
    # The guide's placeholder is not a key.
    assert "Bearer YOUR_CLIENT_API_KEY" in GatewayError(401, "Bearer YOUR_CLIENT_API_KEY").message


def test_upstream_error_echo_is_scrubbed() -> None:
    body = f'{{"error": {{"message": "key {SECRET}", "param": "{SECRET}"}}}}'.encode()
    for status in (400, 401, 422, 429, 500):
        error = upstream_error(status, body, {}, secrets=(SECRET,))
        assert SECRET not in error.to_json()


def test_redact_bytes_replaces_only_registered_secrets() -> None:
    register_secret(SECRET)
    data = f'{{"content": "{SECRET} sk-abcdefghijkl"}}'.encode()
    assert redact_bytes(data) == b'{"content": "[redacted] sk-abcdefghijkl"}'
    assert redact_bytes(b"nothing here") == b"nothing here"


def test_short_secrets_are_not_registered() -> None:
    register_secret("abc")
    assert redact("abc abc") == "abc abc"


def test_log_lines_and_tracebacks_are_redacted() -> None:
    register_secret(SECRET)
    client_key = new_key()
    stream = io.StringIO()
    logger = logging.getLogger("test_redaction")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        install_log_redaction(logger)
        install_log_redaction(logger)  # idempotent
        logger.warning("upstream key %s, client key %s", SECRET, client_key)
        try:
            raise RuntimeError(f"header was Bearer {SECRET}")
        except RuntimeError:
            logger.exception("failed with %r", {"authorization": f"Bearer {client_key}"})
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "WARNING upstream key [redacted], client key sk-[redacted]" in output
    assert "Traceback" in output and "RuntimeError" in output
    assert SECRET not in output and client_key not in output


def test_json_log_lines_are_redacted_and_stay_json() -> None:
    # A quote, a backslash and non-ASCII letters: JSON writes them escaped.
    secret = 'tgp-"quoted\\back-\u00fcn\u00ef-9Zq8'
    register_secret(secret)
    client_key = new_key()
    stream = io.StringIO()
    logger = logging.getLogger("test_redaction.json")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    logger.addHandler(handler)
    try:
        install_log_redaction(logger)
        logger.warning("upstream key %s, client key %s", secret, client_key)
        envoy_line = json.dumps({"message": f"'authorization', 'Bearer {secret}'"})
        relayed = redact(envoy_line)  # Envoy's lines, relayed by serve
    finally:
        logger.removeHandler(handler)
    record = json.loads(stream.getvalue())
    assert record["message"] == "upstream key [redacted], client key sk-[redacted]"
    assert json.loads(relayed)["message"] == "'authorization', 'Bearer [redacted]'"
    for form in (secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1]):
        assert form not in stream.getvalue() and form not in relayed


def test_words_that_merely_contain_sk_dash_are_left_alone() -> None:
    assert redact("model task-manager-v2") == "model task-manager-v2"
    assert redact("key sk-proj-abc123def456") == "key sk-[redacted]"


# A byte that is not UTF-8 reaches text decoded (as Latin-1 by grpc, as U+FFFD elsewhere) or
# escaped: by repr (\xe9), by JSON (\u00e9), or both in a JSON log line (\\xe9).
ODD_BYTE_FORMS = ["\xe9", "\ufffd", "\\xe9", "\\\\xe9", "\\u00e9", "\\ufffd"]


@pytest.mark.parametrize("form", ODD_BYTE_FORMS)
@pytest.mark.parametrize(
    "halves",
    [
        ("sk-cmjBA9iDH2ByUuwDtB", "AKLEvfgkFxPq1gW9nu0eVy6ZA"),
        ("admin-SECRET-key", "for-tests-0123"),
    ],
)
def test_a_key_holding_a_byte_that_is_not_utf8_is_redacted_whole(halves, form) -> None:
    key = form.join(halves)
    for text in (f"Invalid encoding on b'Bearer {key}'", f'"authorization": "Bearer {key}"'):
        redacted = redact(text)
        assert not [half for half in halves if half in redacted], redacted
    if key.startswith("sk-"):
        redacted = redact(f"key {key}, then more")
        assert not [half for half in halves if half in redacted], redacted
        assert redacted.endswith(", then more")


def _escape_every(text: str, chars: str, spec: str = "04X") -> str:
    return "".join(f"\\u{ord(c):{spec}}" if c in chars else c for c in text)


@pytest.mark.parametrize(
    "spelling",
    [
        _escape_every(SECRET, "-"),
        _escape_every(SECRET, SECRET),  # every character, upper-case hex
        _escape_every(SECRET, "tR", "04x"),  # lower-case hex
    ],
)
def test_redact_bytes_catches_a_json_escaped_secret(spelling: str) -> None:
    register_secret(SECRET)
    data = f'{{"content": "a {spelling} b"}}'.encode()
    assert json.loads(redact_bytes(data)) == {"content": "a [redacted] b"}


def test_redact_bytes_catches_short_escapes_and_surrogates() -> None:
    secret = "tgp/unit\\🔑Zq8"
    register_secret(secret)
    spelled = json.dumps(secret, ensure_ascii=True)[1:-1].replace("/", "\\/")
    data = f'{{"content": "{spelled}"}}'.encode()
    assert json.loads(data)["content"] == secret
    assert json.loads(redact_bytes(data)) == {"content": "[redacted]"}


def test_redact_bytes_leaves_escapes_that_spell_no_secret() -> None:
    register_secret(SECRET)
    data = b'{"content": "line\\none \\u00e9t\\u00e9 tgp\\u002dunit"}'
    assert redact_bytes(data) is data


def _events(*deltas: dict, finish: int | None = None) -> list[bytes]:
    return [
        json.dumps(
            {
                "id": "c",
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "finish_reason": "stop" if n == finish else None,
                    }
                ],
            }
        ).encode()
        for n, delta in enumerate(deltas)
    ]


def _joined(sent: list[bytes], field: str = "content") -> str:
    return "".join(
        choice["delta"].get(field, "") for data in sent for choice in json.loads(data)["choices"]
    )


def test_stream_redactor_catches_a_secret_cut_across_three_events() -> None:
    register_secret(SECRET)
    redactor = StreamRedactor((SECRET,))
    events = _events(
        {"content": "x " + SECRET[:5]}, {"content": SECRET[5:20]}, {"content": SECRET[20:] + " y"}
    )
    sent = [redactor.feed(data) for data in events]
    assert redactor.flush() is None
    assert _joined(sent) == "x [redacted] y"
    # Held back: only the part of the text that could begin the secret.
    assert json.loads(sent[0])["choices"][0]["delta"]["content"] == "x "


def test_stream_redactor_sends_what_it_held_at_the_finish_or_the_end() -> None:
    register_secret(SECRET)
    finished = StreamRedactor((SECRET,))
    sent = [finished.feed(d) for d in _events({"content": "ends tgp"}, {}, finish=1)]
    assert finished.flush() is None
    assert _joined(sent) == "ends tgp"
    cut_off = StreamRedactor((SECRET,))
    sent = [cut_off.feed(d) for d in _events({"refusal": "no tgp-un"})]
    assert _joined(sent, "refusal") == "no "
    held = cut_off.flush()
    assert held is not None and _joined([held], "refusal") == "tgp-un"


def test_stream_redactor_passes_other_events_byte_for_byte() -> None:
    register_secret(SECRET)
    redactor = StreamRedactor((SECRET,))
    for data in (*_events({"role": "assistant"}, {"content": "plain words. "}), b'{"usage": {}}'):
        assert redactor.feed(data) is data
    assert redactor.flush() is None


@pytest.mark.parametrize(
    "form",
    [
        *near_forms(SECRET),
        SECRET.replace("-", "."),
        f"%25{SECRET[:3]}%2D{SECRET[4:]}",  # percent-encoded twice
    ],
)
def test_near_forms_of_a_secret_are_withheld(form: str) -> None:
    register_secret(SECRET)
    assert withholds(f"bad key: {form}!")
    body = json.dumps({"error": {"message": f"bad key: {form}", "param": form}}).encode()
    error = upstream_error(400, body, {}, secrets=())
    assert "bad key" not in error.message and error.param is None


def test_text_without_a_near_form_is_not_withheld() -> None:
    register_secret(SECRET)
    assert not withholds(f"the key {SECRET[:12]} was cut, 100% sure")
    assert not withholds("other", secrets=("short",))
    assert withholds("an UPSTREAM-KEY-1234", secrets=("upstream_key_1234",))


def test_stream_redactor_holds_back_only_what_could_begin_the_upstreams_own_key() -> None:
    # The admin key is a secret too, but the upstream never sees it: a delta that happens to
    # end like its beginning goes out at once, not when the next delta comes.
    register_secret(SECRET)
    register_secret("admin-SECRET-never-sent-upstream-0123")
    redactor = StreamRedactor((SECRET,))
    (sent,) = [redactor.feed(data) for data in _events({"content": "a"})]
    assert json.loads(sent)["choices"][0]["delta"]["content"] == "a"
    assert redactor.flush() is None


@pytest.mark.parametrize(
    "spelling",
    ["compact", "spaced", "escaped"],
)
def test_stream_redactor_holds_back_a_beginning_however_the_event_spells_it(
    spelling: str,
) -> None:
    # Events that cannot end a text with the secret's beginning pass unread; these can.
    register_secret(SECRET)
    beginning = SECRET[:6]
    (event,) = _events({"content": "x " + beginning})
    if spelling == "spaced":
        event = json.dumps(json.loads(event), indent=2).encode()
    elif spelling == "escaped":
        text = json.dumps("x " + beginning)
        event = event.replace(text.encode(), _escape_every(text, beginning).encode())
        assert b"\\u" in event
    redactor = StreamRedactor((SECRET,))
    assert _joined([redactor.feed(event)]) == "x "
    held = redactor.flush()
    assert held is not None and _joined([held]) == beginning
