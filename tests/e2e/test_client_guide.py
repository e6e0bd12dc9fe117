"""The users' client guide, run as written: its axios, requests and curl examples against the gateway.

The snippets in tests/snippets/ are verbatim copies of the guide's code blocks (sections 1-3);
the only change made before running one is pointing it at this gateway and a real key.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fake_upstream import DEFAULT_CONTENT, FakeUpstream
from gateway_process import UPSTREAM_KEY, Gateway

TESTS = Path(__file__).resolve().parents[1]
SNIPPETS = TESTS / "snippets"
JS_DIR = TESTS / "js"
NODE_MODULES = JS_DIR / "node_modules"
GUIDE = Path(__file__).resolve().parents[3] / "shared" / "client-guide.md"

# Guide section number -> the snippet copied from its code block.
SECTIONS = {
    "1": "guide_axios.js",
    "2": "guide_requests.py",
    "3": "guide_curl.sh",
}
# The guide's placeholders; the port is the guide's too.
HOST_PLACEHOLDER = "YOUR_SERVER_IP:7000"
KEY_PLACEHOLDER = "YOUR_CLIENT_API_KEY"
# The guide's "Example error response" for an invalid key.
GUIDE_ERROR = {"message": "Invalid API key", "type": "authentication_error", "code": 403}
GUIDE_MESSAGES = [{"role": "user", "content": "Hello, how are you?"}]
INVALID_KEY = "sk-this-key-was-never-issued-0000000000000000"
RUN_TIMEOUT = 10


def guide_text() -> str:
    if not GUIDE.is_file():
        pytest.skip(f"client guide not found at {GUIDE}")
    return GUIDE.read_text(encoding="utf-8")


def guide_block(text: str, section: str) -> str:
    """The first fenced code block of `### <section>. ...`, without the fences."""
    match = re.search(
        rf"^### {re.escape(section)}\.[^\n]*\n.*?^```[^\n]*\n(.*?)^```",
        text,
        re.MULTILINE | re.DOTALL,
    )
    assert match is not None, f"no code block under section {section} of {GUIDE}"
    return match.group(1)


def client_env() -> dict[str, str]:
    """The environment for a client process: no proxy may sit between it and 127.0.0.1."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    }
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env


