"""Which upstreams take the Responses API natively (`responses:` in gateway.yaml), and how a
request's mode follows from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from typegpt_gateway.settings import Settings
from typegpt_gateway.upstream.upstreams_file import (
    ConfigError,
    load_config,
    read_config,
    responses_mode,
    upstream_specs,
)

CONFIG = """
upstreams:
  - {name: openai, base_url: 'http://127.0.0.1:9/v1', api_key: k, responses: native}
  - {name: typegpt, base_url: 'http://127.0.0.1:9/v1', api_key: k, models: [gpt-4o, o3]}
  - {name: native-o3, base_url: 'http://127.0.0.1:9/v1', api_key: k, models: [o3], responses: native}
"""


def test_the_environments_one_upstream_is_bridged() -> None:
    specs = upstream_specs(Settings(TYPEGPT_API_KEY="sk-env"), None, {})
    assert [spec.responses for spec in specs] == ["bridged"]
    assert responses_mode(specs, "gpt-4o") == "bridged"


def test_native_only_when_every_upstream_serving_the_model_is(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    specs = upstream_specs(settings := Settings(config=path), read_config(settings), {})
    assert [spec.responses for spec in specs] == ["native", "bridged", "native"]
    # Served by openai alone: native. Failover could land gpt-4o or o3 on typegpt: bridged.
    assert responses_mode(specs, "gpt-5") == "native"
    assert responses_mode(specs, "gpt-4o") == "bridged"
    assert responses_mode(specs, "o3") == "bridged"


def test_an_unknown_mode_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("upstreams:\n  - {name: a, base_url: 'http://x', responses: sometimes}\n")
    with pytest.raises(ConfigError, match="responses"):
        load_config(path)
