"""A chat completions stream turned into the Responses API's typed events. Pure.

The chunks' deltas open, grow and close output items in the order they come: a message (its
text and refusal parts) and a function call per tool call index. `response.completed` (or
`response.incomplete` when the upstream stopped at the token limit) carries the whole
Response, as OpenAI's last event does, with the usage of the stream's usage chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .response_object import (
    INCOMPLETE_REASONS,
    Json,
    ResponseShape,
    message_item,
    new_id,
    refusal_part,
    response_usage,
    text_part,
)


def event_frame(event: Mapping[str, Any]) -> bytes:
    """One SSE event, named like its type, as the Responses API writes them."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


@dataclass(frozen=True, slots=True)
class _PartKind:
    """How one kind of a message's content part streams: the part, its delta and done
    events, the done event's member that holds the whole, and what else the events carry."""

    make: Callable[[str], Json]
    delta_event: str
    done_event: str
    member: str
    extra: Mapping[str, Any]


# The kinds of content part a chat delta gives, in the order their done events go out.
_PART_KINDS = {
    "text": _PartKind(
        text_part,
        "response.output_text.delta",
        "response.output_text.done",
        "text",
        {"logprobs": []},
    ),
    "refusal": _PartKind(
        refusal_part, "response.refusal.delta", "response.refusal.done", "refusal", {}
    ),
}


@dataclass
class _Message:
    id: str
    index: int
    # Each content part's text so far, in the order the parts began: a part's content_index
    # is its place here.
    parts: dict[str, str] = field(default_factory=dict)

    def content(self) -> list[Json]:
        return [_PART_KINDS[kind].make(text) for kind, text in self.parts.items()]


@dataclass
class _Call:
    id: str
    index: int
    call_id: str
    name: str
    arguments: str = ""


@dataclass
class EventStream:
    """The events of one response, fed the upstream's chunks as parsed JSON."""

    shape: ResponseShape
    _sequence: int = 0
    _output: list[Json] = field(default_factory=list)
    _open: _Message | _Call | None = None
    _calls: dict[int, _Call] = field(default_factory=dict)
    _usage: Json | None = None
    _finish: str | None = None

    def _event(self, kind: str, **fields: Any) -> Json:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return event

    def start(self) -> list[Json]:
        return [
            self._event("response.created", response=self.shape.response("in_progress")),
            self._event("response.in_progress", response=self.shape.response("in_progress")),
        ]

    def feed(self, chunk: Mapping[str, Any]) -> list[Json]:
        events: list[Json] = []
        if chunk.get("usage") is not None:
            self._usage = response_usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._message_delta("text", delta["content"])
            if delta.get("refusal"):
                events += self._message_delta("refusal", delta["refusal"])
            for call in delta.get("tool_calls") or ():
                events += self._call_delta(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return events

    def finish(self) -> list[Json]:
        """The closing events, once the upstream's stream has ended."""
        events = self._close()
        incomplete = INCOMPLETE_REASONS.get(self._finish or "")
        if incomplete:
            response = self.shape.response(
                "incomplete", self._output, self._usage, incomplete=incomplete
            )
            return [*events, self._event("response.incomplete", response=response)]
        response = self.shape.response("completed", self._output, self._usage)
        return [*events, self._event("response.completed", response=response)]

    def fail(self, error: Mapping[str, Any]) -> list[Json]:
        """The last event of a stream that broke: the upstream's error, OpenAI-shaped."""
        inner = error.get("error")
        detail: Mapping[str, Any] = inner if isinstance(inner, dict) else error
        message = str(detail.get("message") or "The upstream failed.")
        code = detail.get("code")
        # The item cut short is in the failed response as far as it got.
        cut = self._open
        if isinstance(cut, _Message):
            self._output[cut.index] = message_item(cut.id, cut.content(), "incomplete")
        elif isinstance(cut, _Call):
            self._output[cut.index] = self.shape.call_item(
                cut.id, cut.call_id, cut.name, cut.arguments, "incomplete"
            )
        response = self.shape.response(
            "failed",
            self._output,
            self._usage,
            error={"code": "server_error", "message": message},
        )
        return [
            self._event(
                "error",
                code=None if code is None else str(code),
                message=message,
                param=detail.get("param"),
            ),
            self._event("response.failed", response=response),
        ]

    def _message_delta(self, part: str, delta: str) -> list[Json]:
        events: list[Json] = []
        message = self._open
        if not isinstance(message, _Message):
            events += self._close()
            message = _Message(new_id("msg"), len(self._output))
            self._output.append({})  # its place; filled in when it closes
            self._open = message
            events.append(
                self._event(
                    "response.output_item.added",
                    output_index=message.index,
                    item=message_item(message.id, [], "in_progress"),
                )
            )
        kind = _PART_KINDS[part]
        where = {"item_id": message.id, "output_index": message.index}
        if part not in message.parts:
            message.parts[part] = ""
            events.append(
                self._event(
                    "response.content_part.added",
                    **where,
                    content_index=list(message.parts).index(part),
                    part=kind.make(""),
                )
            )
        message.parts[part] += delta
        events.append(
            self._event(
                kind.delta_event,
                **where,
                content_index=list(message.parts).index(part),
                delta=delta,
                **kind.extra,
            )
        )
        return events

    def _call_delta(self, delta: Any) -> list[Json]:
        if not isinstance(delta, dict):
            return []
        events: list[Json] = []
        position = delta.get("index", 0)
        function = delta.get("function") or {}
        call = self._calls.get(position)
        if call is None:
            events += self._close()
            call = _Call(
                new_id("fc"),
                len(self._output),
                delta.get("id") or new_id("call"),
                function.get("name") or "",
            )
            self._calls[position] = call
            self._output.append({})
            self._open = call
            events.append(
                self._event(
                    "response.output_item.added",
                    output_index=call.index,
                    item=self.shape.call_item(call.id, call.call_id, call.name, "", "in_progress"),
                )
            )
        arguments = function.get("arguments")
        if arguments:
            call.arguments += arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=call.id,
                    output_index=call.index,
                    delta=arguments,
                )
            )
        return events

    def _close(self) -> list[Json]:
        item, self._open = self._open, None
        if isinstance(item, _Message):
            return self._close_message(item)
        if isinstance(item, _Call):
            done = self.shape.call_item(
                item.id, item.call_id, item.name, item.arguments, "completed"
            )
            self._output[item.index] = done
            return [
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=item.index,
                    name=done["name"],
                    arguments=item.arguments,
                ),
                self._event("response.output_item.done", output_index=item.index, item=done),
            ]
        return []

    def _close_message(self, message: _Message) -> list[Json]:
        events: list[Json] = []
        where = {"item_id": message.id, "output_index": message.index}
        for part, kind in _PART_KINDS.items():
            if part not in message.parts:
                continue
            text = message.parts[part]
            index = list(message.parts).index(part)
            events.append(
                self._event(
                    kind.done_event,
                    **where,
                    content_index=index,
                    **{kind.member: text},
                    **kind.extra,
                )
            )
            events.append(
                self._event(
                    "response.content_part.done", **where, content_index=index, part=kind.make(text)
                )
            )
        done = message_item(message.id, message.content(), "completed")
        self._output[message.index] = done
        events.append(
            self._event("response.output_item.done", output_index=message.index, item=done)
        )
        return events
