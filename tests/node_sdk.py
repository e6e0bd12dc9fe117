"""Runs one of tests/js's checks with the official Node SDK against a gateway, as a Node
client would: no proxy, no OPENAI_* settings of this machine. Skips where Node or the SDK is
missing (`.ci/run` installs both)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

JS_DIR = Path(__file__).resolve().parent / "js"


def run_check(script: str, base_url: str, key: str, **env: str) -> Any:
    """`node js/<script>` with GATEWAY_BASE_URL and GATEWAY_API_KEY (and `env`) set; the JSON
    summary on its last line, once it exits 0."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (JS_DIR / "node_modules" / "openai").is_dir():
        pytest.skip(f"{JS_DIR}/node_modules has no openai: run `npm ci --prefix tests/js`")
    environment = {
        name: value
        for name, value in os.environ.items()
        if name.lower() not in {"http_proxy", "https_proxy", "all_proxy"}
        and not name.startswith("OPENAI_")
    }
    environment.update(
        GATEWAY_BASE_URL=base_url,
        GATEWAY_API_KEY=key,
        NO_PROXY="127.0.0.1,localhost",
        **env,
    )
    result = subprocess.run(
        ["node", str(JS_DIR / script)],
        env=environment,
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])
