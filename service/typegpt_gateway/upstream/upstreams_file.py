"""The upstreams the gateway may call: from a YAML file (`--config`, `GATEWAY_CONFIG`), or the
single upstream of TYPEGPT_BASE_URL and TYPEGPT_API_KEY.

    upstreams:
      - name: typegpt-a
        base_url: https://api.typegpt.net/v1
        api_key_env: TYPEGPT_KEY_A      # or api_key: sk-...
      - name: fallback
        base_url: https://api.example.com/v1
        api_key_env: FALLBACK_KEY
        models: [gpt-4o, gpt-5]         # default: every catalog model
        priority: 1                     # lower is tried first (default 0)
        weight: 1                       # share among upstreams of one priority
        model_map: {gpt-5: gpt-5-2025-08-07}
        responses: native               # has POST /v1/responses (default: bridged)
        prices:                         # what this upstream charges, where it differs
          gpt-5: {input: 1.5, cached_input: 0.15, output: 12}
    prices:                             # USD per 1M tokens; over the shipped defaults
      gpt-4o: {input: 2.5, cached_input: 1.25, output: 10}
      gpt-5-model-router: null          # no price: cost unknown
    model_routes:                       # the routes a model is offered on (default: all)
      text-embedding-3-small: [embeddings]

Prices are keyed by the gateway's model names (the catalog's), not an upstream's `model_map`
names; see prices.py for how they combine.

`responses` says how `POST /v1/responses` reaches an upstream: `native` forwards it as is (the
upstream has the Responses API), `bridged` (the default, and TypeGPT's case: it has only chat
completions) turns it into a chat completion and the answer back into a Response.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from ..settings import Settings
from .prices import Price, PriceList, overlay, shipped_prices


class ConfigError(Exception):
    """A config file that cannot be used; the message says why and where."""


# How an upstream serves the Responses API (see the module's docstring).
ResponsesMode = Literal["native", "bridged"]


class UpstreamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    base_url: str = Field(pattern=r"^https?://")
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(default=None, min_length=1)
    models: tuple[str, ...] | None = None
    priority: int = 0
    weight: float = Field(default=1.0, gt=0)
    model_map: dict[str, str] = Field(default_factory=dict)
    prices: dict[str, Price | None] = Field(default_factory=dict)
    responses: ResponsesMode = "bridged"

    @model_validator(mode="after")
    def _one_key_source(self) -> UpstreamConfig:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("give api_key or api_key_env, not both")
        return self


class GatewayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    upstreams: tuple[UpstreamConfig, ...] = Field(min_length=1)
    prices: dict[str, Price | None] = Field(default_factory=dict)
    # Model -> the names of the routes it is offered on (pipeline/routes.py checks the names).
    model_routes: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        names = [upstream.name for upstream in self.upstreams]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"upstream names must be unique: {', '.join(duplicates)}")
        return self


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """One upstream, ready to use: its key resolved (None when missing)."""

    name: str
    base_url: str
    # Kept out of repr: a spec printed in a log or a traceback must not carry the key.
    api_key: str | None = field(repr=False)
    # The setting an operator must set when the key is missing.
    key_setting: str
    models: frozenset[str] | None
    priority: int
    weight: float
    model_map: Mapping[str, str]
    responses: ResponsesMode = "bridged"


def load_config(path: Path) -> GatewayConfig:
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        # Not str(exc), nor chained: it quotes the offending line, which may hold an api_key.
        raise ConfigError(f"{path} is not valid YAML: {_where(exc)}") from None
    try:
        return GatewayConfig.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'file'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


def _where(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or type(error).__name__
    if mark is None:
        return problem
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


def _key(value: str | None) -> str | None:
    return (value or "").strip() or None


def read_config(settings: Settings) -> GatewayConfig | None:
    """The config file (GATEWAY_CONFIG) read and checked, or None without one; read once at
    start-up, and handed to what it configures."""
    return None if settings.config is None else load_config(settings.config)


def upstream_specs(
    settings: Settings, config: GatewayConfig | None, environ: Mapping[str, str] = os.environ
) -> tuple[UpstreamSpec, ...]:
    if config is None:
        return (
            UpstreamSpec(
                name="typegpt",
                base_url=settings.typegpt_base_url,
                api_key=settings.upstream_key,
                key_setting="TYPEGPT_API_KEY",
                models=None,
                priority=0,
                weight=1.0,
                model_map={},
            ),
        )
    specs = []
    for upstream in config.upstreams:
        if upstream.api_key_env is not None:
            key, setting = _key(environ.get(upstream.api_key_env)), upstream.api_key_env
        else:
            secret = upstream.api_key.get_secret_value() if upstream.api_key else None
            key, setting = _key(secret), f"api_key of upstream {upstream.name!r}"
        specs.append(
            UpstreamSpec(
                name=upstream.name,
                base_url=upstream.base_url.rstrip("/"),
                api_key=key,
                key_setting=setting,
                models=frozenset(upstream.models) if upstream.models is not None else None,
                priority=upstream.priority,
                weight=upstream.weight,
                model_map=dict(upstream.model_map),
                responses=upstream.responses,
            )
        )
    return tuple(specs)


def responses_mode(specs: tuple[UpstreamSpec, ...], model: str) -> ResponsesMode:
    """How a Responses request for `model` goes: natively only when every upstream that may
    serve it has the Responses API, so that failover never lands a native request on an
    upstream without it; otherwise bridged, which every OpenAI-compatible upstream can take."""
    serving = [spec for spec in specs if spec.models is None or model in spec.models]
    if serving and all(spec.responses == "native" for spec in serving):
        return "native"
    return "bridged"


def price_list(config: GatewayConfig | None) -> PriceList:
    """The shipped prices under the config file's, and each upstream's own on top."""
    shipped = shipped_prices()
    if config is None:
        return PriceList(shipped)
    base = overlay(shipped, config.prices)
    return PriceList(
        base, {upstream.name: overlay(base, upstream.prices) for upstream in config.upstreams}
    )


def model_routes(config: GatewayConfig | None) -> dict[str, frozenset[str]]:
    """The routes each model the config file names is limited to; a model it does not name
    (or every model, without a file) is offered on every route."""
    if config is None:
        return {}
    return {model: frozenset(routes) for model, routes in config.model_routes.items()}
