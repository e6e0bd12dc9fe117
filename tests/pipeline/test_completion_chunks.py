"""A whole chat completion sent where a stream was asked becomes the stream it would have been.
Pure."""

from __future__ import annotations

import orjson

from typegpt_gateway.pipeline.answer import completion_chunks

USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_each_choice_becomes_a_delta_and_the_usage_its_own_chunk() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    whole = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 7,
        "model": "gpt-4o",
        "system_fingerprint": "fp",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi"},
                "finish_reason": "stop",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            },
        ],
        "usage": USAGE,
    }
    first, usage = map(orjson.loads, completion_chunks(orjson.dumps(whole)) or [])
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "gpt-4o"}
    assert {name: first[name] for name in head} == head and first["system_fingerprint"] == "fp"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "Hi"}
    assert first["choices"][1]["delta"]["tool_calls"] == [{"index": 0, **call}]
    assert [c["finish_reason"] for c in first["choices"]] == ["stop", "tool_calls"]
    assert usage["choices"] == [] and usage["usage"] == USAGE


def test_anything_but_a_chat_completion_is_left_alone() -> None:
    for answer in (
        b"{not json",
        b'{"object": "text_completion", "choices": []}',
        b'{"object": "chat.completion", "choices": null}',
        b"[]",
    ):
        assert completion_chunks(answer) is None, answer
    # Without a usage there is no usage chunk.
    bare = {"object": "chat.completion", "choices": []}
    assert len(completion_chunks(orjson.dumps(bare)) or []) == 1
