"""Codex CLI, the real one (npm `@openai/codex`, pinned in tests/js), through the Responses
bridge against the fake upstream, configured as the README says: its requests (developer
instructions, function and namespace tools, a reasoning summary, client metadata) go upstream
as chat completions, a tool call the upstream makes comes back to Codex, which runs it and
sends its output, and Codex prints the answer."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from fake_upstream import DEFAULT_CONTENT, FakeUpstream, Reply, make_chunk
from gateway_process import Gateway

CODEX = Path(__file__).resolve().parents[1] / "js" / "node_modules" / ".bin" / "codex"
CALL_ID = "call_codex_goal"


def test_codex_exec_runs_a_tool_round_trip_through_the_bridge(
    gateway: Gateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not CODEX.exists():
        pytest.skip(f"{CODEX} is missing: run `npm ci --prefix tests/js`")
    name = "codex"
    key = gateway.wait_for_key(gateway.create_key(name))
    # The first answer calls one of Codex's own tools (one that reads its thread's goal, which
    # touches nothing); the second is the fake upstream's default text.
    call = {"index": 0, "id": CALL_ID, "type": "function"}
    upstream.enqueue(
        Reply.stream(
            [
                make_chunk(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {**call, "function": {"name": "get_goal", "arguments": "{}"}}
                        ],
                    }
                ),
                make_chunk({}, "tool_calls"),
            ]
        )
    )
    home = tmp_path / "codex-home"
    home.mkdir()
    provider = (
        f'{{name="typegpt-gateway", base_url="{gateway.url}/v1", env_key="TYPEGPT_GATEWAY_KEY",'
        ' wire_api="responses"}'
    )
    result = subprocess.run(
        [
            str(CODEX),
            "exec",
            "--skip-git-repo-check",
            "-c",
            "model_provider=typegpt-gateway",
            "-c",
            f"model_providers.typegpt-gateway={provider}",
            "-c",
            'web_search="disabled"',
            "-m",
            "gpt-5",
            "Say hi.",
        ],
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "CODEX_HOME": str(home),
            "TYPEGPT_GATEWAY_KEY": key,
        },
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert DEFAULT_CONTENT in result.stdout, result.stdout
    first, second = (json.loads(request.body) for request in upstream.requests[-2:])
    assert {request.path for request in upstream.requests[-2:]} == {"/v1/chat/completions"}
    assert first["stream"] is True and first["model"] == "gpt-5"
    assert first["messages"][0]["role"] == "system"  # Codex's developer instructions
    names = {tool["function"]["name"] for tool in first["tools"]}
    assert "get_goal" in names
    # Codex groups some tools in namespaces: they go upstream under joined names.
    assert any("__" in tool_name for tool_name in names), names
    # Codex ran the call and sent its output back, under the upstream's call id.
    assert second["messages"][-2]["tool_calls"][0]["id"] == CALL_ID
    assert second["messages"][-1]["role"] == "tool"
    assert second["messages"][-1]["tool_call_id"] == CALL_ID
    assert gateway.ledger_totals(name, requests=2)["errors"] == 0
