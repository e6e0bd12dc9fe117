"""Token usage rules (pure) and the usage ledger's batching."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging

import pytest
from fake_upstream import make_chunk, make_completion, make_usage, make_usage_chunk
from hypothesis import example, given
from hypothesis import strategies as st
from test_properties import SETTINGS, json_values, valid_documents

from typegpt_gateway.errors import GatewayError
from typegpt_gateway.keystore.ledger import UsageLedger
from typegpt_gateway.keystore.store import UsageRow
from typegpt_gateway.pipeline.request import parse_chat_request
from typegpt_gateway.pipeline.usage_meter import (
    IMAGE_TOKENS,
    MAX_REPORTED_TOKENS,
    UsageMeter,
    estimate_tokens,
    rejects_stream_options,
    with_include_usage,
    with_usage_option,
)
from typegpt_gateway.usage import Usage


def _bytes(document: object) -> bytes:
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"m","messages":[]}',
        b'  \n{ "model": "m", "seed": 18446744073709551617 }',
    ],
)
def test_include_usage_is_spliced_in_and_nothing_else_changes(body):
    spliced = with_include_usage(body)
    brace = body.index(b"{") + 1
    assert spliced == body[:brace] + b'"stream_options":{"include_usage":true},' + body[brace:]
    assert json.loads(spliced)["stream_options"] == {"include_usage": True}


def test_the_request_says_what_the_client_asked_of_stream_options():
    def parse(**fields: object):
        return parse_chat_request(
            _bytes({"model": "m", "messages": [{"role": "user", "content": "abcd"}], **fields})
        )

    assert parse(stream=True).include_usage is None
    assert parse(stream=True, stream_options={"include_usage": True}).include_usage is True
    assert parse(stream=True, stream_options={"include_usage": False}).include_usage is False
    assert parse(stream=True, stream_options=None).include_usage is False
    # Every string of the body, keys included: model, m, messages, role, user, content, abcd.
    assert parse().prompt_tokens == estimate_tokens(5 + 1 + 8 + 4 + 4 + 7 + 4)


def test_the_prompt_estimate_covers_the_whole_body():
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}
    tool = {"type": "function", "function": {"name": "f", "description": "x" * 4_000}}
    schema = {"name": "s", "schema": {"properties": {"y" * 400: {"type": "string"}}}}
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}, image]}],
        "tools": [tool],
        "response_format": {"type": "json_schema", "json_schema": schema},
    }
    tokens = parse_chat_request(_bytes(body)).prompt_tokens
    # The image at its fixed count, not its 100,000 characters; 1,100 for the description
    # and the schema's property; some for the rest, keys included.
    assert IMAGE_TOKENS + 1_100 < tokens < IMAGE_TOKENS + 1_100 + 50
    assert estimate_tokens(8) == 2 and estimate_tokens(9) == 3 and estimate_tokens(0) == 0


@pytest.mark.parametrize(
    ("body", "sent"),
    [
        (
            b'{"model":"m", "stream_options" : {"include_usage": false, "x": 1} ,"n":2}',
            b'{"model":"m", "stream_options" : {"include_usage":true,"x":1} ,"n":2}',
        ),
        (
            b'{"stream\\u005foptions":null,"seed":18446744073709551617}',
            b'{"stream\\u005foptions":{"include_usage":true},"seed":18446744073709551617}',
        ),
        (
            b'{"a":{"stream_options":1},"stream_options":{}}',
            b'{"a":{"stream_options":1},"stream_options":{"include_usage":true}}',
        ),
        (b'{"stream_options":"no","model":"m"}', None),
        # Not JSON the gateway reads the way the upstream may: forwarded as it came.
        (b'\xef\xbb\xbf{"stream_options":{}}', None),
    ],
)
def test_the_clients_stream_options_are_made_to_ask_for_usage(body, sent):
    assert with_usage_option(body) == sent


@SETTINGS
@given(valid_documents, st.none() | st.dictionaries(st.text(max_size=5), json_values, max_size=3))
def test_any_object_stream_options_come_to_ask_for_usage(document, options) -> None:
    document["stream_options"] = options
    body = json.dumps(document, indent=1).encode()
    sent = with_usage_option(body)
    assert sent is not None
    assert json.loads(sent) == {
        **document,
        "stream_options": {**(options or {}), "include_usage": True},
    }
    # Only the value changed: the bytes before it are the client's.
    key = b'"stream_options": '
    assert sent[: sent.index(key)] == body[: body.index(key)]


def test_rejects_stream_options():
    assert rejects_stream_options(GatewayError(400, "Unknown parameter: 'stream_options'."))
    assert rejects_stream_options(GatewayError(422, "bad", param="stream_options"))
    assert not rejects_stream_options(GatewayError(400, "messages is required"))
    assert not rejects_stream_options(GatewayError(502, "stream_options broke us"))


def test_meter_reads_a_whole_answers_usage():
    meter = UsageMeter(100, strip_usage_chunk=False)
    meter.see_answer(_bytes(make_completion(prompt_tokens=11)))
    assert meter.usage() == Usage(11, 7)


def test_meter_strips_only_the_usage_chunk_it_asked_for():
    asked_by_gateway = UsageMeter(8, strip_usage_chunk=True)
    chunk = _bytes(make_chunk({"content": "abcdefgh"}, include_usage=True))
    usage_chunk = _bytes(make_usage_chunk(make_usage(3, 4)))
    assert asked_by_gateway.see_chunk(chunk) is True
    assert asked_by_gateway.see_chunk(usage_chunk) is False
    assert asked_by_gateway.usage() == Usage(3, 4)

    asked_by_client = UsageMeter(8, strip_usage_chunk=False)
    assert asked_by_client.see_chunk(usage_chunk) is True

    refused = UsageMeter(8, strip_usage_chunk=True)
    refused.stop_stripping()
    assert refused.see_chunk(usage_chunk) is True


def test_meter_estimates_what_was_delivered_when_no_usage_came():
    meter = UsageMeter(11, strip_usage_chunk=True)
    meter.see_chunk(_bytes(make_chunk({"role": "assistant", "content": ""})))
    meter.see_chunk(_bytes(make_chunk({"content": "x" * 10})))
    tool = {"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1}'}}]}
    meter.see_chunk(_bytes(make_chunk(tool)))
    meter.see_chunk(b"not json")
    assert meter.usage() == Usage(11, 5, estimated=True)  # (10 + 8)/4 -> 5


def test_the_output_estimate_covers_reasoning_and_tool_calls():
    meter = UsageMeter(0, strip_usage_chunk=True)
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "n" * 8}}
    meter.see_chunk(_bytes(make_chunk({"role": "assistant", "tool_calls": [call]})))
    meter.see_chunk(_bytes(make_chunk({"reasoning_content": "r" * 40})))
    meter.see_chunk(_bytes(make_chunk({"reasoning": "r" * 40})))
    # Labels (role, id, type) are not output; the tool's name and the reasoning are.
    assert meter.usage() == Usage(0, 22, estimated=True)
    answer = make_completion(None, tool_name="n" * 8)
    answer["choices"][0]["message"]["reasoning_content"] = "r" * 40
    del answer["usage"]
    whole = UsageMeter(0, strip_usage_chunk=False)
    whole.see_answer(_bytes(answer))
    arguments = answer["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert whole.usage().completion_tokens == estimate_tokens(8 + 40 + len(arguments))


# Documents shaped like answers and chunks, with any JSON value at every level.
_any = json_values
_function = _any | st.fixed_dictionaries({}, optional={"arguments": _any, "name": _any})
_call = _any | st.fixed_dictionaries({}, optional={"function": _function, "index": _any})
_delta = _any | st.fixed_dictionaries(
    {},
    optional={"content": _any, "refusal": _any, "tool_calls": _any | st.lists(_call, max_size=3)},
)
_choice = _any | st.fixed_dictionaries({}, optional={"delta": _delta, "message": _delta})
_count = _any | st.integers()
_usage = _any | st.fixed_dictionaries(
    {}, optional={"prompt_tokens": _count, "completion_tokens": _count}
)
answer_shaped = _any | st.fixed_dictionaries(
    {}, optional={"choices": _any | st.lists(_choice, max_size=3), "usage": _usage}
)


@SETTINGS
@given(st.lists(answer_shaped, min_size=1, max_size=4), st.booleans())
@example([{"choices": [{"delta": {"tool_calls": 5}}]}], True)
@example([{"choices": [{"message": {"tool_calls": True}}]}], False)
@example([{"usage": {"prompt_tokens": 2**63 - 1, "completion_tokens": 2**63 - 1}}], True)
@example([{"usage": {"prompt_tokens": True, "completion_tokens": 1}}], True)
def test_no_answer_shape_fails_the_meter(documents: list[object], stream: bool) -> None:
    meter = UsageMeter(10, strip_usage_chunk=True)
    for document in documents:
        data = json.dumps(document).encode()
        if stream:
            meter.see_chunk(data)
        else:
            meter.see_answer(data)
    usage = meter.usage()
    for count in (usage.prompt_tokens, usage.completion_tokens):
        assert type(count) is int and 0 <= count <= MAX_REPORTED_TOKENS


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": "x", "completion_tokens": 1},
        {"prompt_tokens": 1},
        {"prompt_tokens": -1, "completion_tokens": 1},
        {"prompt_tokens": True, "completion_tokens": 1},
        {"prompt_tokens": MAX_REPORTED_TOKENS + 1, "completion_tokens": 1},
        [3, 4],
        "3",
    ],
)
def test_an_unusable_usage_is_estimated_and_told_once(usage, caplog):
    meter = UsageMeter(2, strip_usage_chunk=True)
    chunk = _bytes(make_chunk({"content": "abcd"}, include_usage=True))
    usage_chunk = _bytes({**make_usage_chunk({}), "usage": usage})
    with caplog.at_level(logging.WARNING, logger="typegpt_gateway.pipeline.usage_meter"):
        assert meter.see_chunk(chunk) is True
        # Asked for by the gateway: kept from the client even though it is of no use.
        assert meter.see_chunk(usage_chunk) is False
        assert meter.see_chunk(usage_chunk) is False
    assert meter.usage() == Usage(2, 1, estimated=True)
    assert len(caplog.records) == 1 and not caplog.records[0].exc_info


def test_a_usage_null_on_each_chunk_is_no_usage_and_no_warning(caplog):
    meter = UsageMeter(2, strip_usage_chunk=True)
    with caplog.at_level(logging.WARNING, logger="typegpt_gateway.pipeline.usage_meter"):
        assert meter.see_chunk(_bytes(make_chunk({"content": "abcd"}, include_usage=True)))
    assert meter.usage() == Usage(2, 1, estimated=True) and not caplog.records


class FlakyStore:
    def __init__(self) -> None:
        self.fail = True
        self.rows: list[tuple[str, UsageRow]] = []

    def add_usage(self, entries, *, batch_id=None) -> bool:
        if self.fail:
            raise OSError("disk on fire")
        self.rows.extend(entries)
        return True


def test_ledger_batches_and_keeps_what_it_could_not_write():
    async def scenario() -> None:
        store = FlakyStore()
        ledger = UsageLedger(store, interval=3600, clock=lambda: 1_777_593_600.0)  # 2026-05-01
        ledger.record("k", "gpt-4o", Usage(10, 20), error=False, cost_micro_usd=225)
        ledger.record("k", "gpt-4o", None, error=True)
        assert store.rows == []  # nothing on the request path
        assert await ledger.flush() is False
        # No price: its cost is unknown, counted apart and not as 0; and an estimate says so.
        ledger.record("k", "o3", Usage(1, 2, estimated=True), error=False)
        store.fail = False
        assert await ledger.flush() is True
        day = dt.date(2026, 5, 1)
        assert sorted(store.rows, key=lambda entry: entry[1].model) == [
            ("k", UsageRow(day, "gpt-4o", 2, 10, 20, 1, cost_micro_usd=225)),
            ("k", UsageRow(day, "o3", 1, 1, 2, 0, unpriced_requests=1, estimated_requests=1)),
        ]
        assert await ledger.flush() is True and len(store.rows) == 2

    asyncio.run(scenario())
