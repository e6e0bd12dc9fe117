"""The Response object the bridge answers with: the request's settings echoed as OpenAI echoes
them, the output items, and the usage in the Responses API's terms. Pure."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import tool_names

Json = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


@dataclass(frozen=True, slots=True)
class ResponseShape:
    """What every state of one response (created, in progress, completed) shares."""

    id: str
    created_at: int
    echo: Json
    # The request's namespaces: a call of one of their functions comes back split.
    namespaces: frozenset[str] = frozenset()

    @classmethod
    def of(cls, request: Mapping[str, Any]) -> ResponseShape:
        tools = [tool for tool in request.get("tools") or () if isinstance(tool, dict)]
        text = as_object(request.get("text"))
        reasoning = as_object(request.get("reasoning"))
        echo: Json = {
            "model": request.get("model"),
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "parallel_tool_calls": request.get("parallel_tool_calls", True) is not False,
            "previous_response_id": None,
            "reasoning": {
                "effort": reasoning.get("effort"),
                "summary": reasoning.get("summary") or reasoning.get("generate_summary"),
            },
            # Nothing is kept, whatever the default says: the answer tells the truth.
            "store": False,
            "temperature": request.get("temperature", 1.0),
            "text": {"format": text.get("format") or {"type": "text"}},
            "tool_choice": request.get("tool_choice") or "auto",
            "tools": [
                {"strict": True, "parameters": None, **tool}
                if tool.get("type") == "function"
                else tool
                for tool in tools
            ],
            "top_p": request.get("top_p", 1.0),
            "truncation": "disabled",
            "metadata": request.get("metadata") or {},
        }
        if request.get("user") is not None:
            echo["user"] = request["user"]
        namespaces = frozenset(
            tool["name"]
            for tool in tools
            if tool.get("type") == "namespace" and isinstance(tool.get("name"), str)
        )
        return cls(new_id("resp"), int(time.time()), echo, namespaces)

    def call_item(
        self, item_id: str, call_id: str, chat_name: str, arguments: str, status: str
    ) -> Json:
        """The function_call item of a call chat completions made to `chat_name`."""
        namespace, name = tool_names.split(chat_name, self.namespaces)
        item = function_call_item(item_id, call_id, name, arguments, status)
        if namespace is not None:
            item["namespace"] = namespace
        return item

    def response(
        self,
        status: str,
        output: list[Json] | None = None,
        usage: Json | None = None,
        *,
        incomplete: str | None = None,
        error: Json | None = None,
    ) -> Json:
        body: Json = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            **self.echo,
            "output": output or [],
        }
        # Absent, not null, until known: the description allows no null usage.
        if usage is not None:
            body["usage"] = usage
        if status == "completed":
            body["completed_at"] = int(time.time())
        return body


def response_usage(usage: Any) -> Json | None:
    """A chat completion's usage in the Responses API's terms; None when it has none."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _count(prompt_details.get("cached_tokens")),
            "cache_write_tokens": 0,
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": _count(completion_details.get("reasoning_tokens"))
        },
        "total_tokens": _count(usage.get("total_tokens")) or prompt + completion,
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def message_item(item_id: str, content: list[Json], status: str) -> Json:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def text_part(text: str) -> Json:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_part(refusal: str) -> Json:
    return {"type": "refusal", "refusal": refusal}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> Json:
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def from_completion(shape: ResponseShape, completion: Mapping[str, Any]) -> Json:
    """The Response for a whole chat completion (its first choice: the bridge asks for one)."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    incomplete = INCOMPLETE_REASONS.get(choice.get("finish_reason") or "")
    status = "incomplete" if incomplete else "completed"
    output: list[Json] = []
    text, refusal = message.get("content"), message.get("refusal")
    content = [text_part(text)] if text else []
    content += [refusal_part(refusal)] if refusal else []
    if content:
        output.append(message_item(new_id("msg"), content, status))
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        output.append(
            shape.call_item(
                new_id("fc"),
                call.get("id") or new_id("call"),
                function.get("name") or "",
                function.get("arguments") or "",
                "completed",
            )
        )
    return shape.response(
        status, output, response_usage(completion.get("usage")), incomplete=incomplete
    )


def as_object(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: for reading optional members."""
    return value if isinstance(value, dict) else {}
