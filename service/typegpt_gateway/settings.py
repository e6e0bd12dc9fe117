"""The one typed settings object, read from the environment (and CLI flags in `serve`)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODELS = (
    "gpt-4o",
    "o3-mini",
    "gpt-4.1",
    "o3",
    "gpt-5-chat",
    "gpt-5-model-router",
    "gpt-5",
    "gpt-5-mini",
)
MiB = 1024 * 1024
# The default worker count stops here: past it, one Envoy and the shared key store and ledger
# are the limit sooner than Python is, and each worker holds its own memory and connections.
MAX_DEFAULT_WORKERS = 8


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def default_workers(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPU cores this process may use, up to MAX_DEFAULT_WORKERS: its affinity (which
    `--cpuset-cpus` narrows), and under a CPU quota (a container's `--cpus`, a Kubernetes CPU
    limit: cgroup v2's cpu.max) no more than the quota, rounded up."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            cores = min(cores, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 here, or no quota
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


def default_db_path() -> Path:
    return Path.home() / ".local" / "share" / "typegpt-gateway" / "keys.db"


_ORIGIN = re.compile(r"^https?://[A-Za-z0-9\-\.\[\]:]+$")


def parse_origins(value: str) -> tuple[str, ...]:
    """Comma-separated origins such as `https://app.example.com,http://localhost:3000`."""
    origins = tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
    for origin in origins:
        if not _ORIGIN.match(origin):
            raise ValueError(
                f"not an origin: {origin!r} (expected scheme://host[:port], e.g. "
                "https://app.example.com)"
            )
    return origins


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    # The gateway's own upstream credentials: TypeGPT's names, not GATEWAY_*.
    typegpt_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("TYPEGPT_API_KEY")
    )
    typegpt_base_url: str = Field(
        default="https://api.typegpt.net/v1", validation_alias=AliasChoices("TYPEGPT_BASE_URL")
    )

    db: Path = Field(default_factory=default_db_path)
    # Shared state for replicas: PostgreSQL for keys and usage instead of the SQLite file,
    # Redis for rate limits instead of in-process counters. They may hold passwords.
    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "GATEWAY_DATABASE_URL")
    )
    redis_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "GATEWAY_REDIS_URL")
    )
    # When Redis cannot be reached: "open" admits requests unlimited (availability first),
    # "closed" refuses them with 503 (limits first).
    rate_limit_failure_mode: Literal["open", "closed"] = "open"
    redis_timeout: float = 1.0
    # REDIS_URL names one node of a Redis Cluster: the client follows the cluster's slots.
    redis_cluster: bool = False
    # How often the usage ledger is written to the key store (also on shutdown).
    usage_flush_interval: float = 2.0
    models: Annotated[tuple[str, ...], NoDecode] = DEFAULT_MODELS
    models_owned_by: str = "typegpt"
    # The `created` of every catalog model (Unix seconds); fixed so that it is stable.
    models_created: int = 1_715_558_400

    host: str = "0.0.0.0"  # noqa: S104 - a gateway is meant to be reached from other hosts
    http_port: int = 7000
    # The direct gRPC port skips Envoy's edge limits and serves KeyService and reflection in
    # plaintext: loopback unless an operator opens it (Envoy's port 7000 carries the same).
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    # Backend processes behind the one Envoy (serve only; --no-envoy always runs one). Each
    # client key is pinned to one of them, so per-key limits stay exact without Redis.
    workers: int = Field(default_factory=default_workers, ge=1)
    # Set by `serve` for each of its workers (GATEWAY_WORKER_INDEX): every log line of that
    # worker says which it is (`"worker": N`), as its metrics do.
    worker_index: int | None = Field(default=None, ge=0)
    # 0 lets the OS pick, so that several gateways can share a host.
    envoy_admin_port: int = 0
    # Envoy worker threads (0: one per core). One worker carries several times what one
    # Python backend can answer; each extra one costs CPU and memory and opens its own
    # connection to the backend.
    envoy_concurrency: int = 1
    envoy_log_level: str = "warning"

    max_body_bytes: int = 32 * MiB
    # The largest whole (not streamed) answer the gateway holds to read its usage: large
    # embedding batches run to tens of MiB; an answer past this is a 502, not a process
    # grown without bound. Streams are not held whole, and have no such cap.
    max_answer_bytes: int = Field(default=128 * MiB, ge=MiB)
    # Open client connections Envoy accepts before refusing new ones.
    max_connections: int = 50_000
    # Slow clients: seconds to send all request headers, then the whole request. Neither
    # limits a response, so streams are never cut by them.
    request_headers_timeout: float = 15.0
    request_body_timeout: float = 300.0
    # Browser origins allowed to call the API (CORS); none by default, so CORS is off.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # Seconds without a byte on a stream before an SSE keepalive comment is sent.
    sse_keepalive_interval: float = 15.0
    # Seconds a stream's events may wait to go out together (Traefik's and Caddy's
    # flush_interval). 0, the default: each upstream read goes out as it comes.
    stream_flush_interval: float = Field(default=0.0, ge=0, le=1.0)
    # A YAML file listing several upstreams (see config.py); without it, the one upstream
    # named by TYPEGPT_BASE_URL and TYPEGPT_API_KEY.
    config: Path | None = None
    # Upstream timeouts, in seconds. A slow reasoning model can think for minutes before the
    # first byte of a non-streamed answer; a stream then flows, with shorter gaps.
    upstream_connect_timeout: float = Field(default=10.0, gt=0)
    upstream_first_byte_timeout: float = Field(default=600.0, gt=0)
    upstream_idle_timeout: float = Field(default=300.0, gt=0)
    upstream_total_timeout: float = Field(default=1800.0, gt=0)
    # Retries happen only before anything reached the client; no retry starts, and no
    # backoff waits, past the retry deadline (seconds since the request arrived).
    upstream_max_attempts: int = Field(default=3, ge=1)
    upstream_retry_deadline: float = Field(default=20.0, ge=0)
    upstream_retry_backoff: float = Field(default=0.5, ge=0)
    upstream_retry_backoff_max: float = Field(default=8.0, ge=0)
    # Failed requests (from at least two client keys, outnumbering successes) within the
    # health window that rest an upstream (0: never; routing.py has the rule); the first
    # rest lasts upstream_cooldown seconds and doubles with each further one.
    upstream_cooldown_after: int = Field(default=3, ge=0)
    upstream_cooldown: float = Field(default=1.0, gt=0)
    upstream_cooldown_max: float = Field(default=60.0, gt=0)
    upstream_health_window: float = Field(default=10.0, gt=0)
    # After SIGTERM: how long in-flight requests and streams may take to finish.
    drain_timeout: float = Field(default=30.0, ge=0)
    # How often the key store is checked for keys created or revoked by another process.
    key_refresh_interval: float = 0.5

    # Operations (admin API, metrics, logs, TLS).
    # The admin API's bearer key; unset or empty turns the admin API off (never open).
    admin_key: SecretStr | None = None
    # Prometheus metrics on their own port, never the public HTTP port; 0 turns them off.
    # Loopback by default: the metrics name every key and its traffic.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    # Request bodies (prompts) in the request log: for debugging only.
    log_bodies: bool = False
    # HTTPS on the HTTP port: PEM certificate chain and private key, both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Streams one connection to the gRPC port may have open at once (HTTP/2's
    # SETTINGS_MAX_CONCURRENT_STREAMS): a client multiplexing more waits for a free one.
    grpc_max_concurrent_streams: int = Field(default=100, ge=1)
    # TLS on the direct gRPC port too (Envoy still reaches the backend over loopback).
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        return parse_origins(value) if isinstance(value, str) else value

    @field_validator("database_url", "redis_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("typegpt_base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        for cert, key in (("tls_cert", "tls_key"), ("grpc_tls_cert", "grpc_tls_key")):
            if (getattr(self, cert) is None) != (getattr(self, key) is None):
                raise ValueError(f"{cert} and {key} go together: set both or neither")
        return self

    @property
    def admin_token(self) -> str | None:
        # Not cached, like upstream_key: no plain-text copy in the object's __dict__.
        if self.admin_key is None:
            return None
        return self.admin_key.get_secret_value().strip() or None

    @property
    def upstream_key(self) -> str | None:
        # Not cached: a cached copy would sit in plain text in the object's __dict__.
        if self.typegpt_api_key is None:
            return None
        return self.typegpt_api_key.get_secret_value().strip() or None
