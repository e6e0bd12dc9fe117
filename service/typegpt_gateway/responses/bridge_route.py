"""The route `responses` as the bridge sends it: the same route to model rules, limits and
metrics as pipeline/routes.py's RESPONSES, but its body is the chat completion request the bridge
made (bridge_request.py), sent to the upstream's chat completions and metered as one."""

from __future__ import annotations

import dataclasses

from ..pipeline.request import parse_chat_request
from ..pipeline.routes import RESPONSES
from ..pipeline.usage_meter import chat_output_chars, chat_usage
from ..upstream.client import CHAT_CALL

BRIDGED = dataclasses.replace(
    RESPONSES,
    call=CHAT_CALL,
    parse=parse_chat_request,
    read_usage=chat_usage,
    count_output=chat_output_chars,
    # Its usage becomes response.completed's usage (bridge_stream.py).
    strips_usage_chunk=False,
)
