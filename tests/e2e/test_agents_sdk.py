"""The OpenAI Agents SDK, as its users start it (its default model, which speaks the
Responses API, and its default model settings), runs an agent with a function tool against
the gateway through the bridge: the fake upstream has only chat completions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fake_upstream import DEFAULT_CONTENT, DEFAULT_TOOL_CALL_ID, FakeUpstream
from gateway_process import SCRIPTED_FAILURES, Gateway
from openai import AsyncOpenAI

agents = pytest.importorskip("agents", reason="openai-agents (the test extra) is not installed")
default_models = pytest.importorskip("agents.models")

MODEL = default_models.get_default_model()


@pytest.fixture(scope="module")
def agents_gateway(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    # The SDK's default model in the catalog, beside one of the guide's.
    gateway = Gateway(
        tmp_path_factory.mktemp("agents"),
        upstream.base_url,
        extra_env={**SCRIPTED_FAILURES, "GATEWAY_MODELS": f"gpt-4o,{MODEL}"},
    ).start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="module")
def agents_key(agents_gateway: Gateway) -> str:
    return agents_gateway.wait_for_key(agents_gateway.create_key("agent"))


def run_agent(gateway: Gateway, key: str, *, streamed: bool) -> tuple[str, list[dict[str, Any]]]:
    """The agent's final output and the tool calls it made."""
    calls: list[dict[str, Any]] = []

    @agents.function_tool
    def get_weather(location: str) -> str:
        """Current weather for a city."""
        calls.append({"location": location})
        return f"Sunny, 21 C in {location}"

    async def run() -> str:
        client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
        agents.set_default_openai_client(client, use_for_tracing=False)
        agents.set_tracing_disabled(True)
        agent = agents.Agent(
            name="Weather", instructions="Answer with the weather.", tools=[get_weather]
        )
        try:
            if streamed:
                result = agents.Runner.run_streamed(agent, "What is the weather in Paris?")
                async for _ in result.stream_events():
                    pass
            else:
                result = await agents.Runner.run(agent, "What is the weather in Paris?")
            return str(result.final_output)
        finally:
            await client.close()

    return asyncio.run(run()), calls


@pytest.mark.parametrize("streamed", [False, True])
def test_an_agent_with_a_function_tool_runs_through_the_bridge(
    agents_gateway: Gateway, agents_key: str, upstream: FakeUpstream, streamed: bool
) -> None:
    output, calls = run_agent(agents_gateway, agents_key, streamed=streamed)
    assert output == DEFAULT_CONTENT
    assert calls == [{"location": "Paris"}]
    # Two chat completions: the tool call, then the answer made with its result.
    chats = [request for request in upstream.requests if request.path == "/v1/chat/completions"]
    assert len(chats) == 2, [request.path for request in upstream.requests]
    first, second = (json.loads(request.body) for request in chats)
    assert first["model"] == MODEL
    assert first["messages"][0] == {"role": "system", "content": "Answer with the weather."}
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert first.get("stream", False) is streamed
    assert second["messages"][-1] == {
        "role": "tool",
        "tool_call_id": DEFAULT_TOOL_CALL_ID,
        "content": "Sunny, 21 C in Paris",
    }
