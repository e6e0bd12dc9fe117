"""A Responses API request turned into a chat completions request, for an upstream that has
only chat completions. Pure.

Every parameter is either carried over (renamed where chat calls it otherwise), echoed in the
Response only (`metadata`), or refused with a 400 naming it: a client is never told a feature
worked that the upstream never saw. The refusals are the features that need state the gateway
does not keep (stored responses, conversations, uploaded files) or tools only OpenAI runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import GatewayError, invalid_request
from . import tool_names

Json = dict[str, Any]

# Passed to the chat request under the same name and meaning.
_SAME = (
    "model",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "service_tier",
)
# Honoured without reaching the upstream: metadata is the client's own, echoed in the Response;
# client_metadata is the client's telemetry for OpenAI (Codex CLI sends it), of no use to a
# chat upstream; max_tool_calls bounds built-in tool calls, which the bridge refuses anyway;
# stream_options only turns obfuscation padding on or off, and the bridge never pads.
_ECHOED = ("metadata", "client_metadata", "max_tool_calls", "stream_options")
# What a reasoning summary may be asked as. Chat completions return none, and "auto" lets the
# model give none: a summary asked for is accepted, and none comes (Codex CLI always asks).
_SUMMARIES = frozenset({"auto", "concise", "detailed"})
_HANDLED = frozenset(
    (
        *_SAME,
        *_ECHOED,
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "text",
        "reasoning",
        "max_output_tokens",
        "stream",
        "store",
        "include",
        "truncation",
        "previous_response_id",
        "background",
        "conversation",
        "prompt",
        "context_management",
        "moderation",
        "top_logprobs",
        "prompt_cache_options",
    )
)
# What needs state the gateway does not keep, or a feature chat completions lacks: refused
# when set to anything but null (or false).
_STATEFUL = {
    "previous_response_id": "the gateway keeps no responses to continue from; send the whole "
    "conversation in input instead",
    "conversation": "the gateway keeps no conversations; send the whole conversation in input "
    "instead",
    "background": "background responses need a response store, which the gateway does not keep",
    "prompt": "stored prompt templates are not available through the gateway",
    "context_management": "context management is not available through the gateway",
    "moderation": "moderation of responses is not available through the gateway",
    "top_logprobs": "log probabilities are not available through the gateway's Responses bridge",
    "prompt_cache_options": "prompt cache options are not available through the gateway's "
    "Responses bridge",
}
# Include values the bridge can supply: the upstream returns no reasoning items, so there is
# no encrypted reasoning to leave out (Codex CLI always asks for it).
_INCLUDABLE = frozenset({"reasoning.encrypted_content"})
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def unsupported(param: str, why: str) -> GatewayError:
    return invalid_request(f"Unsupported parameter: '{param}': {why}.", param)


def to_chat_request(request: Mapping[str, Any]) -> Json:
    """The chat completions request for `request` (a parsed Responses request), or the 400 of
    the first parameter the bridge cannot honour."""
    for name in request:
        if name not in _HANDLED:
            raise invalid_request(f"Unknown parameter: '{name}'.", name)
    for name, why in _STATEFUL.items():
        if request.get(name) not in (None, False):
            raise unsupported(name, why)
    if request.get("store") is True:
        raise unsupported(
            "store",
            "the gateway keeps no responses (nothing could retrieve or continue one); "
            "send store: false or leave it out",
        )
    if request.get("truncation") not in (None, "disabled"):
        raise unsupported("truncation", "the gateway cannot truncate a conversation")
    for index, value in enumerate(request.get("include") or ()):
        if value not in _INCLUDABLE:
            raise unsupported(f"include[{index}]", f"the gateway cannot include {value!r}")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("Missing required parameter: 'model'.", "model")
    chat: Json = {name: request[name] for name in _SAME if request.get(name) is not None}
    chat["messages"] = _messages(request)
    tools = request.get("tools")
    if tools:
        chat["tools"] = _tools(tools)
    if request.get("tool_choice") is not None:
        chat["tool_choice"] = _tool_choice(request["tool_choice"])
    _text(request.get("text"), chat)
    _reasoning(request.get("reasoning"), chat)
    if request.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = request["max_output_tokens"]
    if request.get("stream"):
        # No stream_options: the pipeline asks for the usage as for any stream, and sends the
        # request again without the option to an upstream that refuses it.
        chat["stream"] = True
    return chat


def _messages(request: Mapping[str, Any]) -> list[Json]:
    messages: list[Json] = []
    instructions = request.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid_request("'instructions' must be a string.", "instructions")
        messages.append({"role": "system", "content": instructions})
    given = request.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
        return messages
    if not isinstance(given, list):
        raise invalid_request("'input' must be a string or a list of input items.", "input")
    for index, item in enumerate(given):
        _add_item(messages, item, f"input[{index}]")
    return messages


def _add_item(messages: list[Json], item: Any, param: str) -> None:
    if not isinstance(item, dict):
        raise invalid_request(f"'{param}' must be an object.", param)
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = _ROLES.get(str(item.get("role")))
        if role is None:
            raise invalid_request(f"Invalid value for '{param}.role'.", f"{param}.role")
        messages.append({"role": role, "content": _content(item.get("content"), param, role)})
    elif kind == "function_call":
        name = _string(item, "name", param)
        if item.get("namespace") is not None:
            name = tool_names.joined(_string(item, "namespace", param), name)
        call = {
            "id": _string(item, "call_id", param),
            "type": "function",
            "function": {"name": name, "arguments": item.get("arguments", "")},
        }
        # Calls that follow an assistant turn are that turn's: chat completions keeps a turn's
        # text and its tool calls in one message.
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and "tool_calls" not in last:
            last["tool_calls"] = [call]
        elif last is not None and last["role"] == "assistant":
            last["tool_calls"].append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        if not isinstance(output, str):
            output = _text_of(output, f"{param}.output")
        call_id = _string(item, "call_id", param)
        messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
    elif kind == "reasoning":
        # A reasoning item another upstream produced: only OpenAI can read it back.
        raise unsupported(f"{param}.type", "reasoning items cannot be passed to this upstream")
    elif kind == "item_reference":
        raise unsupported(f"{param}.type", "the gateway keeps no items to refer to")
    else:
        raise unsupported(f"{param}.type", f"input items of type {kind!r} are not supported")


def _string(item: Mapping[str, Any], name: str, param: str) -> str:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        raise invalid_request(f"Missing required parameter: '{param}.{name}'.", f"{param}.{name}")
    return value


def _content(content: Any, param: str, role: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid_request(f"'{param}.content' must be a string or a list.", f"{param}.content")
    if role != "user":
        # System and assistant turns are text in every chat upstream.
        return _text_of(content, f"{param}.content")
    return [_part(part, f"{param}.content[{index}]") for index, part in enumerate(content)]


def _part(part: Any, param: str) -> Json:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part.get("text", "")}
    if kind == "input_image":
        if part.get("image_url") is None:
            raise unsupported(f"{param}.file_id", "the gateway keeps no files; send image_url")
        image: Json = {"url": part["image_url"]}
        if part.get("detail") is not None:
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if part.get("file_data") is None:
            raise unsupported(f"{param}.file_data", "the gateway keeps no files; send file_data")
        file = {name: part[name] for name in ("file_data", "filename") if name in part}
        return {"type": "file", "file": file}
    raise unsupported(f"{param}.type", f"content parts of type {kind!r} are not supported")


def _text_of(content: Any, param: str) -> str:
    if not isinstance(content, list):
        raise invalid_request(f"'{param}' must be a string or a list of text parts.", param)
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            texts.append(part.get("text", ""))
        elif kind == "refusal":
            texts.append(part.get("refusal", ""))
        else:
            raise unsupported(
                f"{param}[{index}].type", f"only text is supported here, not {kind!r}"
            )
    return "".join(texts)


def _tools(tools: Any) -> list[Json]:
    """Chat's function tools: the request's, and each namespace's under its joined name
    (tool_names.py), none named twice."""
    if not isinstance(tools, list):
        raise invalid_request("'tools' must be a list.", "tools")
    chat: list[Json] = []
    for index, tool in enumerate(tools):
        param = f"tools[{index}]"
        if isinstance(tool, dict) and tool.get("type") == "namespace":
            namespace = _string(tool, "name", param)
            inner = tool.get("tools")
            if not isinstance(inner, list) or not inner:
                raise invalid_request(
                    f"'{param}.tools' must be a non-empty list.", f"{param}.tools"
                )
            for position, member in enumerate(inner):
                function = _function(member, f"{param}.tools[{position}]")
                function["function"]["name"] = tool_names.joined(
                    namespace, function["function"]["name"]
                )
                chat.append(function)
        else:
            chat.append(_function(tool, param))
    names = [tool["function"]["name"] for tool in chat]
    for name in names:
        if names.count(name) > 1:
            raise invalid_request(
                f"Two tools are named {name!r} (namespaces joined with __).", "tools"
            )
    return chat


def _function(tool: Any, param: str) -> Json:
    kind = tool.get("type") if isinstance(tool, dict) else None
    if kind == "custom":
        raise unsupported(
            f"{param}.type", "custom (free-form) tools are not supported; use a function"
        )
    if kind != "function":
        raise unsupported(
            f"{param}.type",
            f"built-in tools such as {kind!r} run only at OpenAI; only function tools are "
            "supported",
        )
    function: Json = {"name": _string(tool, "name", param)}
    for name in ("description", "parameters", "strict"):
        if tool.get(name) is not None:
            function[name] = tool[name]
    return {"type": "function", "function": function}


def _tool_choice(choice: Any) -> Any:
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise unsupported(
        "tool_choice",
        f"tool_choice {kind!r} is not supported; only none, auto, required or a function",
    )


def _text(text: Any, chat: Json) -> None:
    if text is None:
        return
    if not isinstance(text, dict):
        raise invalid_request("'text' must be an object.", "text")
    if text.get("verbosity") is not None:
        chat["verbosity"] = text["verbosity"]
    form = text.get("format")
    kind = form.get("type") if isinstance(form, dict) else None
    if form is None or kind == "text":
        return
    if kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        schema = {
            name: form[name]
            for name in ("name", "description", "schema", "strict")
            if form.get(name) is not None
        }
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise unsupported("text.format.type", f"text format {kind!r} is not supported")


def _reasoning(reasoning: Any, chat: Json) -> None:
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        raise invalid_request("'reasoning' must be an object.", "reasoning")
    for name in ("summary", "generate_summary"):
        if reasoning.get(name) not in (None, *_SUMMARIES):
            raise invalid_request(
                f"Invalid value for 'reasoning.{name}': expected one of auto, concise, detailed.",
                f"reasoning.{name}",
            )
    if reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