def render(name: str, gateway: Gateway, key: str, tmp_path: Path) -> Path:
    """The snippet with only the guide's host and key placeholders filled in."""
    text = (SNIPPETS / name).read_text(encoding="utf-8")
    assert text.count(HOST_PLACEHOLDER) == 1, f"{name}: expected one {HOST_PLACEHOLDER}"
    assert KEY_PLACEHOLDER in text, f"{name}: no {KEY_PLACEHOLDER}"
    text = text.replace(HOST_PLACEHOLDER, f"127.0.0.1:{gateway.http_port}")
    text = text.replace(KEY_PLACEHOLDER, key)
    assert "YOUR_" not in text
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        args,
        env=env or client_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    # The guide's examples catch their errors: they exit 0 either way.
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def assert_guide_request_reached_upstream(upstream: FakeUpstream) -> None:
    assert len(upstream.requests) == 1
    sent = upstream.last_request()
    assert sent.path == "/v1/chat/completions"
    assert sent.json() == {"model": "gpt-4o", "messages": GUIDE_MESSAGES}
    # The gateway speaks to TypeGPT with its own key, never the client's.
    assert sent.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def assert_guide_completion(completion: Any) -> None:
    assert isinstance(completion, dict), completion
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "gpt-4o"
    assert isinstance(completion["created"], int)
    [choice] = completion["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == DEFAULT_CONTENT
    assert completion["usage"]["total_tokens"] == (
        completion["usage"]["prompt_tokens"] + completion["usage"]["completion_tokens"]
    )


def assert_guide_error(error: Any) -> None:
    assert isinstance(error, dict) and set(error) == {"error"}, error
    assert GUIDE_ERROR.items() <= error["error"].items(), error


# --------------------------------------------------------------------------
# The snippets are the guide's code
# --------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "name"), sorted(SECTIONS.items()))
def test_snippet_is_the_guides_code_block(section: str, name: str) -> None:
    text = guide_text()
    assert (SNIPPETS / name).read_text(encoding="utf-8") == guide_block(text, section), (
        f"tests/snippets/{name} differs from section {section} of the client guide: "
        "copy the guide's code block again, byte for byte"
    )


def test_guide_error_example_is_what_these_tests_expect() -> None:
    text = guide_text()
    match = re.search(r"Example error response:\s*```json\n(.*?)^```", text, re.S | re.M)
    assert match is not None, "the guide has no example error response"
    assert json.loads(match.group(1)) == {"error": GUIDE_ERROR}


# --------------------------------------------------------------------------
# Python (requests)
# --------------------------------------------------------------------------


def printed_dict(stdout: str, prefix: str) -> Any:
    line = next((line for line in stdout.splitlines() if line.startswith(prefix)), None)
    assert line is not None, f"no line starting {prefix!r} in:\n{stdout}"
    # print() of a dict: a Python literal, not JSON.
    return ast.literal_eval(line.removeprefix(prefix).strip())


def test_requests_snippet_gets_a_completion(
    gateway: Gateway, api_key: str, upstream: FakeUpstream, tmp_path: Path
) -> None:
    script = render("guide_requests.py", gateway, api_key, tmp_path)
    result = run([sys.executable, str(script)])
    assert "Error:" not in result.stdout, result.stdout
    assert_guide_completion(printed_dict(result.stdout, "Response:"))
    assert_guide_request_reached_upstream(upstream)


def test_requests_snippet_with_an_invalid_key_prints_403(
    gateway: Gateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    script = render("guide_requests.py", gateway, INVALID_KEY, tmp_path)
    result = run([sys.executable, str(script)])
    assert "Response:" not in result.stdout, result.stdout
    # raise_for_status(): "Error: 403 Client Error: Forbidden for url: ..."
    assert re.search(r"^Error: 403 Client Error", result.stdout, re.M), result.stdout
    assert upstream.requests == []


# --------------------------------------------------------------------------
# cURL
# --------------------------------------------------------------------------


def needs_curl() -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")


def test_curl_snippet_prints_the_completion_json(
    gateway: Gateway, api_key: str, upstream: FakeUpstream, tmp_path: Path
) -> None:
    needs_curl()
    script = render("guide_curl.sh", gateway, api_key, tmp_path)
    result = run(["bash", str(script)])
    assert_guide_completion(json.loads(result.stdout))
    assert_guide_request_reached_upstream(upstream)


def test_curl_snippet_with_an_invalid_key_prints_the_guides_error(
    gateway: Gateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    needs_curl()
    script = render("guide_curl.sh", gateway, INVALID_KEY, tmp_path)
    result = run(["bash", str(script)])
    error = json.loads(result.stdout)
    assert_guide_error(error)
    assert error["error"]["param"] is None
    assert upstream.requests == []


# --------------------------------------------------------------------------
# Node (axios)
# --------------------------------------------------------------------------


def node_env() -> dict[str, str]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (NODE_MODULES / "axios").is_dir():
        pytest.skip(
            f"{NODE_MODULES} has no axios: run `npm ci --prefix tests/js` to test the axios example"
        )
    env = client_env()
    # The snippet's require('axios') resolves from the test packages wherever the file is.
    env["NODE_PATH"] = str(NODE_MODULES)
    return env


# Runs the script given as its argument after making console.log print nested objects in full
# (its default stops at depth 2, which hides choices[0].message).
FULL_DEPTH = "require('util').inspect.defaultOptions.depth = null; require(process.argv[1]);"


def test_axios_snippet_gets_a_completion(
    gateway: Gateway, api_key: str, upstream: FakeUpstream, tmp_path: Path
) -> None:
    env = node_env()
    script = render("guide_axios.js", gateway, api_key, tmp_path)
    result = run(["node", "-e", FULL_DEPTH, str(script)], env)
    assert "Error" not in result.stderr, result.stderr
    out = result.stdout
    assert out.startswith("Response: {"), out
    # util.inspect output (JavaScript literal syntax), so check the fields as printed.
    assert "object: 'chat.completion'" in out, out
    assert "model: 'gpt-4o'" in out, out
    assert "role: 'assistant'" in out, out
    assert f"content: '{DEFAULT_CONTENT}'" in out, out
    assert "finish_reason: 'stop'" in out, out
    assert_guide_request_reached_upstream(upstream)


def test_axios_snippet_with_an_invalid_key_prints_the_guides_error(
    gateway: Gateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    env = node_env()
    script = render("guide_axios.js", gateway, INVALID_KEY, tmp_path)
    result = run(["node", str(script)], env)
    assert result.stdout == "", result.stdout
    # console.error('API Error:', error.response.data) with the guide's example body.
    expected = re.compile(
        r"^API Error: \{\s*error: \{\s*message: 'Invalid API key',\s*"
        r"type: 'authentication_error',\s*param: null,\s*code: 403\s*\}\s*\}\s*$"
    )
    assert expected.match(result.stderr), result.stderr
    assert upstream.requests == []
